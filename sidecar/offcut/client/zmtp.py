"""A minimal ZeroMQ DEALER over plain TCP (ZMTP 3, PLAIN mechanism), for editors without pyzmq.

Only what talking to the sidecar's ROUTER needs (https://rfc.zeromq.org/spec/23/ and, for the
credentials, https://rfc.zeromq.org/spec/24/): the 64-byte greeting, HELLO with the user name and
password, the peer's WELCOME, INITIATE with ``Socket-Type: DEALER``, the peer's READY, the ERROR
command, PING → PONG (ZMTP 3.1 peers with heartbeats), and multipart messages with short and long
frames. What it writes during the handshake is byte for byte what libzmq 4.3 writes for a DEALER
with ``plain_username``/``plain_password`` (the tests compare the two).

The peer's frame lengths are not trusted: a frame longer than ``max_frame_bytes`` (before READY:
``HANDSHAKE_MAX_FRAME``) ends the connection before anything is allocated for it.

Large frames matter (pixel buffers of hundreds of MB): they are sent from a memoryview, never
joined with their header, and received straight into one preallocated bytearray. A large
frame moves in blocking system calls bounded by ``SO_SNDTIMEO``/``SO_RCVTIMEO``: the socket's
Python timeout would split it into hundreds of poll + send pairs, and every one of them has to win
the GIL back, which another busy Python thread (an editor's UI, the bench) can hold for up to the
switch interval each time, which made large sends many times slower next to such a thread
(docs/benchmarks.md, tuning log).
"""

import contextlib
import select
import socket
import struct
import sys
from typing import Any, List, Optional, Sequence

from .errors import ConnectionLost, handshake_auth_failure
from .wire import DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME

# As libzmq writes it: the padding's last byte is 1 (a ZMTP 1.0 peer reads a 1-byte identity),
# version 3.1, mechanism PLAIN, as-server 0, filler.
_SIGNATURE = b"\xff" + b"\x00" * 7 + b"\x01\x7f"
_GREETING = _SIGNATURE + b"\x03\x01" + b"PLAIN".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
# libzmq's PLAIN server spells its ERROR command "\x05ERROR" in C, which reads as "\x5e" "RROR"
# (a hex escape takes every hex digit that follows), so what arrives is "^RROR" with no name
# length; its own client expects exactly that. Both spellings are accepted.
_LIBZMQ_PLAIN_ERROR = b"\x5eRROR"

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


def kernel_timeout(seconds: float, platform: str) -> bytes:
    """``SO_SNDTIMEO``/``SO_RCVTIMEO``'s value: a ``struct timeval`` on POSIX (whole seconds, at
    least 1; ``long`` fields, padded alike on Linux and macOS), a ``DWORD`` of milliseconds on
    Windows, where a timeval would be read as a few milliseconds and end every large transfer.
    """
    if platform == "win32":
        return struct.pack("=I", min(max(1, int(seconds * 1000)), 0xFFFFFFFF))
    return struct.pack("ll", max(1, int(seconds)), 0)


class _Refused(ConnectionLost):
    """The peer answered, but is not a ROUTER we can talk to."""


