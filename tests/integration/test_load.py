"""Load: 8 concurrent clients × 200 segment requests against one ``offcut serve --audit``.

Six clients are bare DEALER sockets (they pipeline up to three requests, send a cancel behind
one, disconnect with work in flight, and check every reply by id); two are the real plug-in client,
one per transport, cancelling from a timer thread as an editor's Cancel button does. Images are
small (32–256 px a side, six pixel formats) because the model's input is 320² whatever the layer's
size: the cost per request is one inference either way. About 300 of the 1 600 requests run the
model (the rest are ``busy`` or cancelled while queued), so the run takes about a minute on an
idle 2-core machine and up to ~3.5 minutes on a heavily shared one.

Checked: every request is answered exactly once (``result``, ``busy`` or ``cancelled``), none lost
or duplicated, none answered that was not asked; the queue never holds more than
``queue_depth`` jobs and the limit is really hit (``busy`` is seen); memory stays flat; audit mode
sees no file write or connection; the sidecar is idle and healthy afterwards.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from offcut.client import BUSY, CANCELLED, Client, OffcutClientError
from offcut.engine import formats
from tests.conftest import RawClient, Sidecar
from tests.integration.test_fuzz import vm_rss

N_CLIENTS = 8
N_REAL = 2  # of which use offcut.client.Client
PER_CLIENT = 200
QUEUE_DEPTH = 4
SIDES = (32, 48, 64, 96, 128, 192, 256)
LOAD_FORMATS = ("RGBA8", "BGRA8", "RGB8", "GRAYA8", "RGBA16", "RGBAF32")
P_DISCONNECT = 0.04
P_CANCEL = 0.25
P_PIPELINE = 0.5
RSS_BOUND = 32 * 2**20

pytestmark = pytest.mark.slow


@dataclass
class Tally:
    """What one client saw."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    abandoned: int = 0
    cancels_sent: int = 0
    problems: list[str] = field(default_factory=list)


def pixels(rng: np.random.Generator, w: int, h: int, fmt: str) -> bytes:
    pf = formats.FORMATS[fmt]
    if pf.depth == "float":
        return rng.random(w * h * pf.n_channels, dtype=np.float32).astype(pf.dtype).tobytes()
    return rng.integers(0, 256, w * h * pf.bytes_per_pixel, dtype=np.uint8).tobytes()


def pick_image(rng: random.Random, nrng: np.random.Generator) -> tuple[int, int, str, bytes]:
    w, h, fmt = rng.choice(SIDES), rng.choice(SIDES), rng.choice(LOAD_FORMATS)
    return w, h, fmt, pixels(nrng, w, h, fmt)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Sidecar]:
    runtime = tmp_path_factory.mktemp("load-runtime")
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0", "--queue-depth", str(QUEUE_DEPTH)])
    yield s
    s.stop()
    assert not [ln for ln in s.stderr_lines if "audit_violation" in ln]


