"""Shared fixtures: a real ``offcut serve`` process with the real u2netp model.

The process itself is tests/harness.py's ``Sidecar`` (bench/ starts it too); ``Sidecar``,
``sidecar_env``, ``ROOT`` and ``SIDECAR_SRC`` are importable from here as before.

Tests never download anything: `.ci/test` fetches u2netp once with ``offcut models fetch u2netp``
into the models directory named by ``OFFCUT_MODELS_DIR`` (default: the user's), and the sidecar
fixture points at it. Under CI a missing model is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.harness import ROOT, SIDECAR_SRC, Sidecar
from tests.harness import sidecar_env as sidecar_env  # re-exported for the tests

if str(SIDECAR_SRC) not in sys.path:
    sys.path.insert(0, str(SIDECAR_SRC))

from offcut import paths
from offcut.client.wire import PLAIN_USERNAME

MODELS_DIR = Path(os.environ.get("OFFCUT_MODELS_DIR") or paths.models_dir())
SHARED_EVAL = ROOT.parent / "shared" / "eval"


def need(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing locally; fail under CI, where nothing may be skipped."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    need(
        (MODELS_DIR / "u2netp.onnx").is_file(),
        f"u2netp is not installed in {MODELS_DIR}: run `offcut models fetch u2netp`",
    )
    return MODELS_DIR


SLOW_MODEL = "isnet-general-use-fp16"


@pytest.fixture(scope="session")
def slow_model(models_dir: Path) -> str:
    """A model whose inference lasts seconds, so a cancel sent mid-run always lands mid-run.

    u2netp finishes a megapixel in a fraction of a second on a fast CI machine, sooner than a
    cancel can travel through an editor's quit path; IS-Net takes seconds on any CPU.
    """
    need(
        (models_dir / f"{SLOW_MODEL}.onnx").is_file(),
        f"{SLOW_MODEL} is not installed in {models_dir}: run `offcut models fetch {SLOW_MODEL}`",
    )
    return SLOW_MODEL


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Sidecar]:
    runtime = tmp_path_factory.mktemp("runtime")
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"])
    yield s
    s.stop()
    violations = [ln for ln in s.stderr_lines if "audit_violation" in ln]
    assert not violations, violations


@pytest.fixture
def own_sidecar(tmp_path: Path, models_dir: Path) -> Iterator[Sidecar]:
    """A sidecar of this test's own (fresh runtime dir, no idle exit), for tests that tamper
    with it, kill it or attack it, so nothing they do reaches another test."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"])
    yield s
    s.stop()


class RawClient:
    """A bare pyzmq DEALER speaking protocol v1 by hand, for tests that must send bad input."""

    def __init__(self, port: int, token: str, routing_id: bytes | None = None) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:  # for the tests of routing-id hijacking
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        # The handshake's PLAIN credentials: the user name and the same token (docs/protocol.md).
        self.sock.plain_username = PLAIN_USERNAME
        self.sock.plain_password = token.encode() if isinstance(token, str) else b""
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.token = token
        self.n = 0

    def send(self, header: dict | bytes, *buffers: bytes) -> str:
        if isinstance(header, dict):
            header = dict(header)
            header.setdefault("v", 1)
            header.setdefault("token", self.token)
            if "id" not in header:
                self.n += 1
                header["id"] = f"r{self.n}"
            rid = header["id"]
            frame = msgpack.packb(header, use_bin_type=True)
        else:
            rid, frame = "", header
        self.sock.send_multipart([frame, *buffers])
        return rid

    def recv(self, timeout: float = 30.0) -> tuple[dict, list[bytes]]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the sidecar")
        frames = self.sock.recv_multipart()
        return msgpack.unpackb(frames[0], raw=False), frames[1:]

    def final(self, timeout: float = 60.0) -> tuple[dict, list[bytes], list[dict]]:
        """Read until the result or error; return it, its buffers and the progress seen."""
        progress = []
        deadline = time.monotonic() + timeout
        while True:
            header, bufs = self.recv(max(0.1, deadline - time.monotonic()))
            if header["kind"] == "progress":
                progress.append(header)
                continue
            return header, bufs, progress

    def call(
        self, header: dict, *buffers: bytes, timeout: float = 60.0
    ) -> tuple[dict, list[bytes]]:
        self.send(header, *buffers)
        h, b, _ = self.final(timeout)
        return h, b

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def raw(sidecar: Sidecar) -> Iterator[RawClient]:
    c = RawClient(sidecar.port, sidecar.token)
    yield c
    c.close()


@pytest.fixture(params=["builtin", "pyzmq"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a client test over each transport (``OFFCUT_CLIENT_TRANSPORT``)."""
    monkeypatch.setenv("OFFCUT_CLIENT_TRANSPORT", request.param)
    return str(request.param)


OTHER_UID = 65534  # nobody: the second local user account of the attack tests


class OtherUser:
    """Runs ``tests/integration/attacker.py`` as another local user, with the standard library.

    Needs root (to switch user) and an interpreter that user may execute; ``sys.executable`` often
    lives under a home directory only its owner can enter, so the system one is tried first.
    """

    SCRIPT = ROOT / "tests" / "integration" / "attacker.py"

    def __init__(self, python: str) -> None:
        self.python = python
        self.source = self.SCRIPT.read_text()

    def popen(self, *args: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [self.python, "-", *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            user=OTHER_UID,
            group=OTHER_UID,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert proc.stdin is not None
        proc.stdin.write(self.source)
        proc.stdin.close()
        proc.stdin = None  # the script is in; communicate() must not touch stdin again
        return proc

    @staticmethod
    def result(proc: subprocess.Popen[str], timeout: float = 120.0) -> dict:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"the attack itself failed: {err[-2000:]}"
        return json.loads(out.strip().splitlines()[-1])

    def run(self, *args: object, timeout: float = 120.0) -> dict:
        return self.result(self.popen(*args), timeout)


@pytest.fixture(scope="session")
def other_user() -> OtherUser:
    need(os.geteuid() == 0, "attacks from a second user account need root to switch user")
    for python in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        probe = subprocess.run(
            [python, "-c", "import os; print(os.getuid())"],
            capture_output=True,
            text=True,
            user=OTHER_UID,
            group=OTHER_UID,
            extra_groups=[],
            cwd="/",
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(OTHER_UID):
            return OtherUser(python)
    need(False, f"no Python interpreter that uid {OTHER_UID} can run (tried /usr/bin/python3)")
    raise AssertionError("unreachable")


def sample_rgba(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A synthetic RGBA8 photo-like image: a bright disc on a textured background."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) < (min(width, height) / 3) ** 2
    img = rng.integers(0, 80, size=(height, width, 4), dtype=np.uint8)
    img[disc] = (230, 120, 40, 255)
    img[..., 3] = 255
    return img.tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of ``width`` x ``height``: 17.5 kB for 12000x12000, which PIL
    decodes to 144 MB and the old pipeline inflated to 5.4 GB (RGBA copies, model tensors)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = bytes(1 + (width + 7) // 8) * height  # filter byte 0, then packed bits, per row
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )
