"""The built-in ZMTP DEALER against a real pyzmq ROUTER, and against raw misbehaving peers.

The ROUTERs here are what the sidecar runs: ZMTP PLAIN (``plain_server``) with a ZAP handler
(RFC 27) in the same context, which accepts user ``offcut`` with the connection file's token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from offcut.client.errors import ConnectionLost, CredentialsRefused, SidecarFull
from offcut.client.transport import PyzmqDealer
from offcut.client.wire import DEFAULT_MAX_FRAME, PLAIN_USERNAME
from offcut.client.zmtp import ZmtpDealer

TOKEN = "5e" * 32  # what a connection file holds: 64 hex characters
PASSWORD = TOKEN.encode("ascii")


class Zap:
    """A ZAP handler thread: accepts ``offcut`` + PASSWORD in domain ``offcut``, records all."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.requests: list[list[bytes]] = []
        self.force: bytes | None = None  # a status to answer whatever the credentials
        self._stop = threading.Event()
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("inproc://zeromq.zap.01")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            req = self._sock.recv_multipart()
            self.requests.append(req)
            _version, rid, domain, _address, _identity, mechanism, *creds = req
            ok = domain == b"offcut" and mechanism == b"PLAIN" and creds == [b"offcut", PASSWORD]
            status = self.force or (b"200" if ok else b"400")
            ok = status == b"200"
            self._sock.send_multipart(
                [b"1.0", rid, status,
                 b"OK" if ok else b"Authentication failure", b"offcut" if ok else b"", b""]
            )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)


def plain_router(ctx: zmq.Context, **options: int) -> tuple[zmq.Socket, int]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.setsockopt(zmq.SNDTIMEO, 10000)
    sock.setsockopt(zmq.PLAIN_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, b"offcut")
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    return sock, sock.bind_to_random_port("tcp://127.0.0.1")


@pytest.fixture
def zap_ctx():
    ctx = zmq.Context()
    zap = Zap(ctx)
    yield ctx, zap
    zap.close()
    ctx.term()


@pytest.fixture
def zap(zap_ctx):
    return zap_ctx[1]


@pytest.fixture
def router(zap_ctx):
    sock, port = plain_router(zap_ctx[0])
    yield sock, port
    sock.close(0)


@pytest.fixture
def dealer():
    d = ZmtpDealer()
    yield d
    d.close()


TRANSPORTS = {"builtin": ZmtpDealer, "pyzmq": lambda: PyzmqDealer(zmq)}


@pytest.fixture(params=sorted(TRANSPORTS))
def any_dealer(request):
    d = TRANSPORTS[request.param]()
    yield d
    d.close()


def connect(d, port: int, timeout: float = 5.0, password: bytes = PASSWORD) -> None:
    d.connect("127.0.0.1", port, timeout, PLAIN_USERNAME, password)


def recv(d, timeout: float = 10.0) -> list:
    end = time.monotonic() + timeout
    while d.wait(max(0.0, end - time.monotonic())):
        msg = d.recv()
        if msg is not None:
            return msg
    raise AssertionError("no message within the time-out")


FRAME_SETS = [
    [b"hello"],
    [b""],
    [b"", b"", b""],
    [b"h", b"x" * 255, b"y" * 256, b""],
    [b"\x00" * 65536, b"\x01" * 65537],
    [os.urandom(3 << 20), b"tail"],
]


@pytest.mark.parametrize("frames", FRAME_SETS, ids=lambda f: "+".join(str(len(x)) for x in f))
def test_dealer_to_router_and_back(router, dealer, frames):
    sock, port = router
    connect(dealer, port)
    assert dealer.peer_socket_type == "ROUTER"
    dealer.send(frames)
    got = sock.recv_multipart()
    identity, body = got[0], got[1:]
    assert body == frames
    sock.send_multipart([identity, *frames])
    back = recv(dealer)
    assert [bytes(f) for f in back] == frames


def test_big_frame_both_ways_without_corruption(router, dealer):
    sock, port = router
    connect(dealer, port)
    big = bytearray(os.urandom(1 << 20)) * 48  # 48 MiB, sent from a memoryview
    dealer.send([b"hdr", memoryview(big)])
    identity, hdr, body = sock.recv_multipart(copy=False)
    assert hdr.bytes == b"hdr" and body.buffer == memoryview(big)
    sock.send_multipart([identity.bytes, b"hdr", body], copy=False)
    back = recv(dealer)
    assert isinstance(back[1], bytearray) and back[1] == big