def raw_worker(port: int, token: str, index: int, tally: Tally, deadline: float) -> None:
    """A bare DEALER: sends, sometimes cancels or disconnects, and checks every reply by id."""
    rng = random.Random(1000 + index)
    nrng = np.random.default_rng(1000 + index)
    c = RawClient(port, token)
    finals: Counter[str] = Counter()
    cancel_replies: Counter[str] = Counter()
    expected: set[str] = set()
    expected_cancels: set[str] = set()

    def handle(header: dict[str, Any]) -> None:
        rid = header["id"]
        if header["kind"] == "progress":
            return
        if rid in expected_cancels:
            cancel_replies[rid] += 1
            if header["kind"] != "result":
                tally.problems.append(f"cancel {rid} answered {header}")
            return
        if rid not in expected:
            tally.problems.append(f"reply for an id never sent: {rid!r}")
            return
        finals[rid] += 1
        code = header.get("code", header["kind"])
        tally.outcomes[code] += 1
        if code not in ("result", BUSY, CANCELLED):
            tally.problems.append(f"{rid}: unexpected {header}")

    def read_until(done: Any) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"client {index}: no answer before the deadline")
            header, _ = c.recv(max(0.1, deadline - time.monotonic()))
            handle(header)

    try:
        i = 0
        while i < PER_CLIENT:
            # One request at a time, or two or three pipelined on the same connection, whose
            # replies may then come back in any order.
            burst = min(rng.choice((2, 3)) if rng.random() < P_PIPELINE else 1, PER_CLIENT - i)
            rids = [f"c{index}-{i + k}" for k in range(burst)]
            i += burst
            for rid in rids:
                w, h, fmt, px = pick_image(rng, nrng)
                expected.add(rid)
                c.send({"op": "segment", "id": rid,
                        "image": {"width": w, "height": h, "format": fmt},
                        "options": {"refine": rng.random() < 0.2}}, px)  # fmt: skip
                tally.sent += 1
            roll = rng.random()
            if roll < P_DISCONNECT:  # gone with requests in flight: their replies go nowhere
                c.close()
                expected.difference_update(rids)
                tally.abandoned += burst
                c = RawClient(port, token)
                continue
            cid = None
            if roll < P_DISCONNECT + P_CANCEL:
                time.sleep(rng.uniform(0.0, 0.15))
                cid = f"{rids[-1]}-cancel"
                expected_cancels.add(cid)
                c.send({"op": "cancel", "id": cid, "target": rids[-1]})
                tally.cancels_sent += 1
            read_until(
                lambda rids=rids, cid=cid: (
                    all(finals[r] for r in rids) and (cid is None or cancel_replies[cid])
                )
            )
            if tally.outcomes[BUSY] and rng.random() < 0.9:
                time.sleep(rng.uniform(0.005, 0.04))  # a polite client backs off a little
        # Late duplicates would show up now.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            if c.sock.poll(100):
                handle(c.recv(1)[0])
    except TimeoutError as exc:
        tally.problems.append(str(exc))
    finally:
        c.close()
    dupes = [rid for rid, n in finals.items() if n != 1]
    lost = sorted(expected - set(finals))
    if dupes:
        tally.problems.append(f"duplicated replies: {dupes[:5]}")
    if lost:
        tally.problems.append(f"lost requests: {lost[:5]}")
    if any(n != 1 for n in cancel_replies.values()) or set(cancel_replies) != expected_cancels:
        tally.problems.append("cancel replies lost or duplicated")


def client_worker(runtime: Path, transport: str, index: int, tally: Tally, deadline: float) -> None:
    """The real plug-in client: one call at a time, Cancel from another thread, reconnects."""
    rng = random.Random(2000 + index)
    nrng = np.random.default_rng(2000 + index)

    def new_client() -> Client:
        return Client(app="load", start=False, runtime_dir=runtime, transport=transport)

    c = new_client()
    try:
        for _ in range(PER_CLIENT):
            if time.monotonic() > deadline:
                tally.problems.append(f"client {index}: deadline")
                return
            w, h, fmt, px = pick_image(rng, nrng)
            roll = rng.random()
            timer = None
            if roll < P_CANCEL:
                timer = threading.Timer(rng.uniform(0.0, 0.15), c.cancel)
                timer.start()
            tally.sent += 1
            try:
                r = c.segment(px, w, h, fmt)
                assert len(r.mask) == w * h
                tally.outcomes["result"] += 1
            except OffcutClientError as exc:
                tally.outcomes[exc.code] += 1
                if exc.code not in (BUSY, CANCELLED):
                    tally.problems.append(f"client {index}: {exc.code}: {exc.message}")
                if exc.code == BUSY:
                    time.sleep(rng.uniform(0.005, 0.04))
            finally:
                if timer is not None:
                    timer.cancel()
                    timer.join()
            if roll > 1 - P_DISCONNECT:  # editor closed: drop the connection, open a new one
                c.close()
                c = new_client()
    finally:
        c.close()


