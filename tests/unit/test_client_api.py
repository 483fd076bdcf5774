"""The plug-in client end to end against a small fake sidecar (a real pyzmq ROUTER in a process).

The fake (tests/fakes/fake_sidecar.py) speaks docs/protocol.md closely enough to exercise
discovery, spawning, progress, cancel, time-outs, dead and restarted sidecars and error mapping,
over both transports, without ONNX models. The real sidecar is covered by
tests/integration/test_client_sidecar.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offcut.client import (
    BAD_REQUEST,
    BUSY,
    CANCELLED,
    INTERNAL,
    TOO_LARGE,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
    Client,
    OffcutClientError,
)
from tests.fakes import fake_sidecar

# A real module (linted, formatted), run by path as a client runs a sidecar command.
FAKE_SIDECAR = Path(fake_sidecar.__file__)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Paths and helpers for one isolated fake sidecar world; kills what it started."""
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    monkeypatch.setenv("OFFCUT_RUNTIME_DIR", str(rundir))
    monkeypatch.delenv("OFFCUT_SIDECAR_COMMAND", raising=False)
    for var in fake_sidecar.SWITCHES:
        monkeypatch.delenv(var, raising=False)
    world = FakeWorld(FAKE_SIDECAR, rundir)
    yield world
    world.cleanup()


class FakeWorld:
    def __init__(self, script: Path, rundir: Path) -> None:
        self.script = script
        self.rundir = rundir
        self.command = [sys.executable, str(script)]
        self.pids: set[int] = set()
        self._clients: list[Client] = []

    def conn(self) -> dict:
        return json.loads((self.rundir / "sidecar.json").read_text())

    def start(self, **env: str) -> int:
        """Start a fake sidecar directly (not through a client); return its pid."""
        proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )
        line = json.loads(proc.stdout.readline())
        self.pids.add(line["pid"])
        threading.Thread(target=proc.communicate, daemon=True).start()
        return line["pid"]

    def client(self, **kwargs) -> Client:
        kwargs.setdefault("command", self.command)
        kwargs.setdefault("app", "test")
        c = Client(**kwargs)
        self._clients.append(c)
        return c

    def cleanup(self) -> None:
        for c in self._clients:
            if c.spawned is not None:
                self.pids.add(c.spawned.proc.pid)
            if c.sidecar_pid:
                self.pids.add(c.sidecar_pid)
            c.close()
        self._clients.clear()
        with contextlib.suppress(OSError, ValueError):
            self.pids.add(self.conn()["pid"])
        for pid in self.pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def rgba(w: int, h: int) -> bytes:
    return bytes(w * h * 4)


# -- discovery and start ------------------------------------------------------------------------


def test_starts_sidecar_detached_and_reuses_it(fake, transport):
    c = fake.client()
    assert c.transport_name == transport
    hello = c.hello()
    assert hello["protocol"] == 1
    pid = c.sidecar_pid
    assert pid == fake.conn()["pid"]
    assert os.getsid(pid) != os.getsid(0), "the sidecar must outlive the plug-in's session"
    assert "serving" in (fake.rundir / "sidecar.log").read_text()
    assert c.models() == [{"name": "fake", "installed": True}]
    c2 = fake.client()
    assert c2.status()["pid"] == pid
    assert c2.spawned is None, "a live sidecar must be reused, not started again"


def test_no_sidecar_and_start_false(fake, transport):
    c = fake.client(start=False)
    with pytest.raises(OffcutClientError) as info:
        c.hello()
    assert info.value.code == INTERNAL and info.value.connection
    assert "not running" in info.value.message


def test_stale_connection_file_gets_a_fresh_sidecar(fake, transport):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"transport": "tcp", "ip": "127.0.0.1", "port": 9, "token": "x" * 64,
             "pid": dead.pid, "protocol": 1}  # fmt: skip
    path = fake.rundir / "sidecar.json"
    path.write_text(json.dumps(stale))
    path.chmod(0o600)
    c = fake.client()
    c.hello()
    assert c.sidecar_pid != dead.pid and fake.conn()["pid"] == c.sidecar_pid


