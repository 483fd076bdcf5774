"""Fuzzing a real ``offcut serve --audit`` over real ZeroMQ: it survives anything a client sends.

The unit fuzzers (tests/unit/test_fuzz_*.py) check the decoder functions in-process; here the same
kinds of input travel through libzmq, the ROUTER loop, the queue and the worker of a live sidecar
running in audit mode. The rules:

* every request gets exactly one final reply: ``result`` or ``error`` with a documented code;
* the sidecar never dies and never writes a file or opens a connection (audit mode; the
  ``sidecar`` fixture also fails on any ``audit_violation`` line at teardown);
* its memory stays flat over 10 000 bad requests (the numbers are in docs/security.md).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offcut.client.wire import MASK_FORMATS, PLAIN_USERNAME
from offcut.engine import formats
from offcut.errors import ERROR_CODES
from tests.conftest import RawClient, Sidecar, sample_rgba

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
    st.binary(max_size=30),
)
VALUES = st.recursive(
    SCALARS,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(ANY_TEXT, c, max_size=3)),
    max_leaves=8,
)
# Every op but a real shutdown, which would (correctly) stop the sidecar under test.
SAFE_OPS = st.one_of(st.sampled_from(["hello", "models", "status", "cancel", "segment"]), ANY_TEXT)


@pytest.fixture(scope="module")
def client(sidecar: Sidecar) -> Iterator[RawClient]:
    c = RawClient(sidecar.port, sidecar.token)
    yield c
    c.close()


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes, from /proc (what the kernel would OOM-kill on)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def final_reply(c: RawClient, timeout: float = 60.0) -> dict[str, Any]:
    """The one final reply to the request just sent; checks its shape on the way."""
    header, bufs, progress = c.final(timeout)
    for p in progress:
        assert p["stage"] in ("queued", "decode", "inference", "postprocess", "refine",
                              "decontaminate", "encode"), p  # fmt: skip
        assert 0.0 <= p["progress"] <= 1.0
    assert header["v"] == 1 and header["kind"] in ("result", "error"), header
    if header["kind"] == "error":
        assert header["code"] in ERROR_CODES, header
        assert isinstance(header["message"], str) and len(header["message"]) > 20
    header["_buffers"] = bufs
    return header


def assert_healthy(c: RawClient, sidecar: Sidecar) -> dict[str, Any]:
    assert sidecar.alive(), "".join(sidecar.stderr_lines[-20:])
    status, _ = c.call({"op": "status"}, timeout=30)
    assert status["kind"] == "result" and status["audit_violations"] == 0, status
    assert not [ln for ln in sidecar.stderr_lines if "audit_violation" in ln]
    assert not [ln for ln in sidecar.stderr_lines if "Traceback" in ln], "an internal error"
    return status


# --------------------------------------------------------------------------------- headers


@given(st.dictionaries(ANY_TEXT, VALUES, max_size=6), SAFE_OPS, st.integers(0, 3), st.booleans())
@settings(SETTINGS, max_examples=250)
def test_fuzzed_headers_get_one_protocol_reply(
    client: RawClient,
    sidecar: Sidecar,
    extra: dict[str, Any],
    op: str,
    n_buffers: int,
    good_token: bool,
) -> None:
    header = {**extra, "v": extra.get("v", 1), "op": op}
    header["id"] = header.get("id") if "id" in extra else "fz"
    if good_token:
        header["token"] = sidecar.token
    if header.get("op") == "shutdown":
        header["op"] = "status"
    frame = msgpack.packb(header, use_bin_type=True)
    client.sock.send_multipart([frame, *[os.urandom(64) for _ in range(n_buffers)]])
    reply = final_reply(client)
    rid = header.get("id")
    if isinstance(rid, str) and 1 <= len(rid) <= 128:
        assert reply["id"] == rid  # the request's own id comes back
    if header.get("token") != sidecar.token:
        assert reply["kind"] == "error" and reply["code"] == "unauthorized", reply
        assert set(reply) == {"v", "id", "kind", "code", "message", "key", "params", "_buffers"}
        assert (reply["key"], reply["params"]) == ("token_mismatch", {})
        assert reply["_buffers"] == []


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
@settings(SETTINGS, max_examples=150)
def test_random_frames(client: RawClient, sidecar: Sidecar, frames: list[bytes]) -> None:
    """Raw bytes in any number of frames: never valid msgpack with our token, so an error."""
    client.sock.send_multipart(frames)
    reply = final_reply(client)
    assert reply["kind"] == "error" and reply["code"] in ("bad_request", "unauthorized"), reply


def test_many_frames_and_empty_frames(client: RawClient, sidecar: Sidecar) -> None:
    good = {"v": 1, "op": "segment", "token": sidecar.token,
            "image": {"width": 4, "height": 4, "format": "GRAY8"}}  # fmt: skip
    cases: list[list[bytes]] = [
        [b""],
        [b"", b""],
        [msgpack.packb({**good, "id": "a"})],
        [msgpack.packb({**good, "id": "b"}), *[bytes(16)] * 200],
        [msgpack.packb({**good, "id": "c"}), b""],
        [msgpack.packb({**good, "id": "d"}), bytes(16), b""],
    ]
    for frames in cases:
        client.sock.send_multipart(frames)
        reply = final_reply(client)
        assert reply["kind"] == "error" and reply["code"] == "bad_request", reply
    assert_healthy(client, sidecar)


# --------------------------------------------------------------------------------- segment path

FLOAT_SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 1e30, -5.0, 0.5, 1.0], np.float32)


@st.composite
def segment_requests(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """Valid requests with hostile pixels: NaN, inf, extremes, thin and odd shapes, any ROI."""
    fmt = formats.FORMATS[draw(st.sampled_from(sorted(formats.FORMATS)))]
    w, h = draw(
        st.one_of(
            st.tuples(st.integers(1, 48), st.integers(1, 48)),
            st.sampled_from([(1, 1), (1, 2000), (3000, 1), (2, 700), (255, 3)]),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = w * h * fmt.n_channels
    if fmt.depth == "float":
        with np.errstate(over="ignore"):
            pixels = rng.choice(FLOAT_SPECIALS, size=n).astype(fmt.dtype).tobytes()
    else:
        pixels = rng.integers(0, 256, size=n * np.dtype(fmt.dtype).itemsize, dtype=np.uint8)
        pixels = pixels.tobytes()
    header: dict[str, Any] = {
        "op": "segment",
        "image": {"width": w, "height": h, "format": fmt.name,
                  "colorspace": draw(st.sampled_from(["srgb", "linear"]))},
        "options": {
            "refine": draw(st.booleans()),
            "cutout": draw(st.booleans()),
            "decontaminate": draw(st.booleans()),
            "mask_format": draw(st.sampled_from(sorted(MASK_FORMATS))),
            "threshold": draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
        },
    }  # fmt: skip
    if draw(st.booleans()):
        x, y = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        header["roi"] = {"x": x, "y": y, "w": draw(st.integers(1, w - x)),
                         "h": draw(st.integers(1, h - y))}  # fmt: skip
    return header, pixels


@given(segment_requests())
@settings(SETTINGS, max_examples=30)
def test_segment_path_with_hostile_pixels(
    client: RawClient, sidecar: Sidecar, request_and_pixels: tuple[dict[str, Any], bytes]
) -> None:
    header, pixels = request_and_pixels
    client.send(header, pixels)
    reply = final_reply(client, timeout=120)
    assert reply["kind"] == "result", reply
    img, opts = header["image"], header["options"]
    roi = header.get("roi") or {"x": 0, "y": 0, "w": img["width"], "h": img["height"]}
    mask = reply["mask"]
    assert (mask["width"], mask["height"], mask["x"], mask["y"]) == (
        roi["w"], roi["h"], roi["x"], roi["y"]
    )  # fmt: skip
    bufs = reply["_buffers"]
    assert len(bufs) == (2 if opts["cutout"] else 1)
    assert len(bufs[0]) == roi["w"] * roi["h"] * MASK_FORMATS[opts["mask_format"]]
    if opts["mask_format"] == "GRAYF32":
        m = np.frombuffer(bufs[0], "<f4")
        assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0
    if opts["threshold"] is not None:
        m = np.frombuffer(bufs[0], formats.MASK_FORMATS[opts["mask_format"]]).astype(np.float64)
        top = {"GRAY8": 255, "GRAY16": 65535, "GRAYF32": 1.0}[opts["mask_format"]]
        assert set(np.unique(m)) <= {0.0, float(top)}
    if opts["cutout"]:
        cut = reply["cutout"]
        fmt = formats.FORMATS[cut["format"]]
        rgba = np.frombuffer(bufs[1], fmt.dtype).reshape(roi["h"], roi["w"], 4)
        alpha = rgba[..., 3].astype(np.float64)
        assert np.isfinite(alpha).all() and alpha.min() >= 0


# --------------------------------------------------------------------------------- 10 000


def _bad_request(
    rng: random.Random, token: str, n: int
) -> tuple[list[bytes], str | None, set[str]]:
    """One bad request of a random kind: (frames, the id the reply must carry, allowed codes)."""
    rid = f"bad-{n}"
    seg_image = {"width": 64, "height": 64, "format": "RGBA8"}

    def pack(header: dict[str, Any], *buffers: bytes) -> list[bytes]:
        base = {"v": 1, "id": rid, "token": token}
        return [msgpack.packb({**base, **header}, use_bin_type=True), *buffers]

    kind = rng.randrange(16)
    if kind == 0:  # not msgpack, or truncated msgpack
        frame = rng.choice([b"\xc1", os.urandom(rng.randrange(1, 200)),
                            msgpack.packb({"v": 1, "id": rid})[:-2]])  # fmt: skip
        return [frame], None, {"bad_request", "unauthorized"}
    if kind == 1:  # msgpack, but not a map
        return [msgpack.packb(rng.choice([[1, 2], 7, "hello", None, 1.5]))], None, {"bad_request"}
    if kind == 2:  # wrong or missing token
        bad = rng.choice([token[:-1], token + "0", token.upper(), "", None, 0, "ток"])
        return pack({"op": "hello", "token": bad}), rid, {"unauthorized"}
    if kind == 3:
        v = rng.choice([0, 2, -1, "1", 1.5, None, True, 2**63])
        return pack({"op": "hello", "v": v}), rid, {"unsupported_version"}
    if kind == 4:
        op = rng.choice(["rm -rf /", "SEGMENT", "héllo", "🙂", "", "shutdown\x00"])
        return pack({"op": op}), rid, {"bad_request"}
    if kind == 5:  # ids that cannot be echoed
        return (
            [msgpack.packb({"v": 1, "op": "hello", "token": token,
                            "id": rng.choice(["", "x" * 129, 5, None, b"id"])})],
            None,
            {"bad_request"},
        )  # fmt: skip
    if kind == 6:  # the size lies: a big buffer that does not match
        size = rng.choice([64 * 64 * 4 - 1, 64 * 64 * 4 + 4, 1 << 16, 1 << 18])
        return pack({"op": "segment", "image": seg_image}, os.urandom(size)), rid, {"bad_request"}
    if kind == 7:  # the format lies
        fmt = rng.choice(["RGBA16", "RGBAF32", "GRAY8", "CMYK8", "rgba8", 7])
        image = {**seg_image, "format": fmt}
        return pack({"op": "segment", "image": image}, bytes(64 * 64 * 4)), rid, {"bad_request"}
    if kind == 8:  # dimensions that are not sizes
        dim = rng.choice([math.nan, math.inf, -1, 0, 2**63, "64", 64.0, True, None])
        image = {**seg_image, rng.choice(["width", "height"]): dim}
        return pack({"op": "segment", "image": image}, bytes(64)), rid, {"bad_request"}
    if kind == 9:  # huge dimensions
        image = {**seg_image, "width": rng.choice([70_000, 2**31]), "height": 70_000}
        return pack({"op": "segment", "image": image}, b""), rid, {"too_large", "bad_request"}
    if kind == 10:  # wrong frame counts
        extra = rng.choice([[], [bytes(64 * 64 * 4)] * 2, [b""] * 30])
        return pack({"op": "segment", "image": seg_image}, *extra), rid, {"bad_request"}
    if kind == 11:  # NaN and inf where numbers are expected
        opts = {"threshold": rng.choice([math.nan, math.inf, -math.inf, 1.0001, -0.0001, "0.5"])}
        frames = pack({"op": "segment", "image": seg_image, "options": opts}, bytes(64 * 64 * 4))
        return frames, rid, {"bad_request"}
    if kind == 12:  # a valid request for a model that is not there: goes through the queue
        model = rng.choice(["no-such-model", "模型", "../../etc/passwd", "u2net\x00p", "🙂" * 40])
        frames = pack({"op": "segment", "image": seg_image, "model": model}, bytes(64 * 64 * 4))
        return frames, rid, {"model_missing", "busy", "bad_request"}
    if kind == 13:  # a header over the 64 KiB limit
        return pack({"op": "hello", "pad": "x" * 70_000}), None, {"bad_request"}
    if kind == 14:  # cancel with a target of the wrong type
        return (
            pack({"op": "cancel", "target": rng.choice([None, 5, ["x"], {"a": 1}])}),
            rid,
            {"bad_request"},
        )
    # ROI outside the image
    roi = {"x": 60, "y": 0, "w": 10, "h": 10}
    return (
        pack({"op": "segment", "image": seg_image, "roi": roi}, bytes(64 * 64 * 4)),
        rid,
        {"bad_request"},
    )


def _send_bad_requests(c: RawClient, token: str, count: int, seed: int) -> Counter[str]:
    """Send ``count`` bad requests in pipelined batches; check every one is answered."""
    rng = random.Random(seed)
    codes: Counter[str] = Counter()
    n = 0
    while n < count:
        batch = []
        for _ in range(min(16, count - n)):
            frames, rid, allowed = _bad_request(rng, token, n)
            n += 1
            c.sock.send_multipart(frames)
            batch.append((rid, allowed))
        by_id = {rid: allowed for rid, allowed in batch if rid is not None}
        anonymous = [allowed for rid, allowed in batch if rid is None]
        got_ids: list[str] = []
        anon_codes: list[str] = []
        while len(got_ids) + len(anon_codes) < len(batch):
            header, _ = c.recv(30)
            if header["kind"] == "progress":
                continue
            assert header["kind"] == "error", header
            codes[header["code"]] += 1
            if header["id"] is None:
                anon_codes.append(header["code"])
            else:
                assert header["id"] in by_id, header
                assert header["code"] in by_id[header["id"]], header
                got_ids.append(header["id"])
        assert sorted(got_ids) == sorted(by_id), "a reply was lost or duplicated"
        union = set().union(*anonymous) if anonymous else set()
        assert all(code in union for code in anon_codes), anon_codes
    return codes


def test_ten_thousand_bad_requests_keep_memory_flat(client: RawClient, sidecar: Sidecar) -> None:
    """Warm up (model loaded, every error path taken once), then 10 000 bad requests of 16 kinds:
    each answered with its code, and the resident set grows by less than 20 MB."""
    h, _ = client.call({"op": "segment", "image": {"width": 64, "height": 64, "format": "RGBA8"}},
                       sample_rgba(64, 64))  # fmt: skip
    assert h["kind"] == "result", h
    _send_bad_requests(client, sidecar.token, 2_000, seed=1)
    pid = sidecar.proc.pid
    before = vm_rss(pid)
    before_status = assert_healthy(client, sidecar)
    started = time.monotonic()
    codes = _send_bad_requests(client, sidecar.token, 10_000, seed=2)
    elapsed = time.monotonic() - started
    after = vm_rss(pid)
    after_status = assert_healthy(client, sidecar)
    growth = after - before
    print(
        f"\nRSS over 10000 bad requests: before {before / 2**20:.1f} MiB, after "
        f"{after / 2**20:.1f} MiB, growth {growth / 2**20:+.2f} MiB "
        f"(status rss_bytes {before_status['rss_bytes'] / 2**20:.1f} -> "
        f"{after_status['rss_bytes'] / 2**20:.1f} MiB) in {elapsed:.1f} s; codes {dict(codes)}"
    )
    assert sum(codes.values()) == 10_000
    assert {"bad_request", "unauthorized", "unsupported_version", "too_large",
            "model_missing"} <= set(codes), codes  # fmt: skip
    assert after_status["requests"] - before_status["requests"] == 10_001  # + the status call
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------- transport


def test_a_client_that_never_reads_cannot_stall_others(client: RawClient, sidecar: Sidecar) -> None:
    """A peer that floods requests and never reads its replies fills its own pipe; the sidecar
    drops what does not fit (it never blocks on a send), so everyone else is still answered
    promptly."""
    hog = zmq.Context.instance().socket(zmq.DEALER)
    hog.setsockopt(zmq.LINGER, 0)
    hog.setsockopt(zmq.RCVHWM, 10)
    hog.plain_username, hog.plain_password = PLAIN_USERNAME, sidecar.token.encode()
    hog.connect(f"tcp://127.0.0.1:{sidecar.port}")
    try:
        frame = msgpack.packb({"v": 1, "id": "hog", "op": "models", "token": sidecar.token})
        for _ in range(5_000):
            hog.send(frame)
        started = time.monotonic()
        for _ in range(20):
            h, _ = client.call({"op": "hello"}, timeout=10)
            assert h["kind"] == "result"
        assert time.monotonic() - started < 10
    finally:
        hog.close(0)
    assert_healthy(client, sidecar)


def test_oversized_frame_is_dropped_before_it_is_buffered(tmp_path: Path, models_dir: Path) -> None:
    """Beyond ``limits.max_message_bytes`` libzmq drops the peer while reading the frame header:
    nothing reaches the sidecar, no reply comes, and it keeps serving everyone else."""
    s = Sidecar(tmp_path, models_dir, ["--max-pixels", "4096", "--idle-timeout", "0"])
    c = RawClient(s.port, s.token)
    try:
        hello, _ = c.call({"op": "hello"})
        limit = hello["limits"]["max_message_bytes"]
        assert limit < 1 << 20
        before, _ = c.call({"op": "status"})
        big = RawClient(s.port, s.token)
        big.send({"op": "segment", "image": {"width": 64, "height": 64, "format": "RGBA8"}},
                 bytes(limit + 1))  # fmt: skip
        with pytest.raises(TimeoutError):
            big.recv(3)
        big.close()
        after, _ = c.call({"op": "status"})
        assert after["requests"] == before["requests"] + 1  # only our status call arrived
        h, _ = c.call({"op": "segment", "image": {"width": 64, "height": 64, "format": "RGBA8"}},
                      sample_rgba(64, 64))  # fmt: skip
        assert h["kind"] == "result"
    finally:
        c.close()
        assert s.stop() == 0
    assert not [ln for ln in s.stderr_lines if "audit_violation" in ln]
