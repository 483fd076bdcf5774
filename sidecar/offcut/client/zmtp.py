"""A minimal ZeroMQ DEALER over plain TCP (ZMTP 3.0, PLAIN mechanism), for editors without pyzmq.

Only what talking to the sidecar's ROUTER needs (https://rfc.zeromq.org/spec/23/ and /24/): the
64-byte greeting, the PLAIN handshake (HELLO with the user name and the token, the server's
WELCOME, INITIATE with ``Socket-Type: DEALER``, the server's READY), the ERROR command, PING →
PONG (ZMTP 3.1 peers with heartbeats), and multipart messages with short and long frames. Frame
lengths a peer declares are bounded before anything is allocated: a hostile listener must not
make the editor reserve gigabytes.

Large frames matter (pixel buffers of hundreds of MB): they are sent from a memoryview, never
joined with their header, and received straight into one preallocated bytearray. On POSIX a large
frame moves in blocking system calls bounded by ``SO_SNDTIMEO``/``SO_RCVTIMEO``: the socket's
Python timeout would split it into hundreds of poll + send pairs, and every one of them has to win
the GIL back, which another busy Python thread (an editor's UI, the bench) can hold for up to the
5 ms switch interval each time: 256 MB took 0.8-1.3 s instead of 0.06 s next to such a thread.
"""

import contextlib
import os
import select
import socket
import struct
import sys
from typing import Any, List, Optional, Sequence

from .errors import ConnectionLost, CredentialsRefused

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"PLAIN".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
#: Frames a peer may declare before its READY: only short commands are legal in the handshake.
HANDSHAKE_MAX_FRAME = 64 << 10
#: The largest frame of protocol v1 under the sidecar's default limits (an RGBAF32 image of
#: 100,000,000 pixels plus a 64 KiB header); the client lowers it to what ``hello`` declares.
DEFAULT_MAX_FRAME = 100_000_000 * 16 + (64 << 10)

_MORE = 0x01
_LONG = 0x02
_COMMAND = 0x04

_Q = struct.Struct(">Q")
_I = struct.Struct(">I")

_SEND_CHUNK = 4 << 20  # a bounded write keeps a slow-but-alive peer from tripping one deadline
_RECV_CHUNK = 1 << 20
_SMALL = 64 << 10  # frames up to this size are joined with their header into one write
_MSG_WAITALL = getattr(socket, "MSG_WAITALL", 0)

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_SO_NOSIGPIPE = 0x1022  # macOS/BSD: fail writes with EPIPE instead of raising SIGPIPE


class _Refused(ConnectionLost):
    """The peer answered, but is not a ROUTER we can talk to."""


