"""Which TCP connection each routing id belongs to, when it ends, and who is still handshaking.

A ROUTER addresses replies by routing id only, and ids outlive nothing: once a connection ends, its
id is free for the next peer that asks for it. So the server keeps this table, fed by the socket
monitor (ACCEPTED / DISCONNECTED carry the file descriptor) and by the messages themselves
(``SRCFD`` and the ZAP ``User-Id`` that :mod:`offcut.server.auth` gave the connection). A job
belongs to a :class:`Connection` object, not to an id: when that connection ends the job is
cancelled and any reply still on its way is dropped, whoever holds the id by then.

Connections still in the handshake are the only thing an unauthenticated peer can make the
sidecar hold. libzmq buffers a handshake command of any size up to ``MAXMSGSIZE``, so on Linux
the server reads each such connection's byte counters (``TCP_INFO``) and shuts down one that
sends more than a handshake ever needs, and the oldest ones when too many are waiting.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, Linux 4.1 and later.
_TCP_INFO_SIZE = 144
_U64 = struct.Struct("=Q")
_OFFSET_ACKED, _OFFSET_RECEIVED = 120, 128

#: What a PLAIN client sends before it is authenticated: greeting (64) + HELLO (< 520) with
#: margin. More than this from a connection still handshaking is an attack, not a client.
HANDSHAKE_BYTES = 4096
#: The sidecar's greeting (64) + WELCOME (10) + the start of READY: once this much of our own
#: data was acknowledged, the connection passed authentication (a refused one gets an ERROR
#: command of about 12 bytes after the greeting instead).
AUTHENTICATED_SENT = 64 + 10 + 20


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection; identity of a job's owner (compared with ``is``)."""

    fd: int
    accepted: float = field(default_factory=time.monotonic)
    routing_id: bytes | None = None
    user_id: str | None = None
    open: bool = True
    bytes_in_flight: int = 0

    @property
    def pending(self) -> bool:
        """Still handshaking as far as we know: it has not delivered a message yet."""
        return self.routing_id is None


class Peers:
    """The live connections of one ROUTER socket."""

    def __init__(self, max_peers: int, max_pending: int) -> None:
        self.max_peers = max_peers
        self.max_pending = max_pending
        self._by_fd: dict[int, Connection] = {}
        self._by_id: dict[bytes, Connection] = {}

    # -- monitor events -----------------------------------------------------------------------
    def accepted(self, fd: int) -> Connection | None:
        """A new connection on ``fd``; returns the one that had the fd, if its end was missed.

        The monitor drops events when its pipe is full (a flood of peers can do that), so a
        DISCONNECTED may never come: the fd's reuse is then the news that the old one ended.
        """
        old = self._by_fd.get(fd)
        if old is not None:
            self._end(old)
        self._by_fd[fd] = Connection(fd)
        return old

    def disconnected(self, fd: int) -> Connection | None:
        conn = self._by_fd.get(fd)
        if conn is None:
            return None
        self._end(conn)
        return conn

    def _end(self, conn: Connection) -> None:
        conn.open = False
        if self._by_fd.get(conn.fd) is conn:
            del self._by_fd[conn.fd]
        if conn.routing_id is not None and self._by_id.get(conn.routing_id) is conn:
            del self._by_id[conn.routing_id]

    # -- messages -----------------------------------------------------------------------------
    def owner(
        self, routing_id: bytes, fd: int, user_id: str
    ) -> tuple[Connection, list[Connection]]:
        """The connection a message came from, and the connections this message shows ended.

        A routing id that arrives from another connection (another fd or ZAP user id) than the
        one it belonged to means that connection is gone and someone else holds its id now: the
        old one is ended here, so nothing meant for it can reach the newcomer.
        """
        ended: list[Connection] = []
        conn = self._by_id.get(routing_id)
        if conn is not None and conn.user_id == user_id and conn.fd == fd:
            return conn, ended
        if conn is not None:
            self._end(conn)
            ended.append(conn)
        conn = self._by_fd.get(fd)
        if conn is not None and not conn.pending:  # the fd was reused before DISCONNECTED came
            self._end(conn)
            ended.append(conn)
            conn = None
        if conn is None:
            conn = Connection(fd)
            self._by_fd[fd] = conn
        conn.routing_id, conn.user_id = routing_id, user_id
        self._by_id[routing_id] = conn
        return conn, ended

    def current(self, routing_id: bytes) -> Connection | None:
        return self._by_id.get(routing_id)

    def lost(self, routing_id: bytes) -> Connection | None:
        """The ROUTER says ``routing_id`` is unreachable: its connection ended."""
        conn = self._by_id.get(routing_id)
        if conn is not None:
            self._end(conn)
        return conn

    @property
    def authenticated(self) -> int:
        return len(self._by_id)

    @property
    def pending_count(self) -> int:
        return sum(1 for c in self._by_fd.values() if c.pending)

    def admit(self) -> bool:
        """ZAP's question: may one more authenticated connection join?"""
        return self.authenticated < self.max_peers

    # -- pre-authentication policing -------------------------------------------------------------
    def police(self) -> int:
        """Shut down handshaking connections that send too much, or the oldest beyond the bound.

        Returns how many were shut down. Linux only (``TCP_INFO``); elsewhere libzmq's handshake
        interval is the bound.
        """
        if not sys.platform.startswith("linux"):
            return 0
        waiting = []
        shut = 0
        for conn in list(self._by_fd.values()):
            if not conn.pending:
                continue
            counters = tcp_counters(conn.fd)
            if counters is None:
                continue
            sent, received = counters
            if sent >= AUTHENTICATED_SENT:
                continue  # authenticated; its first message is on its way
            if received > HANDSHAKE_BYTES:
                shut += shutdown(conn.fd)
                self._end(conn)
                continue
            waiting.append(conn)
        if len(waiting) > self.max_pending:
            waiting.sort(key=lambda c: c.accepted)
            for conn in waiting[: len(waiting) - self.max_pending]:
                shut += shutdown(conn.fd)
                self._end(conn)
        return shut


def _dup_socket(fd: int) -> socket.socket | None:
    """A socket object over a duplicate of ``fd`` (closing it never closes libzmq's)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None


def tcp_counters(fd: int) -> tuple[int, int] | None:
    """``(bytes we sent that were acked, bytes received)`` of a TCP socket, or None."""
    s = _dup_socket(fd)
    if s is None:
        return None
    with s:
        try:
            if s.type != socket.SOCK_STREAM:
                return None
            raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        except OSError:
            return None
    if len(raw) < _OFFSET_RECEIVED + 8:
        return None
    (acked,) = _U64.unpack_from(raw, _OFFSET_ACKED)
    (received,) = _U64.unpack_from(raw, _OFFSET_RECEIVED)
    return acked, received


def shutdown(fd: int) -> int:
    """End a connection libzmq owns without touching its descriptor: libzmq sees the peer go
    and cleans up (DISCONNECTED follows). Returns 1 if it was shut down."""
    s = _dup_socket(fd)
    if s is None:
        return 0
    with s:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            return 0
    return 1
