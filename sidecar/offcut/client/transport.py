"""Choosing a transport: pyzmq + msgpack when both import, else the built-in ZMTP and codec.

Both transports offer the same small interface (connect, send, wait, recv, close) so the client
does not care which one runs. ``OFFCUT_CLIENT_TRANSPORT=builtin|pyzmq|auto`` forces a choice,
which the tests use to run everything over both paths.
"""

import contextlib
import os
import socket
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import codec
from .errors import INTERNAL, ConnectionLost, CredentialsRefused, OffcutClientError
from .zmtp import DEFAULT_MAX_FRAME, ZmtpDealer

ENV_TRANSPORT = "OFFCUT_CLIENT_TRANSPORT"
#: The ZMTP PLAIN user name; the password is the connection file's token (docs/protocol.md).
PLAIN_USERNAME = b"offcut"
_ZERO_COPY_MIN = 64 << 10


class PyzmqDealer:
    """A pyzmq DEALER plus a socket monitor, so a dead sidecar is noticed at once.

    Plain ZeroMQ hides disconnects (it reconnects silently and queues); the monitor's
    DISCONNECTED / CLOSED / CONNECT_RETRIED events turn them into :class:`ConnectionLost`,
    like a TCP error in the built-in transport.
    """

    name = "pyzmq"

    def __init__(self, zmq: Any) -> None:
        self._zmq = zmq
        self._sock = None  # type: Any
        self._monitor = None  # type: Any
        self._lost = None  # type: Optional[str]
        self._refused = False
        self._auth_refused = False
        self.max_frame_bytes = DEFAULT_MAX_FRAME

    def connect(
        self, host: str, port: int, timeout: float, username: bytes = b"", password: bytes = b""
    ) -> None:
        zmq = self._zmq
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        if password:
            sock.setsockopt(zmq.PLAIN_USERNAME, username)
            sock.setsockopt(zmq.PLAIN_PASSWORD, password)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a lost sidecar means re-discovery, not retries
        # A frame larger than the protocol allows ends the connection before it is buffered.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        sock.setsockopt(zmq.SNDTIMEO, int(max(timeout, 0.1) * 1000))
        events = (
            zmq.EVENT_CONNECTED
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_CLOSED
            | zmq.EVENT_CONNECT_RETRIED
            | getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)
            | getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
            | getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)
            | getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0)
        )
        self._monitor = sock.get_monitor_socket(events)
        self._sock = sock
        self._lost = None
        self._refused = False
        self._auth_refused = False
        sock.connect("tcp://%s:%d" % (host, port))
        want = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0) or zmq.EVENT_CONNECTED
        deadline = _now() + timeout
        while True:
            left = deadline - _now()
            if left <= 0 or not self._monitor.poll(int(left * 1000)):
                self.close()
                raise ConnectionLost("connecting to %s:%d timed out" % (host, port))
            event = self._read_event()
            if event == want:
                return
            if self._lost is not None:
                reason, refused = self._lost, self._refused
                self.close()
                if self._auth_refused:
                    raise CredentialsRefused(reason)
                raise ConnectionLost(reason, refused)

    def _read_event(self) -> int:
        zmq = self._zmq
        frames = self._monitor.recv_multipart()
        event = int.from_bytes(frames[0][:2], "little")
        if event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CLOSED):
            if self._lost is None:
                self._lost = "connection to the sidecar refused"
                self._refused = True
        elif event == zmq.EVENT_DISCONNECTED:
            self._lost = "the sidecar closed the connection"
        elif event == getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", -1):
            self._lost = "the sidecar refused the credentials"
            self._auth_refused = True
        elif event & (
            getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
            | getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)
        ):
            self._lost = "the ZeroMQ handshake with the sidecar failed"
        return event

    def _check(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            self._read_event()
        if self._lost is not None:
            reason = self._lost
            self.close()
            raise ConnectionLost(reason)
        if self._sock is None:
            raise ConnectionLost("not connected")

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, frames: Sequence[Any]) -> None:
        self._check()
        zmq = self._zmq
        last = len(frames) - 1
        try:
            for index, frame in enumerate(frames):
                # Pixel buffers go without a copy; libzmq keeps a reference until it is sent.
                self._sock.send(
                    frame, zmq.SNDMORE if index < last else 0, copy=len(frame) < _ZERO_COPY_MIN
                )
        except self._zmq.Again as exc:
            self.close()
            raise ConnectionLost("the sidecar is not accepting messages (send timed out)") from exc
        except self._zmq.ZMQError as exc:
            self.close()
            raise ConnectionLost("sending to the sidecar failed: %s" % exc) from exc

    def wait(self, timeout: Optional[float], wakeup: Optional[socket.socket] = None) -> bool:
        self._check()
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        if wakeup is not None:
            poller.register(wakeup.fileno(), zmq.POLLIN)
        ready = dict(poller.poll(None if timeout is None else int(timeout * 1000)))
        if self._sock in ready:
            return True
        self._check()
        return False

    def recv(self) -> List[Any]:
        self._check()
        try:
            return self._sock.recv_multipart()
        except self._zmq.ZMQError as exc:
            self.close()
            raise ConnectionLost("receiving from the sidecar failed: %s" % exc) from exc

    def close(self) -> None:
        sock, self._sock = self._sock, None
        monitor, self._monitor = self._monitor, None
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.disable_monitor()
            sock.close(0)
        if monitor is not None:
            monitor.close(0)


def _now() -> float:
    import time

    return time.monotonic()


Codec = Tuple[Callable[[Any], bytes], Callable[[Any], Any]]


def _import_pyzmq() -> Optional[Tuple[Any, Codec]]:
    try:
        import msgpack
        import zmq
    except ImportError:
        return None

    def pack(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def unpack(data: Any) -> Any:
        return msgpack.unpackb(data, raw=False)

    return zmq, (pack, unpack)


def make_transport(choice: Optional[str] = None) -> Tuple[Any, Codec]:
    """Return ``(transport, (pack, unpack))`` for ``choice`` or ``$OFFCUT_CLIENT_TRANSPORT``."""
    choice = (choice or os.environ.get(ENV_TRANSPORT) or "auto").strip().lower()
    if choice not in ("auto", "pyzmq", "builtin"):
        raise OffcutClientError(
            INTERNAL, "%s must be auto, pyzmq or builtin, not %r" % (ENV_TRANSPORT, choice)
        )
    if choice in ("auto", "pyzmq"):
        found = _import_pyzmq()
        if found is not None:
            zmq, codec_pair = found
            return PyzmqDealer(zmq), codec_pair
        if choice == "pyzmq":
            raise OffcutClientError(
                INTERNAL, "%s=pyzmq but pyzmq or msgpack cannot be imported" % ENV_TRANSPORT
            )
    return ZmtpDealer(), (codec.packb, codec.unpackb)