def monitor(port: int, token: str, stop: threading.Event, seen: list[dict[str, Any]]) -> None:
    c = RawClient(port, token)
    try:
        while not stop.is_set():
            st, _ = c.call({"op": "status"}, timeout=30)
            seen.append(st)
            time.sleep(0.1)
    finally:
        c.close()


def warm_up(port: int, token: str) -> None:
    """Every size and every format once (the largest also refined), so that allocator arenas and
    caches have grown before the first measurement."""
    rng = np.random.default_rng(0)
    c = RawClient(port, token)
    shapes = [(side, "RGBA8") for side in SIDES] + [(256, fmt) for fmt in LOAD_FORMATS]
    try:
        for side, fmt in shapes:
            for refine in (False, True) if side == 256 else (False,):
                image = {"width": side, "height": side, "format": fmt}
                h, _ = c.call({"op": "segment", "image": image, "options": {"refine": refine}},
                              pixels(rng, side, side, fmt), timeout=60)  # fmt: skip
                assert h["kind"] == "result", h
    finally:
        c.close()


def test_eight_clients_two_hundred_requests_each(loaded: Sidecar) -> None:
    port, token = loaded.port, loaded.token
    warm_up(port, token)
    pid = loaded.proc.pid
    rss_before = vm_rss(pid)
    deadline = time.monotonic() + 420
    tallies = [Tally() for _ in range(N_CLIENTS)]
    threads = []
    for i in range(N_CLIENTS):
        if i < N_REAL:
            transport = ("builtin", "pyzmq")[i]
            args: tuple[Any, ...] = (loaded.runtime_dir, transport, i, tallies[i], deadline)
            threads.append(threading.Thread(target=client_worker, args=args))
        else:
            threads.append(
                threading.Thread(target=raw_worker, args=(port, token, i, tallies[i], deadline))
            )
    stop = threading.Event()
    statuses: list[dict[str, Any]] = []
    mon = threading.Thread(target=monitor, args=(port, token, stop, statuses))
    started = time.monotonic()
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(450)
    elapsed = time.monotonic() - started
    stop.set()
    mon.join(30)

    # The abandoned requests still run; wait for the sidecar to go idle.
    c = RawClient(port, token)
    try:
        idle_by = time.monotonic() + 60
        while True:
            st, _ = c.call({"op": "status"})
            if (st["queue"] == 0 and not st["running"]) or time.monotonic() > idle_by:
                break
            time.sleep(0.2)
        assert st["queue"] == 0 and not st["running"], st
        assert st["audit_violations"] == 0
        rss_after = vm_rss(pid)
        h, _ = c.call({"op": "hello"})
        assert h["kind"] == "result"
    finally:
        c.close()

    total = Counter[str]()
    for t in tallies:
        total.update(t.outcomes)
    problems = [p for t in tallies for p in t.problems]
    sent = sum(t.sent for t in tallies)
    abandoned = sum(t.abandoned for t in tallies)
    growth = rss_after - rss_before
    took = [json.loads(ln)["seconds"] for ln in loaded.stderr_lines if '"event": "segment"' in ln]
    print(
        f"\nload: {sent} requests in {elapsed:.1f} s: {dict(total)}, {abandoned} abandoned by "
        f"disconnect, {sum(t.cancels_sent for t in tallies)} raw cancels; max queue "
        f"{max(s['queue'] for s in statuses)}; RSS {rss_before / 2**20:.1f} -> "
        f"{rss_after / 2**20:.1f} MiB ({growth / 2**20:+.2f} MiB); mean segment "
        f"{sum(took) / max(len(took), 1):.3f} s over {len(took)}"
    )
    assert not problems, problems[:10]
    assert all(not t.is_alive() for t in threads)
    assert sent == N_CLIENTS * PER_CLIENT
    assert sum(total.values()) + abandoned == sent  # every request answered exactly once
    assert set(total) <= {"result", BUSY, CANCELLED}
    assert total["result"] > 0 and total[BUSY] > 0 and total[CANCELLED] > 0, total
    assert statuses and max(s["queue"] for s in statuses) <= QUEUE_DEPTH
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert loaded.alive()