def test_many_messages_in_one_read_keep_their_boundaries(router, dealer):
    sock, port = router
    connect(dealer, port)
    dealer.send([b"hi"])
    identity, _ = sock.recv_multipart()
    for i in range(200):
        sock.send_multipart([identity, str(i).encode(), b"z" * (i * 7)])
    for i in range(200):
        assert recv(dealer) == [str(i).encode(), b"z" * (i * 7)]


def test_non_contiguous_input_is_cast_to_bytes(router, dealer):
    sock, port = router
    connect(dealer, port)
    import array

    data = array.array("H", range(1000))
    dealer.send([b"a", data])
    _, a, b = sock.recv_multipart()
    assert a == b"a" and b == data.tobytes()


def test_wait_times_out_and_wakes_up(router, dealer):
    _, port = router
    connect(dealer, port)
    assert dealer.wait(0.05) is False
    r, w = socket.socketpair()
    try:
        w.send(b"x")
        assert dealer.wait(5.0, r) is False
    finally:
        r.close()
        w.close()


def test_connection_refused(dealer):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionLost) as info:
        connect(dealer, port, 2.0)
    assert info.value.refused


def test_router_going_away_is_reported(zap_ctx, dealer):
    sock, port = plain_router(zap_ctx[0])
    connect(dealer, port)
    sock.close(0)
    with pytest.raises(ConnectionLost):
        recv(dealer)
    assert not dealer.connected


def test_pyzmq_dealer_can_talk_to_the_same_router_as_builtin(router, dealer):
    """Mixed clients on one ROUTER: each gets its own replies."""
    sock, port = router
    connect(dealer, port)
    ctx = zmq.Context.instance()
    real = ctx.socket(zmq.DEALER)
    real.setsockopt(zmq.LINGER, 0)
    real.plain_username = PLAIN_USERNAME
    real.plain_password = PASSWORD
    real.connect(f"tcp://127.0.0.1:{port}")
    try:
        dealer.send([b"builtin"])
        real.send_multipart([b"pyzmq"])
        seen = {}
        for _ in range(2):
            ident, body = sock.recv_multipart()
            seen[body] = ident
        for body, ident in seen.items():
            sock.send_multipart([ident, body + b"-reply"])
        assert recv(dealer) == [b"builtin-reply"]
        assert real.poll(5000) and real.recv_multipart() == [b"pyzmq-reply"]
    finally:
        real.close(0)


def test_peer_heartbeat_pings_are_answered(zap_ctx, dealer):
    """A ROUTER with ZMTP heartbeats keeps a builtin client that is waiting for a reply."""
    sock, port = plain_router(zap_ctx[0], HEARTBEAT_IVL=50, HEARTBEAT_TIMEOUT=400)
    try:
        connect(dealer, port)
        dealer.send([b"x"])
        assert sock.poll(5000)
        identity, _ = sock.recv_multipart()
        # Keep reading (and so answering PINGs) for longer than the heartbeat time-out.
        end = time.monotonic() + 1.2
        pings = 0
        while time.monotonic() < end:
            if dealer.wait(0.05):
                assert dealer.recv() is None, "only PINGs were sent"
                pings += 1
        assert pings >= 3
        sock.send_multipart([identity, b"still here"])
        assert recv(dealer) == [b"still here"]
    finally:
        sock.close(0)


# -- raw peers: what pyzmq will not do for us ---------------------------------------------------