def _encode_command(name: bytes, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name + body
    if len(payload) > 255:
        return bytes([_COMMAND | _LONG]) + _Q.pack(len(payload)) + payload
    return bytes([_COMMAND, len(payload)]) + payload


def _encode_property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + _I.pack(len(value)) + value


def _plain_hello(username: bytes, password: bytes) -> bytes:
    """The PLAIN HELLO command (RFC 24): each credential with a one-byte length."""
    if not isinstance(username, bytes) or not isinstance(password, bytes):
        raise TypeError("the PLAIN user name and password must be bytes")
    if len(username) > 255 or len(password) > 255:
        raise ConnectionLost("the credentials are longer than ZMTP PLAIN allows (255 bytes)")
    return _encode_command(
        b"HELLO", bytes([len(username)]) + username + bytes([len(password)]) + password
    )


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
        #: Frames from the peer longer than this end the connection (``ConnectionLost``)
        #: before anything is allocated; the client sets the sidecar's declared limit.
        self.max_frame_bytes = DEFAULT_MAX_FRAME

    def set_max_frame_bytes(self, limit: int) -> None:
        """Bound the frames accepted from now on (takes effect at once)."""
        self.max_frame_bytes = int(limit)

    # -- connection -------------------------------------------------------------------------

    def connect(
        self, host: str, port: int, timeout: float, username: bytes, password: bytes
    ) -> None:
        """Open TCP and do the PLAIN handshake; raise :class:`ConnectionLost` on failure
        (:class:`~.errors.CredentialsRefused` when the peer refuses the credentials)."""
        hello = _plain_hello(username, password)
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
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sys.platform == "darwin":
                sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
            sock.settimeout(timeout)
            try:
                self._handshake(hello)
            except ConnectionLost as exc:
                if isinstance(exc, _Refused) or exc.peer_error is not None:
                    raise
                raise ConnectionLost(
                    "the ZeroMQ handshake failed (%s): is the port a sidecar of this Offcut "
                    "version? (install the same version for both with `offcut install`)"
                    % exc.reason
                ) from exc
            sock.settimeout(self.io_timeout)
        except BaseException:
            self.close()
            raise

    def _handshake(self, hello: bytes) -> None:
        # Greetings in two steps, as libzmq does: signature and major version, then the rest
        # once the peer's have come. libzmq sends its mechanism after seeing our major version
        # and closes as soon as it sees a mechanism it does not use: sent at once, ours would
        # make a NULL-mechanism sidecar hang up before telling us its own.
        self._write(_GREETING[:11])
        sig = self._read_exact(10)
        if sig[0] != 0xFF or not sig[9] & 0x01:
            raise _Refused("the peer is not a ZeroMQ socket (bad ZMTP signature)")
        major = self._read_exact(1)[0]
        if major < 3:
            raise _Refused("the peer speaks ZMTP %d; ZMTP 3 is needed" % major)
        self._write(_GREETING[11:])
        rest = self._read_exact(53)
        mechanism = bytes(rest[1:21]).rstrip(b"\x00")
        if mechanism != b"PLAIN":
            raise _Refused(
                "the peer uses the %s security mechanism, not PLAIN: it is not a sidecar of "
                "this Offcut version (install the same version for both with `offcut install`)"
                % mechanism.decode("ascii", "replace")
            )
        self._write(hello)
        self._expect_command(b"WELCOME")
        initiate = _encode_command(
            b"INITIATE",
            _encode_property(b"Socket-Type", b"DEALER") + _encode_property(b"Identity", b""),
        )
        self._write(initiate)
        props = _parse_properties(self._expect_command(b"READY"))
        self.peer_socket_type = props.get("socket-type", b"").decode("ascii", "replace")
        if self.peer_socket_type not in ("ROUTER", "DEALER"):
            raise _Refused(
                "the peer is a %s socket; a DEALER needs a ROUTER" % self.peer_socket_type
            )

    def _expect_command(self, want: bytes) -> bytes:
        """The body of the handshake command ``want``; the peer's ERROR raises its reason."""
        flags, body = self._read_frame(HANDSHAKE_MAX_FRAME)
        if not flags & _COMMAND:
            raise _Refused("the peer sent a message before its READY command")
        name, data = self._split_command(body)
        if name == b"ERROR":
            self._handle_command(name, data)
        if name != want:
            raise _Refused(
                "the peer sent %s where ZMTP PLAIN has %s"
                % (name.decode("ascii", "replace")[:20] or "an empty command", want.decode())
            )
        return data

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
        """Blocking mode with the kernel's own ``io_timeout``s, for one large frame.

        Yields False, changing nothing, where the timeouts cannot be set: the caller then uses
        the socket's Python timeout as before. Whatever happens, the Python timeout is back after.
        """
        value = kernel_timeout(self.io_timeout, sys.platform)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
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
            flags, body = self._read_frame(self.max_frame_bytes)
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
        if body.startswith(_LIBZMQ_PLAIN_ERROR):
            return b"ERROR", body[len(_LIBZMQ_PLAIN_ERROR) :]
        n = body[0]
        return body[1 : 1 + n], body[1 + n :]

    def _handle_command(self, name: bytes, data: bytes) -> None:
        if name == b"ERROR":
            reason = data[1 : 1 + data[0]].decode("utf-8", "replace") if data else ""
            self.close()
            if reason in ("300", "400", "500"):  # a ZAP status code: authentication failed
                raise handshake_auth_failure(int(reason))
            raise ConnectionLost("the sidecar refused the connection: %s" % reason, False, reason)
        if name == b"PING":
            # PING: TTL (2 bytes) then a context echoed back in PONG.
            self._write(_encode_command(b"PONG", data[2:]))
        # READY repeated, PONG, SUBSCRIBE... : nothing for a DEALER to do.

    def _read_frame(self, limit: int) -> tuple:
        """One frame, refused before anything is allocated for it when longer than ``limit``."""
        flags = self._read_exact(1)[0]
        if flags & _LONG:
            (size,) = _Q.unpack(self._read_exact(8))
        else:
            size = self._read_exact(1)[0]
        if size > limit:
            self.close()
            raise ConnectionLost(
                "the sidecar announced a %d-byte frame, over the %d-byte limit" % (size, limit)
            )
        if size <= _SMALL:
            return flags, bytes(self._read_exact(size))
        try:
            body = bytearray(size)
        except (MemoryError, OverflowError):  # a limit raised that high by a hostile hello
            self.close()
            raise ConnectionLost(
                "the sidecar announced a %d-byte frame, more than this process can hold" % size
            ) from None
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
