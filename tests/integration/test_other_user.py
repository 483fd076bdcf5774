"""Attacks from a second local user account on a real sidecar (issue "Security II", findings 1-5,
9 and 10), and from a same-user process that holds the token but not the victim's connection.

The attacker runs as ``nobody`` with the standard library only (tests/integration/attacker.py).
Each test makes the attack exactly as it was reported and asserts the outcome the user needs;
each one failed against the sidecar before handshake authentication (docs/security.md).
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from offcut.client import Client
from tests.conftest import OtherUser, RawClient, Sidecar, sample_rgba, sidecar_env

#: libzmq 4.3 starts a ROUTER's id counter at glibc's first rand(): the ids are predictable.
FIRST_GENERATED_ID = 0x6B8B4567


def _status_ok(s: Sidecar) -> bool:
    c = RawClient(s.port, s.token)
    try:
        h, _ = c.call({"op": "status"}, timeout=15)
        return h["kind"] == "result"
    finally:
        c.close()


def _victim_disconnects_mid_job(s: Sidecar, slow_model: str, routing_id: bytes) -> str:
    """A client starts a long cutout and vanishes (an editor that crashed or quit mid-job)."""
    victim = RawClient(s.port, s.token, routing_id=routing_id)
    w, h = 1200, 800
    rid = victim.send(
        {
            "op": "segment",
            "model": slow_model,
            "image": {"width": w, "height": h, "format": "RGBA8"},
            "options": {"cutout": True, "decontaminate": True},
        },
        sample_rgba(w, h, seed=7),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        head, _ = victim.recv(30)
        if head.get("stage") == "inference":
            break
    victim.close()
    return rid


def _done(s: Sidecar) -> None:
    """Wait until the sidecar is idle again (the abandoned job ran out or was cancelled)."""
    deadline = time.monotonic() + 90
    c = RawClient(s.port, s.token)
    try:
        while time.monotonic() < deadline:
            h, _ = c.call({"op": "status"}, timeout=15)
            if not h["running"] and not h["queue"]:
                return
            time.sleep(0.2)
    finally:
        c.close()
    raise AssertionError("the sidecar never went idle")


# -------------------------------------------------------------------- 1. routing-id hijack
def test_another_user_cannot_take_over_a_gone_clients_routing_id(
    own_sidecar: Sidecar, slow_model: str, other_user: OtherUser
) -> None:
    """Finding 1: the other uid claimed the id of a client that left mid-job and received its
    progress, mask and decontaminated cutout. Now it cannot even finish the handshake."""
    ident = b"\x00" + secrets.token_bytes(4)
    attack = None
    try:
        _victim_disconnects_mid_job(own_sidecar, slow_model, ident)
        attack = other_user.popen("claim", own_sidecar.port, ident.hex(), 12)
        got = OtherUser.result(attack)
    finally:
        if attack is not None and attack.poll() is None:
            attack.kill()
    assert got == {"bytes": 0, "progress": 0, "result": 0, "error": 0, "mask": 0}, got
    _done(own_sidecar)
    assert own_sidecar.alive() and _status_ok(own_sidecar)


def test_a_token_holder_taking_the_id_gets_nothing_meant_for_the_old_connection(
    own_sidecar: Sidecar, slow_model: str
) -> None:
    """The second wall: even a peer with the token (another of the user's own programs) that
    takes over a gone client's routing id receives none of that client's replies: a job belongs
    to its TCP connection and is cancelled when the connection ends."""
    ident = b"\x00" + secrets.token_bytes(4)
    rid = _victim_disconnects_mid_job(own_sidecar, slow_model, ident)
    deadline = time.monotonic() + 30
    thief = None
    # The id is free once libzmq has dropped the old pipe; until then it ignores a newcomer that
    # asks for it, so a connection that gets no answer is closed and tried again.
    while thief is None and time.monotonic() < deadline:
        attempt = RawClient(own_sidecar.port, own_sidecar.token, routing_id=ident)
        try:
            h, _ = attempt.call({"op": "status"}, timeout=2)
        except TimeoutError:
            attempt.close()
            time.sleep(0.1)
            continue
        assert h["kind"] == "result", h
        thief = attempt
    assert thief is not None, "the gone client's routing id never became free"
    seen = []
    try:
        end = time.monotonic() + 12
        while time.monotonic() < end:
            try:
                head, bufs = thief.recv(0.5)
            except TimeoutError:
                continue
            seen.append((head, len(bufs)))
    finally:
        thief.close()
    assert not [h for h, _ in seen if h.get("id") == rid], seen
    _done(own_sidecar)


# -------------------------------------------------------------------- 2. crash by claiming ids
def test_claiming_the_next_routing_ids_does_not_crash_the_sidecar(
    own_sidecar: Sidecar, other_user: OtherUser
) -> None:
    """Finding 2: claiming the ids libzmq hands out next, then one anonymous connection, made
    libzmq assert and the sidecar abort, leaving a stale connection file."""
    got = other_user.run("claim-range", own_sidecar.port, f"{FIRST_GENERATED_ID:08x}", 64)
    assert got["anonymous_got"] < 200  # no reply reached it (only a greeting, at most)
    time.sleep(0.5)
    assert own_sidecar.alive(), "".join(own_sidecar.stderr_lines[-20:])
    assert _status_ok(own_sidecar)


# -------------------------------------------------------------------- 3. connection exhaustion
def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_idle_peers_do_not_lock_out_the_user(
    tmp_path: Path, models_dir: Path, other_user: OtherUser
) -> None:
    """Finding 3: ~1,000 idle peers that finished the handshake filled the descriptor table under
    the usual soft limit of 1024; real clients then got misleading errors. The sidecar here starts
    under that soft limit, as from a desktop session."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = ["prlimit", f"--nofile=1024:{hard}", "--"]
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"], wrapper=limit)
    attack = None
    try:
        baseline = _open_fds(s.proc.pid)
        attack = other_user.popen("idle", s.port, 1000, 8)
        time.sleep(3)  # all thousand connections are open (or refused) by now
        during = _open_fds(s.proc.pid)
        env = {"OFFCUT_CLIENT_TRANSPORT": os.environ.get("OFFCUT_CLIENT_TRANSPORT", "pyzmq")}
        with Client(
            app="victim", runtime_dir=runtime, start=False, transport=env["OFFCUT_CLIENT_TRANSPORT"]
        ) as c:
            st = c.status()
        assert st["pid"] == s.proc.pid
        got = OtherUser.result(attack)
        time.sleep(1)
        after = _open_fds(s.proc.pid)
    finally:
        if attack is not None and attack.poll() is None:
            attack.kill()
        s.stop()
    # Unauthenticated peers are dropped: at most the pending bound is ever held, none at the end.
    assert during < baseline + 300, (baseline, during)
    assert got["open_at_end"] == 0, got
    assert after <= baseline + 2, (baseline, after)


# -------------------------------------------------------------------- 4. log growth
def test_unauthenticated_requests_cannot_grow_the_log(
    own_sidecar: Sidecar, other_user: OtherUser
) -> None:
    """Finding 4: every `unauthorized` reply logged the attacker's id; 20,000 requests wrote
    31.8 MB into the RAM-backed runtime directory."""
    assert _status_ok(own_sidecar)
    time.sleep(0.3)
    before = sum(map(len, own_sidecar.stderr_lines))
    got = other_user.run("flood", own_sidecar.port, 3000)
    assert got["logins"] > 0 and got["answered"] == 0, got
    time.sleep(1)
    grown = sum(map(len, own_sidecar.stderr_lines)) - before
    assert grown < 8 * 1024, own_sidecar.stderr_lines[-5:]
    assert not [ln for ln in own_sidecar.stderr_lines if "flood-" in ln]  # nothing the peer chose
    assert _status_ok(own_sidecar)


# -------------------------------------------------------------------- 5. memory before auth
def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


@pytest.mark.parametrize("mechanism", ["NULL", "PLAIN"])
def test_an_unauthenticated_peer_cannot_make_the_sidecar_hold_memory(
    own_sidecar: Sidecar, other_user: OtherUser, mechanism: str
) -> None:
    """Finding 5: one unfinished 1.5 GB frame raised the sidecar's memory by as much, held until
    the peer left. NULL peers are refused at the greeting; a PLAIN peer that begins an enormous
    HELLO is cut off once it has sent more than any handshake needs."""
    assert _status_ok(own_sidecar)
    rss_before = _vm_kb(own_sidecar.proc.pid, "VmRSS")
    # Peak memory is what matters: reset the high-water mark (Linux 4.0+: write 5 to clear_refs).
    Path(f"/proc/{own_sidecar.proc.pid}/clear_refs").write_text("5")
    got = other_user.run("bigframe", own_sidecar.port, mechanism, 1000)
    peak = _vm_kb(own_sidecar.proc.pid, "VmHWM")
    assert got["stopped"] != "sent all" or got["sent_mb"] < 1000, got
    assert peak - rss_before < 256 * 1024, (rss_before, peak, got)
    assert own_sidecar.alive() and _status_ok(own_sidecar)


# -------------------------------------------------------------------- 9. runtime-dir symlink
def test_a_planted_runtime_dir_symlink_is_not_followed(
    tmp_path: Path, models_dir: Path, other_user: OtherUser
) -> None:
    """Finding 9: with the runtime directory in a shared place, another user plants a symlink at
    its path pointing at one of the victim's folders; the sidecar chmod-ed that folder to 0700
    and created its files in it."""
    # A world-writable sticky folder the other user can reach, like /tmp itself.
    shared = Path(tempfile.mkdtemp(prefix="offcut-shared-"))
    shared.chmod(0o1777)
    photos = tmp_path / "photos"
    photos.mkdir(mode=0o755)
    photos.chmod(0o755)
    link = shared / "offcut-run"
    subprocess.run(
        [other_user.python, "-c", f"import os; os.symlink({str(photos)!r}, {str(link)!r})"],
        user=65534,
        group=65534,
        extra_groups=[],
        check=True,
        cwd="/",
    )
    env = sidecar_env(link, models_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "offcut", "serve", "--idle-timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shutil.rmtree(shared)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "symbolic link" in proc.stderr and "OFFCUT_RUNTIME_DIR" in proc.stderr
    assert (photos.stat().st_mode & 0o777) == 0o755
    assert list(photos.iterdir()) == []


# -------------------------------------------------------------------- 10. idle exit
def test_idle_exit_is_prompt_and_unauthenticated_pings_do_not_delay_it(
    tmp_path: Path, models_dir: Path, other_user: OtherUser
) -> None:
    """Finding 10: idle exit took 10 s (the worker was never told), during which the port
    accepted but never answered, and pings without the token reset the idle timer."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "2"])
    started = time.monotonic()
    pinger = other_user.popen("ping", s.port, 12)
    try:
        code = s.proc.wait(timeout=9)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        pinger.kill()
        s.stop()
    assert code == 0, f"still running {time.monotonic() - started:.1f} s after start"
    assert not (runtime / "sidecar.json").exists()