def _raw_peer(script, threads=None):
    """Run ``script(conn)`` for one connection on a raw TCP listener; return its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        try:
            script(conn)
        finally:
            conn.close()
            srv.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if threads is not None:
        threads.append(thread)
    return srv.getsockname()[1]


def _greeting(major=3, mechanism=b"PLAIN", as_server=1):
    return (
        b"\xff"
        + b"\x00" * 8
        + b"\x7f"
        + bytes([major, 0])
        + mechanism.ljust(20, b"\x00")
        + (bytes([as_server]) + b"\x00" * 31)
    )


def _command(name: bytes, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name + body
    return bytes([0x04, len(payload)]) + payload


def _ready(socket_type: bytes = b"ROUTER") -> bytes:
    prop = bytes([11]) + b"Socket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return _command(b"READY", prop)


def _recv_exactly(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError(f"the client closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _recv_frame(conn) -> bytes:
    """One whole ZMTP frame as it came (flags, length, body)."""
    flags = _recv_exactly(conn, 1)
    size = _recv_exactly(conn, 8 if flags[0] & 0x02 else 1)
    return flags + size + _recv_exactly(conn, int.from_bytes(size, "big"))


def _serve_plain(conn, ready: bytes | None = None) -> bytes:
    """Play a libzmq PLAIN server up to its READY; return what the client wrote until then."""
    conn.settimeout(10)
    conn.sendall(_greeting())
    seen = _recv_exactly(conn, 64)
    seen += _recv_frame(conn)  # HELLO
    conn.sendall(_command(b"WELCOME", b""))
    seen += _recv_frame(conn)  # INITIATE
    conn.sendall(_ready() if ready is None else ready)
    return seen


def _handshake_bytes(connect_to) -> bytes:
    seen = {}

    def script(conn):
        seen["data"] = _serve_plain(conn)

    threads = []
    port = _raw_peer(script, threads)
    closer = connect_to(port)
    threads[0].join(10)
    closer()
    return seen["data"]


def test_handshake_bytes_are_libzmqs():
    """Greeting, HELLO and INITIATE: the built-in writes exactly what libzmq 4.3 does."""

    def builtin(port):
        d = ZmtpDealer()
        connect(d, port)
        return d.close

    def libzmq(port):
        ctx = zmq.Context()
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.plain_username = PLAIN_USERNAME
        d.plain_password = PASSWORD
        d.connect(f"tcp://127.0.0.1:{port}")
        return lambda: (d.close(0), ctx.term())

    ours = _handshake_bytes(builtin)
    theirs = _handshake_bytes(libzmq)
    assert ours == theirs
    # What that is (RFC 23 + RFC 24): the greeting as a client with PLAIN...
    assert ours[:10] == b"\xff" + b"\x00" * 7 + b"\x01\x7f"
    assert ours[10] == 3
    assert ours[12:32] == b"PLAIN".ljust(20, b"\x00")
    assert ours[32] == 0  # as-server: no
    # ...HELLO with the one-byte-length user name and password...
    hello = b"\x05HELLO\x06offcut\x40" + PASSWORD
    assert ours[64:66] == bytes([0x04, len(hello)]) and ours[66 : 66 + len(hello)] == hello
    # ...and INITIATE with the socket type (and libzmq's empty Identity).
    assert ours[66 + len(hello) :] == _command(
        b"INITIATE",
        b"\x0bSocket-Type\x00\x00\x00\x06DEALER" + b"\x08Identity\x00\x00\x00\x00",
    )


@pytest.mark.parametrize(
    "error",
    [
        b"\x05ERROR\x03400",  # as RFC 23 spells it
        b"\x5eRROR\x03400",  # as libzmq 4.3's PLAIN server writes it (see zmtp.py)
    ],
    ids=["rfc", "libzmq"],
)
def test_zap_refusal_is_credentials_refused(error):
    def script(conn):
        conn.settimeout(10)
        conn.sendall(_greeting())
        _recv_exactly(conn, 64)
        _recv_frame(conn)
        conn.sendall(bytes([0x04, len(error)]) + error)
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    with pytest.raises(CredentialsRefused, match="refused the credentials") as info:
        connect(d, port)
    assert info.value.peer_error == "400"
    assert not d.connected


def test_error_command_is_reported_with_its_reason():
    def script(conn):
        conn.settimeout(10)
        conn.sendall(_greeting())
        _recv_exactly(conn, 64)
        _recv_frame(conn)
        conn.sendall(_command(b"ERROR", bytes([9]) + b"go away!!"))

    port = _raw_peer(script)
    d = ZmtpDealer()
    with pytest.raises(ConnectionLost) as info:
        connect(d, port)
    assert not isinstance(info.value, CredentialsRefused)
    assert info.value.peer_error == "go away!!"
    assert "go away!!" in str(info.value)


def test_error_after_ready_is_reported_on_receive():
    def script(conn):
        _serve_plain(conn)
        conn.sendall(_command(b"ERROR", bytes([4]) + b"bye!"))
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    connect(d, port)
    with pytest.raises(ConnectionLost, match="bye!"):
        recv(d)


def test_ping_gets_pong_with_context():
    seen = {}

    def script(conn):
        _serve_plain(conn)
        conn.sendall(_command(b"PING", b"\x00\x10ctx") + b"\x00\x02ok")
        conn.settimeout(5)
        seen["pong"] = conn.recv(100)

    threads = []
    port = _raw_peer(script, threads)
    d = ZmtpDealer()
    connect(d, port)
    assert recv(d) == [b"ok"]
    threads[0].join(10)
    d.close()
    assert seen["pong"] == _command(b"PONG", b"ctx")


def test_long_frame_header_from_peer_for_small_frame():
    """A peer may use the 8-byte length form even for short frames."""

    def script(conn):
        _serve_plain(conn)
        conn.sendall(b"\x03" + (3).to_bytes(8, "big") + b"abc" + b"\x00\x00")
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    connect(d, port)
    assert recv(d) == [b"abc", b""]
    d.close()


@pytest.mark.parametrize(
    ("greeting", "match"),
    [
        (_greeting(major=2), "ZMTP 2"),
        (_greeting(mechanism=b"CURVE"), "CURVE"),
        (_greeting(mechanism=b"NULL", as_server=0), "NULL security mechanism, not PLAIN"),
        (b"HTTP/1.1 400 Bad Request\r\n" + b"\x00" * 64, "not a ZeroMQ"),
    ],
    ids=["zmtp2", "curve", "null", "http"],
)
def test_incompatible_peers_are_refused(greeting, match):
    def script(conn):
        conn.settimeout(10)
        _recv_exactly(conn, 11)  # the client waits for our version before sending the rest
        conn.sendall(greeting)
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    with pytest.raises(ConnectionLost, match=match):
        connect(d, port)


def test_wrong_socket_type_is_refused():
    def script(conn):
        _serve_plain(conn, _ready(b"PUB"))
        conn.recv(10)

    port = _raw_peer(script)
    with pytest.raises(ConnectionLost, match="PUB"):
        connect(ZmtpDealer(), port)


def test_curve_router_is_refused():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    _public, secret = zmq.curve_keypair()
    sock.curve_server = True
    sock.curve_secretkey = secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConnectionLost, match=r"handshake|CURVE"):
            connect(ZmtpDealer(), port)
    finally:
        sock.close(0)
        ctx.term()


def test_silent_peer_times_out():
    def script(conn):
        conn.settimeout(5)
        try:
            conn.recv(1000)
            conn.recv(1000)
        except OSError:
            pass

    port = _raw_peer(script)
    with pytest.raises(ConnectionLost):
        connect(ZmtpDealer(), port, 0.3)


# -- large frames move in blocking calls, still bounded by io_timeout --------------------------


def _stalling_peer(after_ready: bytes, hold: threading.Event):
    """A peer that greets, sends ``after_ready``, then neither reads nor writes until ``hold``."""

    def script(conn):
        _serve_plain(conn)
        conn.sendall(after_ready)
        hold.wait(30)

    return _raw_peer(script)


def test_large_send_to_a_peer_that_stopped_reading_times_out():
    hold = threading.Event()
    port = _stalling_peer(b"", hold)
    d = ZmtpDealer()
    d.io_timeout = 1.0
    connect(d, port)
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionLost, match="stopped reading"):
            d.send([b"header", bytes(256 << 20)])  # far more than the socket buffers hold
    finally:
        hold.set()
    assert time.monotonic() - start < 20
    assert not d.connected


def test_large_frame_from_a_peer_that_stalls_halfway_times_out():
    hold = threading.Event()
    size = 8 << 20
    half = b"\x02" + size.to_bytes(8, "big") + b"\x07" * (size // 2)  # a long frame, half of it
    port = _stalling_peer(half, hold)
    d = ZmtpDealer()
    d.io_timeout = 1.0
    connect(d, port)
    start = time.monotonic()
    try:
        assert d.wait(5.0)
        with pytest.raises(ConnectionLost, match="stalled"):
            d.recv()
    finally:
        hold.set()
    assert time.monotonic() - start < 20
    assert not d.connected


def test_a_large_exchange_leaves_the_socket_with_its_python_timeout(router, dealer):
    sock, port = router
    dealer.io_timeout = 7.0
    connect(dealer, port)
    big = os.urandom(1 << 20) * 24
    dealer.send([b"in", big])
    identity, *frames = sock.recv_multipart()
    assert frames == [b"in", big]
    sock.send_multipart([identity, b"out", big[::-1]])
    assert recv(dealer) == [b"out", big[::-1]]
    assert dealer._sock.gettimeout() == 7.0  # small frames and waits keep the poll-based timeout


# -- PLAIN against libzmq, over both transports ---------------------------------------------------


def test_right_credentials_connect_and_messages_flow(router, zap, any_dealer):
    sock, port = router
    connect(any_dealer, port)
    req = zap.requests[-1]
    assert req[0] == b"1.0" and req[2] == b"offcut" and req[5] == b"PLAIN"
    assert req[6:] == [b"offcut", PASSWORD], "ZAP sees exactly the user name and the token"
    any_dealer.send([b"ping", b"x" * 300])
    identity, *frames = sock.recv_multipart()
    assert frames == [b"ping", b"x" * 300]
    sock.send_multipart([identity, b"pong", b"y" * 70000])
    assert [bytes(f) for f in recv(any_dealer)] == [b"pong", b"y" * 70000]


def test_wrong_password_is_refused(router, zap, any_dealer):
    _, port = router
    t = time.monotonic()
    with pytest.raises(CredentialsRefused, match="refused the credentials") as info:
        connect(any_dealer, port, password=b"0" * 64)
    assert isinstance(info.value, ConnectionLost)
    assert time.monotonic() - t < 4
    assert zap.requests[-1][6:] == [b"offcut", b"0" * 64]
    assert not any_dealer.connected


def test_a_zap_500_is_sidecar_full(router, zap, any_dealer):
    """500: the ZAP handler did not admit the connection (the sidecar's bound on connections)."""
    zap.force = b"500"
    with pytest.raises(SidecarFull, match="did not admit the connection") as info:
        connect(any_dealer, router[1])
    assert info.value.peer_error == "500"


def test_a_zap_300_is_silent_and_ends_at_the_connect_timeout(router, zap, any_dealer):
    """libzmq answers 300 ("try later") with no ERROR at all: only the time-out ends the wait."""
    zap.force = b"300"
    t = time.monotonic()
    with pytest.raises(ConnectionLost) as info:
        connect(any_dealer, router[1], timeout=0.5)
    assert not isinstance(info.value, (CredentialsRefused, SidecarFull))
    assert time.monotonic() - t < 3


def test_a_router_without_credentials_is_refused_clearly(any_dealer):
    """A sidecar of an older Offcut (NULL mechanism): the message says to update."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConnectionLost, match="offcut install") as info:
            connect(any_dealer, port)
        if isinstance(any_dealer, ZmtpDealer):
            assert "the NULL security mechanism, not PLAIN" in str(info.value)
    finally:
        sock.close(0)
        ctx.term()


def test_a_plain_router_without_zap_handler_lets_nobody_in(any_dealer):
    """libzmq fails closed: PLAIN with no ZAP handler bound refuses even the right password."""
    ctx = zmq.Context()
    sock, port = plain_router(ctx)
    try:
        with pytest.raises(ConnectionLost):
            connect(any_dealer, port, 3.0)
        assert not any_dealer.connected
    finally:
        sock.close(0)
        ctx.term()


def test_credentials_too_long_for_plain_are_refused_locally(any_dealer):
    with pytest.raises(ConnectionLost, match="255 bytes"):
        connect(any_dealer, 9, password=b"x" * 256)


# -- frame lengths from the peer are bounded before anything is allocated -------------------------


def test_default_frame_limit_is_the_sidecars_default_message_limit():
    from offcut.server import protocol

    assert protocol.Limits().max_message_bytes == DEFAULT_MAX_FRAME
    assert ZmtpDealer().max_frame_bytes == DEFAULT_MAX_FRAME
    assert PyzmqDealer(zmq).max_frame_bytes == DEFAULT_MAX_FRAME


def _frame(size: int, body: bytes = b"", more: bool = False) -> bytes:
    """A long-form message frame header declaring ``size``, then ``body`` (maybe only a part)."""
    return bytes([0x02 | (0x01 if more else 0)]) + size.to_bytes(8, "big") + body


def test_a_frame_over_the_limit_ends_the_connection(dealer):
    hold = threading.Event()

    def script(conn):
        _serve_plain(conn)
        conn.sendall(_frame(1000, b"a" * 1000))
        hold.wait(10)
        conn.sendall(_frame(1001, b"b" * 1001))
        hold.wait(10)

    port = _raw_peer(script)
    d = dealer
    connect(d, port)
    d.set_max_frame_bytes(1000)  # at once (pyzmq's counterpart: the reconnect test below)
    assert recv(d) == [b"a" * 1000]  # the limit itself is allowed
    hold.set()
    with pytest.raises(ConnectionLost, match="1001-byte frame, over the 1000-byte limit"):
        recv(d)
    assert not d.connected


@pytest.mark.parametrize("size", [1 << 62, (1 << 64) - 1], ids=["2^62", "2^64-1"])
def test_a_frame_within_an_absurd_limit_still_fails_as_connection_lost(dealer, size):
    """A hello may declare any limit; what cannot be allocated is still the client's own error."""

    def script(conn):
        _serve_plain(conn)
        conn.sendall(_frame(size, b"z" * 1000))
        conn.recv(10)

    port = _raw_peer(script)
    connect(dealer, port)
    dealer.set_max_frame_bytes(1 << 64)
    with pytest.raises(ConnectionLost, match="more than this process can hold"):
        recv(dealer)
    assert not dealer.connected


def test_handshake_accepts_only_short_commands(dealer):
    def script(conn):
        conn.settimeout(10)
        conn.sendall(_greeting())
        _recv_exactly(conn, 64)
        _recv_frame(conn)
        conn.sendall(b"\x06" + (1 << 20).to_bytes(8, "big") + b"\x07WELCOME")
        conn.recv(10)

    port = _raw_peer(script)
    with pytest.raises(ConnectionLost, match="over the 65536-byte limit"):
        connect(dealer, port)


HOSTILE = [8 << 30, 1 << 62, (1 << 64) - 1]

BUILTIN_PROBE = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression: MemoryError, not OOM
from offcut.client.zmtp import ZmtpDealer
d = ZmtpDealer()
d.connect("127.0.0.1", int(sys.argv[1]), 5.0, b"offcut", b"x" * 64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.monotonic()
try:
    d.wait(10.0)
    d.recv()
    out = {"error": None}
except BaseException as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
out["seconds"] = time.monotonic() - t
out["rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(out))
"""


def _hostile_peer(size: int, hold: threading.Event) -> int:
    def script(conn):
        _serve_plain(conn)
        conn.sendall(_frame(size, b"z" * 100_000))
        hold.wait(20)

    return _raw_peer(script)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_AS")
@pytest.mark.parametrize("size", HOSTILE, ids=["8GiB", "2^62", "2^64-1"])
def test_builtin_refuses_a_huge_declared_frame_without_allocating(size):
    """Finding 12: an 8 GiB declared frame made the editor allocate 8 GB; 2^62 a MemoryError."""
    hold = threading.Event()
    port = _hostile_peer(size, hold)
    import offcut.client

    env = dict(os.environ, PYTHONPATH=str(Path(offcut.client.__file__).parents[2]))
    try:
        out = subprocess.run(
            [sys.executable, "-c", BUILTIN_PROBE, str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        hold.set()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["error"] == "ConnectionLost", result
    assert f"{size}-byte frame, over the {DEFAULT_MAX_FRAME}-byte limit" in result["message"]
    assert result["seconds"] < 5
    assert result["rss_growth_kib"] < 64 << 10, "nothing may be allocated for the frame"


@pytest.mark.parametrize("size", HOSTILE, ids=["8GiB", "2^62", "2^64-1"])
def test_pyzmq_refuses_a_huge_declared_frame_without_allocating(size):
    import resource

    hold = threading.Event()
    port = _hostile_peer(size, hold)
    d = PyzmqDealer(zmq)
    try:
        connect(d, port)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.monotonic()
        with pytest.raises(ConnectionLost):
            d.wait(10.0)
        assert time.monotonic() - t < 5
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10
    finally:
        hold.set()
        d.close()


def test_pyzmq_applies_a_new_limit_by_reconnecting(router):
    """libzmq reads MAXMSGSIZE when connecting, so a changed limit means a new connection."""
    sock, port = router
    d = PyzmqDealer(zmq)
    try:
        connect(d, port)
        d.set_max_frame_bytes(DEFAULT_MAX_FRAME)  # unchanged: the connection stays
        d.send([b"one"])
        first, _ = sock.recv_multipart()
        d.set_max_frame_bytes(1000)
        assert d.connected
        d.send([b"two"])
        second, _ = sock.recv_multipart()
        assert second != first, "a new connection, with the new limit"
        sock.send_multipart([second, b"a" * 1000])
        assert recv(d) == [b"a" * 1000]
        sock.send_multipart([second, b"b" * 1001])
        with pytest.raises(ConnectionLost):
            recv(d)
        assert not d.connected
    finally:
        d.close()
