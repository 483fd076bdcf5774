"""The plug-in client against the real ``offcut serve``, over both transports.

Each test gets its own runtime directory, so its own sidecar, started by the client itself the way
an editor starts it. Models come from the same models directory as every other suite
(tests/conftest.py ``MODELS_DIR``); a test that runs inference fails under CI when u2netp is not
there (``models_dir`` fixture), and skips only outside CI.
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

import offcut
from offcut.client import (
    BAD_REQUEST,
    CANCELLED,
    INTERNAL,
    UNAUTHORIZED,
    Client,
    OffcutClientError,
    i18n,
)
from offcut.commands import install
from offcut.i18n import catalogs
from tests.conftest import MODELS_DIR

MODELS = MODELS_DIR
SRC_ROOT = str(Path(offcut.__file__).resolve().parent.parent)
AUDITED = [sys.executable, "-m", "offcut", "serve", "--audit"]
needs_model = pytest.mark.usefixtures("models_dir")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """An isolated runtime dir; every sidecar started in it is stopped afterwards."""
    rundir = tmp_path / "run"
    monkeypatch.setenv("OFFCUT_RUNTIME_DIR", str(rundir))
    monkeypatch.setenv("OFFCUT_MODELS_DIR", str(MODELS))
    # Privacy invariants enforced at run time (docs: `offcut serve --audit`) while we test.
    monkeypatch.setenv("OFFCUT_SIDECAR_COMMAND", json.dumps(AUDITED))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [SRC_ROOT, os.environ.get("PYTHONPATH")]))
    )
    w = World(rundir)
    yield w
    w.stop_all()


class World:
    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.pids: set[int] = set()
        self.clients: list[Client] = []

    @property
    def conn_path(self) -> Path:
        return self.rundir / "sidecar.json"

    def conn(self) -> dict:
        return json.loads(self.conn_path.read_text())

    def client(self, **kw) -> Client:
        kw.setdefault("app", "itest")
        c = Client(**kw)
        self.clients.append(c)
        return c

    def remember(self, pid: int | None) -> None:
        if pid:
            self.pids.add(pid)

    def stop_all(self) -> None:
        for c in self.clients:
            self.remember(c.sidecar_pid)
            c.close()
        with contextlib.suppress(OSError, ValueError):
            self.remember(self.conn()["pid"])
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)


def image(w: int, h: int) -> bytes:
    """A bright square on a dark background, RGBA8."""
    rows = []
    for y in range(h):
        inside_y = h // 4 <= y < 3 * h // 4
        row = bytearray(b"\x10\x10\x10\xff" * w)
        if inside_y:
            row[4 * (w // 4) : 4 * (3 * w // 4)] = b"\xf0\xe0\xd0\xff" * (3 * w // 4 - w // 4)
        rows.append(bytes(row))
    return b"".join(rows)


# -- lifecycle ------------------------------------------------------------------------------------


def test_client_starts_and_reuses_the_sidecar(world, transport):
    c = world.client()
    hello = c.hello()
    assert hello["protocol"] == 1 and hello["limits"]["max_message_bytes"] > 0
    assert c.transport_name == transport
    pid = c.sidecar_pid
    assert world.conn()["pid"] == pid
    assert os.getsid(pid) != os.getsid(0)
    if sys.platform.startswith("linux"):
        assert _cmdline(pid) == AUDITED
    assert c.status()["pid"] == pid
    assert isinstance(c.models(), list)
    again = world.client()
    assert again.hello() and again.sidecar_pid == pid and again.spawned is None


def _install_gimp_stand_in(tmp_path: Path) -> Path:
    src = tmp_path / "plugin_src"
    src.mkdir()
    (src / "offcut-remove-background.py").write_text("#!/usr/bin/env python3\n")
    (src / "offcut_gimp").mkdir()  # the script's logic package, which the installer requires
    (src / "offcut_gimp" / "__init__.py").write_text("")
    profile = tmp_path / "plug-ins"
    install.install("gimp", [install.Target(profile)], source=src)
    return profile / "offcut-remove-background"


PROBE = r"""
import json, sys
import offcut_client
c = offcut_client.Client(app="probe")
hello = c.hello()
px = bytes(range(256)) * (32 * 32 * 4 // 256)
seg = None
if sys.argv[1] == "segment":
    r = c.segment(px, 32, 32, "RGBA8")
    seg = [len(r.mask), r.mask_info]
print(json.dumps({"transport": c.transport_name, "pid": c.sidecar_pid, "seg": seg}))
"""

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("zmq", "msgpack"):
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, _Block())
"""


def _run_probe(world, plugin: Path, extra_path: list[str], op: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OFFCUT_SIDECAR_COMMAND")}
    env["PYTHONPATH"] = os.pathsep.join([*extra_path, str(plugin)])
    out = subprocess.run(
        [sys.executable, "-c", PROBE, op],
        env=env, cwd=str(plugin.parent), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    world.remember(result["pid"])
    return result


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_installed_client_starts_the_recorded_command(world, transport, tmp_path):
    """An editor's Python that cannot import offcut runs the command the installer recorded."""
    plugin = _install_gimp_stand_in(tmp_path)
    result = _run_probe(world, plugin, [], "hello")
    assert result["transport"] == transport
    record = json.loads((plugin / "offcut_sidecar.json").read_text())
    assert _cmdline(result["pid"]) == record["command"]
    assert world.conn()["pid"] == result["pid"]


@needs_model
def test_installed_client_without_zmq_and_msgpack(world, tmp_path, monkeypatch):
    """pyzmq and msgpack truly absent (an import hook refuses them), as in many editors."""
    monkeypatch.delenv("OFFCUT_CLIENT_TRANSPORT", raising=False)
    plugin = _install_gimp_stand_in(tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCKER)
    result = _run_probe(world, plugin, [str(shim)], "segment")
    assert result["transport"] == "builtin"
    assert result["seg"][0] == 32 * 32 and result["seg"][1]["width"] == 32


def test_stale_connection_file_gets_a_fresh_sidecar(world, transport):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    world.rundir.mkdir(mode=0o700, parents=True)
    world.conn_path.write_text(json.dumps({
        "transport": "tcp", "ip": "127.0.0.1", "port": 9, "token": "f" * 64, "pid": dead.pid,
        "protocol": 1, "sidecar_version": "0.0.0", "started": 0.0,
    }))  # fmt: skip
    world.conn_path.chmod(0o600)
    c = world.client()
    c.hello()
    assert c.sidecar_pid != dead.pid
    assert world.conn()["pid"] == c.sidecar_pid


def test_wrong_token_is_unauthorized(world, transport):
    first = world.client()
    first.hello()
    info = world.conn()
    info["token"] = "0" * 64
    tmp = world.conn_path.with_name("x.tmp")
    tmp.write_text(json.dumps(info))
    tmp.chmod(0o600)
    tmp.replace(world.conn_path)
    c = world.client()
    with pytest.raises(OffcutClientError) as exc:
        c.hello()
    assert exc.value.code == UNAUTHORIZED
    assert c.spawned is None, "a wrong token must not start another sidecar"


@needs_model
def test_sidecar_killed_mid_request_then_a_fresh_one(world, transport):
    c = world.client()
    c.hello()
    first = c.sidecar_pid

    def kill_on_first_progress(stage, fraction):
        if stage == "queued":
            os.kill(first, signal.SIGKILL)

    with pytest.raises(OffcutClientError) as exc:
        c.segment(image(256, 256), 256, 256, "RGBA8", on_progress=kill_on_first_progress)
    assert exc.value.code == INTERNAL and exc.value.connection
    assert "stopped while working" in exc.value.message
    r = c.segment(image(64, 64), 64, 64, "RGBA8")
    assert len(r.mask) == 64 * 64
    assert c.sidecar_pid != first
    assert world.conn()["pid"] == c.sidecar_pid


def test_concurrent_threads_share_one_sidecar(world, transport):
    pids: list = []
    errors: list = []

    def run():
        try:
            pids.append(world.client().status()["pid"])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(pids) == 4 and len(set(pids)) == 1


def test_concurrent_processes_share_one_sidecar(world, transport):
    code = (
        "import json; from offcut.client import Client; "
        "c = Client(app='proc'); print(json.dumps(c.status()['pid']))"
    )
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]  # fmt: skip
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=False):
        assert p.returncode == 0, err
    pids = {int(out.strip()) for out, _ in outs}
    for pid in pids:
        world.remember(pid)
    assert len(pids) == 1


def test_shutdown_stops_the_sidecar(world, transport):
    c = world.client()
    c.hello()
    pid = c.sidecar_pid
    assert c.shutdown() is True
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the sidecar did not exit after shutdown")
    assert not world.conn_path.exists()
    assert world.client(start=False).shutdown() is False


# -- requests -------------------------------------------------------------------------------------


@needs_model
def test_segment_small_image(world, transport):
    c = world.client()
    stages = []
    r = c.segment(image(96, 64), 96, 64, "RGBA8", cutout=True,
                  on_progress=lambda s, p: stages.append((s, p)))  # fmt: skip
    assert stages and stages[0][0] == "queued"
    assert all(0.0 <= p <= 1.0 for _, p in stages)
    assert r.mask_info == {"width": 96, "height": 64, "format": "GRAY8", "x": 0, "y": 0}
    assert len(r.mask) == 96 * 64
    assert r.cutout_info["format"] == "RGBA8" and len(r.cutout) == 96 * 64 * 4
    assert r.meta["model"] and len(r.meta["sha256"]) == 64 and r.meta["provider"]
    # The bright square is the foreground: its centre is more opaque than a corner.
    assert r.mask[32 * 96 + 48] > r.mask[0]
    assert not c.status().get("audit_violations")


@needs_model
@pytest.mark.parametrize(("mask_format", "bpp"), [("GRAY16", 2), ("GRAYF32", 4)])
def test_segment_roi_and_mask_formats(world, transport, mask_format, bpp):
    c = world.client()
    r = c.segment(image(80, 60), 80, 60, "RGBA8", roi=(10, 5, 40, 30), mask_format=mask_format)
    assert r.mask_info == {"width": 40, "height": 30, "format": mask_format, "x": 10, "y": 5}
    assert len(r.mask) == 40 * 30 * bpp


@needs_model
def test_segment_big_frame_round_trip(world, transport):
    w, h = 2400, 1600  # 15 MB in, 3.8 MB out: long frames, chunked sends, preallocated receive
    c = world.client()
    r = c.segment(bytearray(image(w, h)), w, h, "RGBA8")
    assert len(r.mask) == w * h


def _anon_huge_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("no AnonHugePages line")


@needs_model
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_spawned_sidecar_gets_huge_pages_for_its_large_blocks(world, monkeypatch):
    """The client starts the sidecar with glibc's huge-page tunable, and glibc honours it.

    A user's own ``glibc.malloc.hugetlb`` wins: with ``=0`` the sidecar has no huge pages.
    """
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    thp_mode = thp.read_text() if thp.is_file() else "[never]"
    w, h = 2400, 1600
    for user_value, want_huge in ((None, "[never]" not in thp_mode), ("0", False)):
        if user_value is None:
            monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
        else:
            monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=" + user_value)
        c = world.client()
        c.segment(bytearray(image(w, h)), w, h, "RGBA8")
        pid = c.sidecar_pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        tunables = [e for e in environ if e.startswith(b"GLIBC_TUNABLES=")]
        assert tunables == [b"GLIBC_TUNABLES=glibc.malloc.hugetlb=" + (user_value or "1").encode()]
        assert (_anon_huge_kib(pid) > 0) == want_huge, thp_mode
        assert c.shutdown()
        for _ in range(200):  # the next round must start a fresh sidecar
            if not world.conn_path.exists():
                break
            time.sleep(0.05)


def test_sidecar_validation_errors_come_back_as_codes(world, transport):
    c = world.client()
    with pytest.raises(OffcutClientError) as exc:
        c.segment(b"\x00" * 12, 2, 2, "NOPE8")  # unknown to the client: the sidecar decides
    assert exc.value.code == BAD_REQUEST
    with pytest.raises(OffcutClientError) as exc:
        c.segment(b"\x00" * 16, 2, 2, "RGBA8", roi=(1, 1, 5, 5))
    assert exc.value.code == BAD_REQUEST
    with pytest.raises(OffcutClientError) as exc:
        c.segment(b"\x00" * 16, 2, 2, "RGBA8", model="no-such-model")
    assert exc.value.code == "model_missing"
    assert c.status()["pid"] == c.sidecar_pid  # still serving


def test_sidecar_errors_reach_the_user_in_the_editors_language(world, tmp_path, monkeypatch):
    """The real sidecar's error replies carry key and params; the client renders them in German.

    The language comes from the environment as an editor sets it (``LANGUAGE``); the catalog is
    the shipped one, compiled as ``offcut install`` does. An empty models folder makes every
    model "not installed".
    """
    locale = tmp_path / "locale"
    catalogs.write_locale(locale)
    monkeypatch.setenv("OFFCUT_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("LANGUAGE", "de")
    i18n.configure(None, str(locale))
    try:
        c = world.client()
        with pytest.raises(OffcutClientError) as exc:
            c.segment(b"\x00" * 16, 2, 2, "RGBA8", model="no-such-model")
        assert (exc.value.code, exc.value.key) == ("model_missing", "unknown_model")
        assert exc.value.message.startswith("Unknown model 'no-such-model'. Known models: ")
        assert exc.value.text().startswith("Unbekanntes Modell 'no-such-model'. Bekannte Modelle: ")
        assert exc.value.text().endswith("Führen Sie `offcut models list` aus.")

        with pytest.raises(OffcutClientError) as exc:
            c.segment(b"\x00" * 16, 2, 2, "RGBA8", model="u2netp")
        assert (exc.value.key, exc.value.params) == ("model_not_installed", {"model": "u2netp"})
        assert exc.value.message == (
            "Model u2netp is not installed: run `offcut models fetch u2netp`."
        )  # the sidecar writes English whatever its environment says
        assert exc.value.text() == (
            "Das Modell u2netp ist nicht installiert: Führen Sie `offcut models fetch u2netp` aus."
        )

        with pytest.raises(OffcutClientError) as exc:
            c.segment(b"\x00" * 12, 2, 2, "NOPE8")
        assert exc.value.key == "unsupported_format" and exc.value.params["format"] == "'NOPE8'"
        assert exc.value.text().startswith("Das Pixelformat 'NOPE8' wird nicht unterstützt")
    finally:
        i18n.configure()


@needs_model
def test_cancel_from_another_thread(world, transport):
    c = world.client()
    c.hello()
    w, h = 2000, 2000
    pixels = image(w, h)
    cancelled_at = []

    def on_progress(stage, fraction):
        if stage == "queued" and not cancelled_at:
            cancelled_at.append(stage)
            threading.Thread(target=c.cancel).start()

    with pytest.raises(OffcutClientError) as exc:
        c.segment(pixels, w, h, "RGBA8", refine=True, decontaminate=True,
                  on_progress=on_progress)  # fmt: skip
    assert exc.value.code == CANCELLED
    r = c.segment(image(32, 32), 32, 32, "RGBA8")  # the connection is still good
    assert len(r.mask) == 32 * 32