def _encode_command(name: bytes, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name + body
    if len(payload) > 255:
        return bytes([_COMMAND | _LONG]) + _Q.pack(len(payload)) + payload
    return bytes([_COMMAND, len(payload)]) + payload


def _encode_property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + _I.pack(len(value)) + value


def _parse_properties(data: bytes) -> dict:
    props = {}
    pos = 0
    while pos < len(data):
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if pos + 4 > len(data):
            raise ConnectionLost("the sidecar sent a malformed ZMTP READY command")
        (vlen,) = _I.unpack_from(data, pos)
        pos += 4
        value = data[pos : pos + vlen]
        if len(value) != vlen:
            raise ConnectionLost("the sidecar sent a malformed ZMTP READY command")
        pos += vlen
        props[name.decode("ascii", "replace").lower()] = value
    return props


class ZmtpDealer:
    """One DEALER connection to one ROUTER; not thread-safe (the client serialises its use)."""

    name = "builtin"

    def __init__(self) -> None:
        self._sock = None  # type: Optional[socket.socket]
        self._rbuf = bytearray()
        self.io_timeout = 30.0  # the longest a half-sent or half-received frame may stall
        self.peer_socket_type = ""
        self.max_frame_bytes = DEFAULT_MAX_FRAME  # the client lowers it to the sidecar's limit
        self._handshaking = True

    # -- connection -------------------------------------------------------------------------

    def connect(
        self, host: str, port: int, timeout: float, username: bytes = b"", password: bytes = b""
    ) -> None:
        """Open TCP, greet, authenticate with PLAIN; raise :class:`ConnectionLost` on failure."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError as exc:
            raise ConnectionLost("connection to %s:%d refused" % (host, port), True) from exc
        except socket.timeout as exc:
            raise ConnectionLost("connecting to %s:%d timed out" % (host, port)) from exc
        except OSError as exc:
            raise ConnectionLost("cannot connect to %s:%d: %s" % (host, port, exc), True) from exc
        self._sock = sock
        self._rbuf = bytearray()
        self._handshaking = True
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sys.platform == "darwin":
                sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
            sock.settimeout(timeout)
            hello = bytes([len(username)]) + username + bytes([len(password)]) + password
            self._write(_GREETING + _encode_command(b"HELLO", hello))
            try:
                self._handshake()
            except ConnectionLost as exc:
                if isinstance(exc, (_Refused, CredentialsRefused)) or exc.peer_error is not None:
                    raise
                raise ConnectionLost(
                    "the ZeroMQ handshake failed (%s): is the port a ZMTP 3 socket with the "
                    "PLAIN mechanism?" % exc.reason
                ) from exc
            sock.settimeout(self.io_timeout)
            self._handshaking = False
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> None:
        sig = self._read_exact(10)
        if sig[0] != 0xFF or not sig[9] & 0x01:
            raise _Refused("the peer is not a ZeroMQ socket (bad ZMTP signature)")
        major = self._read_exact(1)[0]
        if major < 3:
            raise _Refused("the peer speaks ZMTP %d; ZMTP 3 is needed" % major)
        rest = self._read_exact(53)
        mechanism = bytes(rest[1:21]).rstrip(b"\x00")
        if mechanism != b"PLAIN":
            raise _Refused(
                "the peer wants the %s security mechanism; the sidecar speaks PLAIN"
                % mechanism.decode("ascii", "replace")
            )
        welcomed = False
        while True:
            flags, body = self._read_frame()
            if not flags & _COMMAND:
                raise _Refused("the peer sent a message before its READY command")
            name, data = self._split_command(body)
            if name not in (b"WELCOME", b"READY", b"PING", b"PONG", b"ERROR"):
                # libzmq 4.3 sends its ZAP refusal as a mangled ERROR command (the name's length
                # byte is lost): anything else here means the handshake was refused.
                status = bytes(body[-3:]).decode("ascii", "replace")
                self.close()
                raise CredentialsRefused("the sidecar refused the credentials (%s)" % status)
            if name == b"WELCOME" and not welcomed:
                welcomed = True
                props = _encode_property(b"Socket-Type", b"DEALER")
                self._write(_encode_command(b"INITIATE", props))
                continue
            if name == b"READY":
                if not welcomed:
                    raise _Refused("the peer skipped the PLAIN WELCOME")
                props = _parse_properties(data)
                self.peer_socket_type = props.get("socket-type", b"").decode("ascii", "replace")
                if self.peer_socket_type not in ("ROUTER", "DEALER"):
                    raise _Refused(
                        "the peer is a %s socket; a DEALER needs a ROUTER" % self.peer_socket_type
                    )
                return
            self._handle_command(name, data)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    # -- sending ----------------------------------------------------------------------------

    def send(self, frames: Sequence[Any]) -> None:
        """Send one multipart message; buffers are written from memoryviews without copies."""
        if self._sock is None:
            raise ConnectionLost("not connected")
        last = len(frames) - 1
        pending = bytearray()
        for index, frame in enumerate(frames):
            view = memoryview(frame).cast("B") if not isinstance(frame, bytes) else frame
            size = len(view)
            flags = 0 if index == last else _MORE
            if size > 255:
                pending += bytes([flags | _LONG]) + _Q.pack(size)
            else:
                pending += bytes([flags, size])
            if size <= _SMALL:
                pending += view
            else:
                self._write(pending)
                pending = bytearray()
                self._write(view)
        if pending:
            self._write(pending)

    @contextlib.contextmanager
    def _blocking(self, sock: socket.socket) -> Any:
        """Blocking mode with the kernel's own ``io_timeout``s, for one large frame (POSIX).

        Yields False, changing nothing, where the timeouts cannot be set: the caller then uses
        the socket's Python timeout as before. Whatever happens, the Python timeout is back after.
        """
        tv = struct.pack("ll", max(1, int(self.io_timeout)), 0)  # struct timeval, whole seconds
        try:
            if os.name != "posix":
                raise OSError("SO_SNDTIMEO takes milliseconds here")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        except (OSError, AttributeError):
            yield False
            return
        sock.settimeout(None)
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.io_timeout)

    def _write(self, data: Any) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        view = memoryview(data)
        try:
            if len(view) > _SMALL:
                with self._blocking(sock) as blocking:
                    while blocking and view:
                        view = view[sock.send(view, _MSG_NOSIGNAL) :]
                if not view:
                    return
            for start in range(0, len(view), _SEND_CHUNK):
                chunk = view[start : start + _SEND_CHUNK]
                while chunk:
                    sent = sock.send(chunk, _MSG_NOSIGNAL)
                    chunk = chunk[sent:]
        except (socket.timeout, BlockingIOError) as exc:  # BlockingIOError: SO_SNDTIMEO ran out
            self.close()
            raise ConnectionLost("the sidecar stopped reading (send timed out)") from exc
        except OSError as exc:
            self.close()
            raise ConnectionLost("the connection to the sidecar broke: %s" % exc) from exc

    # -- receiving --------------------------------------------------------------------------

    def wait(self, timeout: Optional[float], wakeup: Optional[socket.socket] = None) -> bool:
        """Block until a message may be read (True) or ``timeout``/``wakeup`` fired (False)."""
        if self._sock is None:
            raise ConnectionLost("not connected")
        if self._rbuf:
            return True
        fds = [self._sock] + ([wakeup] if wakeup is not None else [])
        readable, _, _ = select.select(fds, [], [], timeout)
        return self._sock in readable

    def recv(self) -> Optional[List[Any]]:
        """Read one whole message: small frames as ``bytes``, large ones as ``bytearray``.

        Returns None when what was readable were only commands (a heartbeat PING), so a caller
        woken by :meth:`wait` never blocks on a message that is not coming.
        """
        frames = []  # type: List[Any]
        while True:
            flags, body = self._read_frame()
            if flags & _COMMAND:
                name, data = self._split_command(body)
                self._handle_command(name, data)
                if not frames and not self._readable_now():
                    return None
                continue
            frames.append(body)
            if not flags & _MORE:
                return frames

    def _readable_now(self) -> bool:
        if self._rbuf:
            return True
        if self._sock is None:
            raise ConnectionLost("not connected")
        readable, _, _ = select.select([self._sock], [], [], 0)
        return bool(readable)

    def _split_command(self, body: Any) -> tuple:
        body = bytes(body)
        if not body:
            raise ConnectionLost("the peer sent an empty ZMTP command")
        n = body[0]
        return body[1 : 1 + n], body[1 + n :]

    def _handle_command(self, name: bytes, data: bytes) -> None:
        if name == b"ERROR":
            reason = data[1 : 1 + data[0]].decode("utf-8", "replace") if data else ""
            self.close()
            if self._handshaking:  # an ERROR during the PLAIN handshake: the credentials
                raise CredentialsRefused(
                    "the sidecar refused the credentials: %s" % reason, False, reason
                )
            raise ConnectionLost("the sidecar refused the connection: %s" % reason, False, reason)
        if name == b"PING":
            # PING: TTL (2 bytes) then a context echoed back in PONG.
            self._write(_encode_command(b"PONG", data[2:]))
        # READY repeated, PONG, SUBSCRIBE... : nothing for a DEALER to do.

    def _read_frame(self) -> tuple:
        flags = self._read_exact(1)[0]
        if flags & _LONG:
            (size,) = _Q.unpack(self._read_exact(8))
        else:
            size = self._read_exact(1)[0]
        limit = HANDSHAKE_MAX_FRAME if self._handshaking else self.max_frame_bytes
        if size > limit:
            self.close()
            raise ConnectionLost(
                "the peer announced a frame of %d bytes, more than the %d allowed here"
                % (size, limit)
            )
        if size <= _SMALL:
            return flags, bytes(self._read_exact(size))
        body = bytearray(size)
        self._read_into(memoryview(body))
        return flags, body

    def _fill(self, want: int) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        while len(self._rbuf) < want:
            data = self._recv_checked(sock.recv, max(_RECV_CHUNK, want - len(self._rbuf)))
            self._rbuf += data

    def _recv_checked(self, call: Any, arg: Any) -> Any:
        """One ``recv``/``recv_into``, with every way it can fail turned into ``ConnectionLost``
        (the socket is closed first): a stall, a broken connection, or an orderly close."""
        try:
            got = call(arg)
        except (socket.timeout, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO ran out
            self.close()
            raise ConnectionLost("the sidecar stalled in the middle of a message") from exc
        except OSError as exc:
            self.close()
            raise ConnectionLost("the connection to the sidecar broke: %s" % exc) from exc
        if not got:
            self.close()
            raise ConnectionLost("the sidecar closed the connection")
        return got

    def _read_exact(self, n: int) -> bytearray:
        self._fill(n)
        data = self._rbuf[:n]
        del self._rbuf[:n]
        return data

    def _read_into(self, view: memoryview) -> None:
        """Fill ``view`` from what is buffered, then straight from the socket (no extra copy)."""
        have = min(len(self._rbuf), len(view))
        view[:have] = self._rbuf[:have]
        del self._rbuf[:have]
        pos = have
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        if _MSG_WAITALL and len(view) - pos > _SMALL:
            with self._blocking(sock) as blocking:
                while blocking and pos < len(view):
                    rest = view[pos:]
                    pos += self._recv_checked(lambda v: sock.recv_into(v, 0, _MSG_WAITALL), rest)
        while pos < len(view):
            if self._sock is None:
                raise ConnectionLost("not connected")
            pos += self._recv_checked(sock.recv_into, view[pos : pos + _RECV_CHUNK * 16])
