"""A small fake ``offcut serve``: a real pyzmq ROUTER speaking docs/protocol.md without models.

tests/unit/test_client_api.py starts it by path (``python tests/fakes/fake_sidecar.py``, which is
how a client spawns a sidecar command) or ``python -m tests.fakes.fake_sidecar``. It needs only the
standard library, pyzmq and msgpack, so it also runs where ``PYTHONPATH`` is unset.

It reads ``OFFCUT_RUNTIME_DIR`` like the real sidecar, and these switches from the environment:

- ``FAKE_MODE``: ``normal`` (the default); ``fail`` (exit 3 with two lines on stderr); ``hang``
  (sleep a minute, never ready); ``proto2`` (hello answers protocol 2); ``die_in_segment``,
  ``silent_segment``, ``hung_while_queued``, ``weird_error``, ``nil_id_error`` (segment misbehaves
  in that way after its first progress message).
- ``FAKE_MAX_MSG``: the ROUTER's ``MAXMSGSIZE`` and the limit hello reports.
- ``FAKE_SEG_DELAY``: seconds a segment "runs", answering cancel and status meanwhile.
- ``FAKE_QUIET``: no progress messages while it runs.
- ``FAKE_SLOW_START``: seconds between writing the connection file and the readiness line.
- ``FAKE_ZAP_OPEN``: the ZAP handler lets any PLAIN credentials in.
- ``FAKE_ZAP_STATUS``: the status code the ZAP handler answers with (default 200, or 400 for
  wrong credentials).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
import threading
import time
from typing import Any

import msgpack
import zmq

# The PLAIN user name the ZAP handler accepts, with the token as password: offcut.client.wire's
# PLAIN_USERNAME, written out because this runs without offcut on the path.
PLAIN_USER = b"offcut"

# Every environment switch above: a test clears them all before it sets the ones it wants.
SWITCHES = (
    "FAKE_MODE",
    "FAKE_MAX_MSG",
    "FAKE_SEG_DELAY",
    "FAKE_QUIET",
    "FAKE_SLOW_START",
    "FAKE_ZAP_OPEN",
    "FAKE_ZAP_STATUS",
)


class FakeSidecar:
    """One serving fake: its lock, token, ZAP handler, ROUTER and what it has seen."""

    def __init__(self, mode: str, rundir: str, conn_path: str, lock: Any) -> None:
        self.mode = mode
        self.conn_path = conn_path
        self.lock = lock  # held (flock) for the life of the process
        self.token = secrets.token_hex(32)
        self.ctx = zmq.Context()
        self.zap = self.ctx.socket(zmq.REP)  # the sidecar's ZAP handler: PLAIN user, the token
        self.zap.bind("inproc://zeromq.zap.01")
        self.zap_log: list[list[Any]] = []
        threading.Thread(target=self.authenticate, daemon=True).start()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.PLAIN_SERVER, 1)
        self.router.setsockopt(zmq.ZAP_DOMAIN, b"offcut")
        self.max_msg = int(os.environ.get("FAKE_MAX_MSG", "0"))
        if self.max_msg:
            self.router.setsockopt(zmq.MAXMSGSIZE, self.max_msg)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.cancelled: set[str] = set()
        self.log: list[dict] = []

    def authenticate(self) -> None:
        while True:
            req = self.zap.recv_multipart()
            creds = req[6:]
            ok = creds == [PLAIN_USER, self.token.encode()] or bool(os.environ.get("FAKE_ZAP_OPEN"))
            self.zap_log.append([creds[0].decode(), ok])
            status = os.environ.get("FAKE_ZAP_STATUS", "200" if ok else "400").encode()
            self.zap.send_multipart([b"1.0", req[1], status, b"", b"", b""])

    def write_connection_file(self) -> None:
        info = {
            "transport": "tcp",
            "ip": "127.0.0.1",
            "port": self.port,
            "token": self.token,
            "pid": os.getpid(),
            "protocol": 1,
            "sidecar_version": "fake",
            "started": time.time(),
        }
        tmp = self.conn_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, json.dumps(info).encode())
        os.close(fd)
        os.replace(tmp, self.conn_path)

    def send(self, ident: bytes, rid: Any, kind: str, frames: Any = (), **fields: Any) -> None:
        head = {"v": 1, "id": rid, "kind": kind}
        head.update(fields)
        self.router.send_multipart([ident, msgpack.packb(head, use_bin_type=True), *frames])

    def pump(self, wait_ms: int) -> None:
        """Handle control messages (cancel, status) while a segment 'runs'."""
        if self.router.poll(wait_ms):
            self.handle(*self.split(self.router.recv_multipart()))

    @staticmethod
    def split(msg: list[bytes]) -> tuple[bytes, dict, list[bytes]]:
        return msg[0], msgpack.unpackb(msg[1], raw=False), msg[2:]

    def serve(self) -> None:
        while True:
            self.handle(*self.split(self.router.recv_multipart()))

    def handle(self, ident: bytes, head: dict, bufs: list[bytes]) -> None:
        rid = head.get("id")
        self.log.append({k: v for k, v in head.items() if k != "token"})
        if head.get("token") != self.token:
            return self.send(ident, rid, "error", code="unauthorized", message="Wrong token.")
        if head.get("v") != 1:
            return self.send(ident, rid, "error", code="unsupported_version", message="v")
        op = head.get("op")
        if op == "hello":
            return self.send(
                ident,
                rid,
                "result",
                protocol=2 if self.mode == "proto2" else 1,
                sidecar_version="fake",
                default_model="fake",
                models=[{"name": "fake", "installed": True}],
                limits={
                    "max_pixels": 10**8,
                    "max_side": 65535,
                    "max_message_bytes": self.max_msg or 10**8 * 16 + 65536,
                    "queue_depth": 4,
                },
            )
        if op == "models":
            return self.send(ident, rid, "result", models=[{"name": "fake", "installed": True}])
        if op == "status":
            return self.send(
                ident, rid, "result", pid=os.getpid(), log=self.log[-20:], zap=self.zap_log
            )
        if op == "cancel":
            self.cancelled.add(head["target"])
            return self.send(ident, rid, "result", found=True)
        if op == "shutdown":
            self.send(ident, rid, "result")
            os.unlink(self.conn_path)
            sys.exit(0)
        if op == "segment":
            return self.segment(ident, rid, head, bufs)
        return self.send(ident, rid, "error", code="bad_request", message="Unknown op.")

    def segment(self, ident: bytes, rid: Any, head: dict, bufs: list[bytes]) -> None:
        img = head["image"]
        opts = head.get("options", {})
        self.send(ident, rid, "progress", stage="queued", progress=0.0)
        if self.mode == "die_in_segment":
            time.sleep(0.2)
            os._exit(9)
        if self.mode == "silent_segment":  # started, then nothing more (a stuck inference)
            return self.send(ident, rid, "progress", stage="inference", progress=0.1)
        if self.mode == "hung_while_queued":  # stops reading anything at all
            time.sleep(30)
            return None
        if self.mode == "weird_error":
            return self.send(ident, rid, "error", code="weird_code", message="Something odd.")
        if self.mode == "nil_id_error":
            return self.send(ident, None, "error", code="bad_request", message="Unparseable.")
        delay = float(os.environ.get("FAKE_SEG_DELAY", "0"))
        end = time.monotonic() + delay
        steps = 0
        while time.monotonic() < end:
            self.pump(20)
            if rid in self.cancelled:
                return self.send(ident, rid, "error", code="cancelled", message="Cancelled.")
            steps += 1
            if steps % 5 == 0 and not os.environ.get("FAKE_QUIET"):
                self.send(ident, rid, "progress", stage="inference", progress=0.5)
        self.pump(0)
        if rid in self.cancelled:
            return self.send(ident, rid, "error", code="cancelled", message="Cancelled.")
        roi = head.get("roi") or {"x": 0, "y": 0, "w": img["width"], "h": img["height"]}
        w, h = roi["w"], roi["h"]
        mask_info = {"width": w, "height": h, "format": "GRAY8", "x": roi["x"], "y": roi["y"]}
        frames = [bytes([len(bufs[0]) % 256]) * (w * h)]
        fields = {
            "mask": mask_info,
            "model": head.get("model") or "fake",
            "sha256": "0" * 64,
            "provider": "CPUExecutionProvider",
            "timings": {"inference": 0.0},
            "echo": {k: v for k, v in head.items() if k != "token"},
            "buffers": [len(b) for b in bufs],
        }
        if opts.get("cutout"):
            fields["cutout"] = dict(mask_info, format="RGBA8")
            frames.append(b"\x01" * (w * h * 4))
        return self.send(ident, rid, "result", frames, **fields)


def report_the_running_one(conn_path: str) -> None:
    """Another fake holds the lock: print its readiness line, as ``offcut serve`` does, and exit."""
    for _ in range(200):
        try:
            with open(conn_path) as f:
                info = json.load(f)
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    ready = {
        "ready": True,
        "pid": info["pid"],
        "port": info["port"],
        "protocol": 1,
        "already_running": True,
    }
    print(json.dumps(ready), flush=True)
    sys.exit(0)


def start() -> FakeSidecar:
    """Everything up to the readiness line; the caller keeps the fake (and its sockets) alive."""
    mode = os.environ.get("FAKE_MODE", "normal")
    rundir = os.environ["OFFCUT_RUNTIME_DIR"]
    os.makedirs(rundir, mode=0o700, exist_ok=True)
    conn_path = os.path.join(rundir, "sidecar.json")
    print("fake sidecar starting", mode, file=sys.stderr, flush=True)
    if mode == "fail":
        print("boom: cannot load things", file=sys.stderr, flush=True)
        print("second line of trouble", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(60)
        sys.exit(0)
    lock = open(os.path.join(rundir, "sidecar.lock"), "w")  # noqa: SIM115  (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        report_the_running_one(conn_path)
    fake = FakeSidecar(mode, rundir, conn_path, lock)
    fake.write_connection_file()
    if os.environ.get("FAKE_SLOW_START"):
        time.sleep(float(os.environ["FAKE_SLOW_START"]))
    ready = {
        "ready": True,
        "pid": os.getpid(),
        "port": fake.port,
        "protocol": 1,
        "connection_file": conn_path,
        "already_running": False,
    }
    print(json.dumps(ready), flush=True)
    print("serving", file=sys.stderr, flush=True)
    return fake


if __name__ == "__main__":
    # A module global, as when this was one flat script: the context and its sockets then live
    # until the interpreter exits (shutdown's sys.exit), and are never closed under the ZAP thread.
    FAKE = start()
    FAKE.serve()
