"""Choosing a transport: pyzmq + msgpack when both import, else the built-in ZMTP and codec.

Both transports offer the same small interface so the client does not care which one runs:
``connect(host, port, timeout, username, password)`` (ZMTP PLAIN credentials, bytes),
``set_max_frame_bytes(limit)``, ``send``, ``wait``, ``recv``, ``close``, ``connected``.
``OFFCUT_CLIENT_TRANSPORT=builtin|pyzmq|auto`` forces a choice, which the tests use to run
everything over both paths.
"""

import contextlib
import os
import socket
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import codec
from .errors import INTERNAL, ConnectionLost, error, handshake_auth_failure
from .wire import DEFAULT_MAX_FRAME
from .zmtp import ZmtpDealer

ENV_TRANSPORT = "OFFCUT_CLIENT_TRANSPORT"
_ZERO_COPY_MIN = 64 << 10


class PyzmqDealer:
    """A pyzmq DEALER plus a socket monitor, so a dead sidecar is noticed at once.

    Plain ZeroMQ hides disconnects (it reconnects silently and queues); the monitor's
    DISCONNECTED / CLOSED / CONNECT_RETRIED / HANDSHAKE_FAILED_* events turn them into
    :class:`ConnectionLost`, like a TCP error in the built-in transport.

    ``max_frame_bytes`` becomes libzmq's ``MAXMSGSIZE``: a longer frame from the peer drops the
    connection (seen as DISCONNECTED) before libzmq allocates anything for it. libzmq reads the
    option only when a connection is made, so changing it on a live connection reconnects.
    """

    name = "pyzmq"

    def __init__(self, zmq: Any) -> None:
        self._zmq = zmq
        self._sock = None  # type: Any
        self._monitor = None  # type: Any
        self._lost = None  # type: Optional[ConnectionLost]
        self._args = None  # type: Optional[Tuple[str, int, float, bytes, bytes]]
        self._applied = 0  # the MAXMSGSIZE of the live connection
        self.max_frame_bytes = DEFAULT_MAX_FRAME

    def set_max_frame_bytes(self, limit: int) -> None:
        """Bound the frames accepted from now on; reconnects if the live connection differs."""
        self.max_frame_bytes = int(limit)
        if self._sock is not None and self._args is not None and self._applied != limit:
            self.close()
            self.connect(*self._args)

    def connect(
        self, host: str, port: int, timeout: float, username: bytes, password: bytes
    ) -> None:
        if not isinstance(username, bytes) or not isinstance(password, bytes):
            raise TypeError("the PLAIN user name and password must be bytes")
        if len(username) > 255 or len(password) > 255:
            raise ConnectionLost("the credentials are longer than ZMTP PLAIN allows (255 bytes)")
        zmq = self._zmq
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a lost sidecar means re-discovery, not retries
        sock.setsockopt(zmq.SNDTIMEO, int(max(timeout, 0.1) * 1000))
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        sock.setsockopt(zmq.PLAIN_USERNAME, username)
        sock.setsockopt(zmq.PLAIN_PASSWORD, password)
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
        self._args = (host, port, timeout, username, password)
        self._applied = self.max_frame_bytes
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
                lost = self._lost
                self.close()
                raise lost

    def _read_event(self) -> int:
        zmq = self._zmq
        frames = self._monitor.recv_multipart()
        event = int.from_bytes(frames[0][:2], "little")
        value = int.from_bytes(frames[0][2:6], "little")
        # The first reason wins: a failed handshake is followed by DISCONNECTED.
        if event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CLOSED):
            if self._lost is None:
                self._lost = ConnectionLost("connection to the sidecar refused", True)
        elif event == zmq.EVENT_DISCONNECTED:
            if self._lost is None:
                self._lost = ConnectionLost("the sidecar closed the connection")
        elif event == getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", -1):
            self._lost = handshake_auth_failure(value)  # value: the ZAP status code
        elif event == getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", -1) and value == getattr(
            zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1
        ):
            self._lost = ConnectionLost(
                "the sidecar does not use the PLAIN security mechanism: it is not a sidecar of "
                "this Offcut version (install the same version for both with `offcut install`)"
            )
        elif event & (
            getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
            | getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)
        ):
            self._lost = ConnectionLost(
                "the ZeroMQ handshake with the sidecar failed: is it a sidecar of this Offcut "
                "version? (install the same version for both with `offcut install`)"
            )
        return event

    def _check(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            self._read_event()
        if self._lost is not None:
            lost = self._lost
            self.close()
            raise lost
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
        raise error(INTERNAL, "bad_transport_variable", variable=ENV_TRANSPORT, value=repr(choice))
    if choice in ("auto", "pyzmq"):
        found = _import_pyzmq()
        if found is not None:
            zmq, codec_pair = found
            return PyzmqDealer(zmq), codec_pair
        if choice == "pyzmq":
            raise error(INTERNAL, "pyzmq_missing", variable=ENV_TRANSPORT)
    return ZmtpDealer(), (codec.packb, codec.unpackb)