def test_live_pid_but_nobody_listening_gets_a_fresh_sidecar(fake, transport):
    stale = {"transport": "tcp", "ip": "127.0.0.1", "port": 9, "token": "x" * 64,
             "pid": os.getpid(), "protocol": 1}  # fmt: skip
    path = fake.rundir / "sidecar.json"
    path.write_text(json.dumps(stale))
    path.chmod(0o600)
    c = fake.client(connect_timeout=2.0)
    c.hello()
    assert c.sidecar_pid != os.getpid()


def test_start_failure_shows_the_sidecars_last_output(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    c = fake.client()
    with pytest.raises(OffcutClientError) as info:
        c.hello()
    msg = info.value.message
    assert "exited with status 3" in msg
    assert "boom: cannot load things" in msg and "second line of trouble" in msg
    assert info.value.connection


def test_start_timeout_kills_the_half_started_sidecar(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    c = fake.client(start_timeout=1.0)
    t = time.monotonic()
    with pytest.raises(OffcutClientError, match="did not report ready within 1 s"):
        c.hello()
    assert time.monotonic() - t < 10
    assert c.spawned is not None and c.spawned.proc.poll() is not None


def test_cancel_while_the_sidecar_is_starting(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    c = fake.client(start_timeout=30.0)
    threading.Timer(0.5, c.cancel).start()
    t = time.monotonic()
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(2, 2), 2, 2, "RGBA8")
    assert info.value.code == CANCELLED
    assert time.monotonic() - t < 10


def test_already_running_readiness_line_means_reuse(fake, transport):
    """A started `serve` that loses the lock race reports the winner; the client uses that one."""
    pid = fake.start()
    path = fake.rundir / "sidecar.json"
    saved = path.read_bytes()
    path.unlink()  # the client sees no sidecar, starts one, which finds the lock taken...

    def restore():  # ...and waits for the winner's connection file
        time.sleep(0.5)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(saved)
        tmp.chmod(0o600)
        tmp.replace(path)

    threading.Thread(target=restore, daemon=True).start()
    c = fake.client()
    c.hello()
    assert c.spawned is not None and c.spawned.readiness["already_running"] is True
    assert c.sidecar_pid == pid
    c.spawned.proc.wait(10)


def test_concurrent_clients_share_one_sidecar(fake, transport):
    results: list = []
    errors: list = []

    def run():
        try:
            c = fake.client()
            results.append(c.status()["pid"])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(set(results)) == 1 and len(results) == 4


# -- requests -----------------------------------------------------------------------------------


def test_segment_sends_the_documented_request(fake, transport):
    c = fake.client()
    seen = []
    r = c.segment(
        rgba(8, 6), 8, 6, "RGBA8", model="m1", roi=(1, 2, 3, 4), refine=True, threshold=0.5,
        cutout=True, on_progress=lambda stage, p: seen.append((stage, p)),
    )  # fmt: skip
    assert seen[0] == ("queued", 0.0)
    assert r.mask_info == {"width": 3, "height": 4, "format": "GRAY8", "x": 1, "y": 2}
    assert len(r.mask) == 12 and r.mask == bytes([192]) * 12  # 8*6*4 = 192 bytes received
    assert len(r.cutout) == 48 and r.cutout_info["format"] == "RGBA8"
    echo = r.meta["echo"]
    assert echo["v"] == 1 and echo["op"] == "segment" and isinstance(echo["id"], str)
    assert echo["image"] == {"width": 8, "height": 6, "format": "RGBA8", "colorspace": "srgb"}
    assert echo["model"] == "m1"
    assert echo["roi"] == {"x": 1, "y": 2, "w": 3, "h": 4}
    assert echo["options"] == {"refine": True, "decontaminate": False, "mask_format": "GRAY8",
                               "cutout": True, "threshold": 0.5}  # fmt: skip
    assert r.meta["buffers"] == [192]
    assert r.meta["model"] == "m1" and "mask" not in r.meta


def test_segment_accepts_any_contiguous_buffer(fake, transport):
    import array

    c = fake.client()
    data = array.array("f", [0.5] * (4 * 4 * 4))
    r = c.segment(data, 4, 4, "RGBAF32")
    assert r.meta["buffers"] == [256]
    r = c.segment(memoryview(bytearray(4 * 4 * 3)), 4, 4, "RGB8", roi={"x": 0, "y": 0, "w": 2,
                                                                         "h": 2})  # fmt: skip
    assert len(r.mask) == 4


def test_wrong_buffer_size_fails_before_any_connection(fake, transport):
    c = fake.client(start=False)
    with pytest.raises(OffcutClientError) as info:
        c.segment(b"\x00" * 10, 4, 4, "RGBA8")
    assert info.value.code == BAD_REQUEST and "64" in info.value.message


def test_too_large_is_refused_before_sending(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MAX_MSG", "100000")
    c = fake.client()
    c.hello()
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(200, 200), 200, 200, "RGBA8")
    assert info.value.code == TOO_LARGE
    assert c.status()["pid"]  # still connected and usable


def test_cancel_from_another_thread(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_SEG_DELAY", "20")
    c = fake.client()
    c.hello()
    assert c.cancel() is False  # nothing in flight
    stages = []

    def on_progress(stage, p):
        stages.append(stage)
        if stage == "queued":
            threading.Timer(0.2, c.cancel).start()

    t = time.monotonic()
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(4, 4), 4, 4, "RGBA8", on_progress=on_progress)
    assert info.value.code == CANCELLED
    assert time.monotonic() - t < 10
    log = c.status()["log"]
    assert any(e.get("op") == "cancel" for e in log)
    monkeypatch.setenv("FAKE_SEG_DELAY", "0")


def test_progress_callback_exception_cancels_and_propagates(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_SEG_DELAY", "20")
    c = fake.client()

    class Stop(Exception):
        pass

    def on_progress(stage, p):
        raise Stop()

    with pytest.raises(Stop):
        c.segment(rgba(4, 4), 4, 4, "RGBA8", on_progress=on_progress)
    log = c.status()["log"]
    seg = [e for e in log if e.get("op") == "segment"][-1]
    assert any(e.get("op") == "cancel" and e.get("target") == seg["id"] for e in log)


def test_progress_silence_times_out(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "silent_segment")
    c = fake.client(progress_timeout=0.5)
    t = time.monotonic()
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(4, 4), 4, 4, "RGBA8")
    assert 0.4 < time.monotonic() - t < 5
    assert info.value.code == INTERNAL and info.value.connection
    assert "sent nothing for" in info.value.message


def test_long_wait_in_the_queue_is_not_silence(fake, transport, monkeypatch):
    """Queued behind others, the sidecar says nothing; a status probe shows it alive."""
    monkeypatch.setenv("FAKE_SEG_DELAY", "2")
    monkeypatch.setenv("FAKE_QUIET", "1")
    c = fake.client(progress_timeout=0.5)
    r = c.segment(rgba(4, 4), 4, 4, "RGBA8")
    assert len(r.mask) == 16
    log = c.status()["log"]
    assert any(e.get("op") == "status" and e["id"].endswith("-probe") for e in log)


def test_hung_sidecar_while_queued_times_out(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hung_while_queued")
    c = fake.client(progress_timeout=0.5, request_timeout=0.5)
    t = time.monotonic()
    with pytest.raises(OffcutClientError, match="sent nothing for"):
        c.segment(rgba(4, 4), 4, 4, "RGBA8")
    assert time.monotonic() - t < 5


def test_overall_timeout(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_SEG_DELAY", "20")
    c = fake.client()
    with pytest.raises(OffcutClientError, match="within 1 s"):
        c.segment(rgba(4, 4), 4, 4, "RGBA8", timeout=1.0)
    monkeypatch.setenv("FAKE_SEG_DELAY", "0")
    assert c.status()["pid"]


def test_sidecar_dying_mid_request_then_fresh_one(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "die_in_segment")
    c = fake.client()
    first = c.hello() and c.sidecar_pid
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(4, 4), 4, 4, "RGBA8")
    assert info.value.code == INTERNAL and info.value.connection
    assert "stopped while working" in info.value.message
    monkeypatch.setenv("FAKE_MODE", "normal")
    assert c.status()["pid"] != first


def test_restarted_sidecar_is_found_again_transparently(fake, transport):
    c = fake.client()
    first = c.status()["pid"]
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    (fake.rundir / "sidecar.json").unlink()
    (fake.rundir / "sidecar.lock").unlink()
    second = fake.start()
    assert c.status()["pid"] == second != first


def _write_conn(fake, info: dict) -> None:
    path = fake.rundir / "sidecar.json"
    path.write_text(json.dumps(info))
    path.chmod(0o600)


def test_wrong_token_is_refused_in_the_handshake(fake, transport):
    """The first wall: ZMTP PLAIN with the token as password; a wrong one never connects."""
    pid = fake.start()
    info = fake.conn()
    _write_conn(fake, dict(info, token="0" * 64))
    c = fake.client()
    with pytest.raises(OffcutClientError) as info_exc:
        c.hello()
    err = info_exc.value
    assert err.code == UNAUTHORIZED and err.connection
    assert f"(pid {pid}) refused this plug-in's credentials" in err.message
    assert "End that sidecar process and try again" in err.message
    assert c.spawned is None, "starting another sidecar cannot help: this one holds the lock"
    assert fake.conn()["pid"] == pid
    _write_conn(fake, info)
    zap = c.status()["zap"]
    assert zap[0] == ["offcut", False] and zap[-1] == ["offcut", True]


def test_wrong_token_in_the_header_is_unauthorized(fake, transport, monkeypatch):
    """The second wall: every header carries the token too."""
    monkeypatch.setenv("FAKE_ZAP_OPEN", "1")  # a handshake that lets anyone in
    pid = fake.start()
    _write_conn(fake, dict(fake.conn(), token="0" * 64))
    c = fake.client()
    with pytest.raises(OffcutClientError) as info_exc:
        c.hello()
    assert info_exc.value.code == UNAUTHORIZED
    assert c.spawned is None
    assert fake.conn()["pid"] == pid


def test_a_sidecar_that_does_not_admit_us_is_busy(fake, transport, monkeypatch):
    """ZAP 500: the sidecar would not take another connection (its bound on connections)."""
    monkeypatch.setenv("FAKE_ZAP_STATUS", "500")
    pid = fake.start()
    c = fake.client()
    with pytest.raises(OffcutClientError) as info:
        c.hello()
    assert info.value.code == BUSY and info.value.connection
    assert f"(pid {pid}) did not admit this connection" in info.value.message
    assert c.spawned is None


def test_refused_credentials_mean_reading_the_connection_file_again(fake, transport, monkeypatch):
    """A sidecar that restarted since the file was read has a new token: read it again, once."""
    from offcut.client import discovery

    fake.start()
    real = discovery.read_connection_file
    reads = []

    def stale_first(path=None):
        info = real(path)
        reads.append(info)
        if len(reads) == 1:
            info.token = "0" * 64  # what the file held before the sidecar restarted
        return info

    monkeypatch.setattr(discovery, "read_connection_file", stale_first)
    c = fake.client()
    assert c.hello()["protocol"] == 1
    assert len(reads) == 2 and c.spawned is None


def test_sidecar_limit_bounds_the_frames_it_sends(fake, transport, monkeypatch):
    """After hello, frames from the sidecar are bounded by its `max_message_bytes`."""
    monkeypatch.setenv("FAKE_MAX_MSG", "100000")
    c = fake.client()
    c.hello()
    assert c._transport.max_frame_bytes == 100000
    r = c.segment(bytes(300 * 300), 300, 300, "GRAY8")  # a 90,000-byte mask: within
    assert len(r.mask) == 90000
    with pytest.raises(OffcutClientError) as info:  # a 360,000-byte RGBA8 cutout: over
        c.segment(bytes(300 * 300), 300, 300, "GRAY8", cutout=True)
    assert info.value.connection
    if transport == "builtin":
        assert "360000-byte frame, over the 100000-byte limit" in info.value.message
    assert c.status()["pid"], "the next call connects again"


def test_unknown_error_code_becomes_internal(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "weird_error")
    c = fake.client()
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(2, 2), 2, 2, "RGBA8")
    assert info.value.code == INTERNAL and info.value.message == "Something odd."
    assert not info.value.connection


def test_error_with_nil_id_is_ours(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "nil_id_error")
    c = fake.client()
    with pytest.raises(OffcutClientError) as info:
        c.segment(rgba(2, 2), 2, 2, "RGBA8")
    assert info.value.code == BAD_REQUEST


def test_protocol_mismatch(fake, transport, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "proto2")
    c = fake.client()
    with pytest.raises(OffcutClientError) as info:
        c.hello()
    assert info.value.code == UNSUPPORTED_VERSION


def test_shutdown(fake, transport):
    c = fake.client()
    pid = c.status()["pid"]
    assert c.shutdown() is True
    for _ in range(100):
        if not (fake.rundir / "sidecar.json").exists():
            break
        time.sleep(0.05)
    assert not (fake.rundir / "sidecar.json").exists()
    assert c.shutdown() is False  # nothing running, and nothing started
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)


def test_closed_client_refuses_calls(fake, transport):
    c = fake.client()
    c.close()
    with pytest.raises(OffcutClientError, match="closed"):
        c.hello()


def test_forced_transport_must_exist(monkeypatch):
    monkeypatch.setenv("OFFCUT_CLIENT_TRANSPORT", "carrier-pigeon")
    with pytest.raises(OffcutClientError, match="OFFCUT_CLIENT_TRANSPORT"):
        Client()


# -- the installed copy: `offcut_client`, without pyzmq and msgpack ---------------------------

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("zmq", "msgpack"):
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, _Block())
"""

PROBE = """
import sys
try:
    import zmq  # noqa: F401
    sys.exit("zmq should be unimportable here")
except ImportError:
    pass
import offcut_client
assert offcut_client.__name__ == "offcut_client"
c = offcut_client.Client(app="probe", command=sys.argv[1:])
assert c.transport_name == "builtin", c.transport_name
c.hello()
r = c.segment(bytes(4 * 4 * 4), 4, 4, "RGBA8", cutout=True)
assert len(r.mask) == 16 and len(r.cutout) == 64
try:
    c.segment(b"", 4, 4, "RGBA8")
except offcut_client.OffcutClientError as exc:
    assert exc.code == "bad_request"
print("OK", c.transport_name, c.sidecar_pid)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses env -u")
def test_installed_copy_works_without_zmq_and_msgpack(fake, tmp_path):
    import shutil

    import offcut.client

    pkgs = tmp_path / "pkgs"
    shutil.copytree(Path(offcut.client.__file__).parent, pkgs / "offcut_client")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "OFFCUT_CLIENT_TRANSPORT"}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(pkgs)])
    # The sidecar itself needs pyzmq: start it without the shim.
    command = ["env", "-u", "PYTHONPATH", sys.executable, str(fake.script)]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *command],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("OK builtin")
    fake.pids.add(int(out.stdout.split()[2]))
