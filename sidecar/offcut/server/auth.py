"""Authentication at the ZeroMQ handshake: ZMTP PLAIN checked by a ZAP handler of our own.

The sidecar's ROUTER is a PLAIN server. libzmq asks the ZAP handler (RFC 27) about every
connection before the handshake completes, so a peer without the connection file's token never
gets a routing id, never has a message queued and cannot choose an id another client will get
(docs/security.md, "Other local users"). pyzmq's own ``zmq.auth`` compares passwords with ``==``;
this handler compares in constant time and answers on the main thread's poller, so it needs no
thread and no lock.

Every accepted connection gets a fresh, sidecar-chosen ZAP user id. libzmq attaches it to each
message from that connection (the ``User-Id`` property), which lets the server tell two
connections apart even when a peer reuses a routing id.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
from collections.abc import Callable

import zmq

from offcut.client.wire import PLAIN_USERNAME

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27: libzmq looks for exactly this
DOMAIN = b"offcut"

OK, DENIED = b"200", b"400"
# Not 300: libzmq sends no ERROR for a ZAP 300 and holds the peer until the handshake times out,
# while 500 reaches the client at once (it reports `busy`).
FULL = b"500"


class ZapHandler:
    """Answers libzmq's ZAP requests: PLAIN with ``offcut`` and the token, or nothing.

    ``admit`` is asked after the credentials check out; returning False refuses the connection
    with status 500, which the client reports as `busy` (the bound on connected peers).
    """

    def __init__(self, ctx: zmq.Context, token: str, admit: Callable[[], bool]) -> None:
        self._token = token.encode("ascii")
        self._admit = admit
        self._serial = itertools.count(1)
        self._nonce = secrets.token_hex(4)  # user ids differ between sidecar lifetimes
        self.accepted = 0
        self.denied = 0
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def verdict(self, request: list[bytes]) -> tuple[bytes, bytes, bytes]:
        """``(status, text, user_id)`` for one ZAP request's frames (after the version)."""
        if len(request) < 6:
            return DENIED, b"Malformed ZAP request", b""
        _request_id, domain, _address, _identity, mechanism, *credentials = request
        if mechanism != b"PLAIN" or len(credentials) != 2 or domain != DOMAIN:
            return DENIED, b"PLAIN authentication is required", b""
        user, password = credentials
        # Both compared, always, so the time taken says nothing about which one was wrong.
        user_ok = hmac.compare_digest(user, PLAIN_USERNAME)
        password_ok = hmac.compare_digest(password, self._token)
        if not (user_ok and password_ok):
            return DENIED, b"Authentication failure", b""
        if not self._admit():
            return FULL, b"Too many connections", b""
        return OK, b"OK", f"{self._nonce}-{next(self._serial)}".encode()

    def handle(self) -> bool:
        """Answer every waiting request; True if one was denied (for the caller's log)."""
        denied = False
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return denied
            version = frames[0] if frames else b""
            request_id = frames[1] if len(frames) > 1 else b""
            if version != b"1.0":
                status, text, user_id = DENIED, b"Unsupported ZAP version", b""
            else:
                status, text, user_id = self.verdict(frames[1:])
            if status == OK:
                self.accepted += 1
            else:
                self.denied += 1
                denied = True
            self.socket.send_multipart([b"1.0", request_id, status, text, user_id, b""])

    def close(self) -> None:
        self.socket.close(0)
