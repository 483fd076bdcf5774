"""The built-in ZMTP DEALER against a real pyzmq ROUTER, and against raw misbehaving peers."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest
import zmq

from offcut.client.errors import ConnectionLost
from offcut.client.zmtp import ZmtpDealer


def _approve_all(ctx: zmq.Context) -> None:
    """A ZAP handler that admits any PLAIN credentials (the sidecar's own is tested elsewhere)."""
    zap = ctx.socket(zmq.REP)
    try:
        zap.bind("inproc://zeromq.zap.01")
    except zmq.ZMQError:  # this context has its handler already
        zap.close(0)
        return

    def serve() -> None:
        with contextlib.suppress(zmq.ZMQError):
            while True:
                req = zap.recv_multipart()
                zap.send_multipart([b"1.0", req[1], b"200", b"OK", b"test", b""])
        zap.close(0)

    threading.Thread(target=serve, daemon=True).start()


def plain_router(ctx: zmq.Context) -> zmq.Socket:
    """A ROUTER that, like the sidecar, requires ZMTP PLAIN."""
    _approve_all(ctx)
    sock = ctx.socket(zmq.ROUTER)
    sock.plain_server = True
    return sock


@pytest.fixture
def router():
    ctx = zmq.Context()
    sock = plain_router(ctx)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.setsockopt(zmq.SNDTIMEO, 10000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, port
    sock.close(0)
    ctx.term()


@pytest.fixture
def dealer():
    d = ZmtpDealer()
    yield d
    d.close()


def recv(d: ZmtpDealer, timeout: float = 10.0) -> list:
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
    dealer.connect("127.0.0.1", port, 5.0)
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
    dealer.connect("127.0.0.1", port, 5.0)
    big = bytearray(os.urandom(1 << 20)) * 48  # 48 MiB, sent from a memoryview
    dealer.send([b"hdr", memoryview(big)])
    identity, hdr, body = sock.recv_multipart(copy=False)
    assert hdr.bytes == b"hdr" and body.buffer == memoryview(big)
    sock.send_multipart([identity.bytes, b"hdr", body], copy=False)
    back = recv(dealer)
    assert isinstance(back[1], bytearray) and back[1] == big


def test_many_messages_in_one_read_keep_their_boundaries(router, dealer):
    sock, port = router
    dealer.connect("127.0.0.1", port, 5.0)
    dealer.send([b"hi"])
    identity, _ = sock.recv_multipart()
    for i in range(200):
        sock.send_multipart([identity, str(i).encode(), b"z" * (i * 7)])
    for i in range(200):
        assert recv(dealer) == [str(i).encode(), b"z" * (i * 7)]


def test_non_contiguous_input_is_cast_to_bytes(router, dealer):
    sock, port = router
    dealer.connect("127.0.0.1", port, 5.0)
    import array

    data = array.array("H", range(1000))
    dealer.send([b"a", data])
    _, a, b = sock.recv_multipart()
    assert a == b"a" and b == data.tobytes()


def test_wait_times_out_and_wakes_up(router, dealer):
    _, port = router
    dealer.connect("127.0.0.1", port, 5.0)
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
        dealer.connect("127.0.0.1", port, 2.0)
    assert info.value.refused


def test_router_going_away_is_reported(dealer):
    ctx = zmq.Context()
    sock = plain_router(ctx)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect("127.0.0.1", port, 5.0)
    sock.close(0)
    ctx.term()
    with pytest.raises(ConnectionLost):
        recv(dealer)
    assert not dealer.connected


def test_pyzmq_dealer_can_talk_to_the_same_router_as_builtin(router, dealer):
    """Mixed clients on one ROUTER: each gets its own replies."""
    sock, port = router
    dealer.connect("127.0.0.1", port, 5.0)
    ctx = zmq.Context.instance()
    real = ctx.socket(zmq.DEALER)
    real.setsockopt(zmq.LINGER, 0)
    real.plain_username, real.plain_password = b"offcut", b"token"
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


def test_peer_heartbeat_pings_are_answered(dealer):
    """A ROUTER with ZMTP heartbeats keeps a builtin client that is waiting for a reply."""
    ctx = zmq.Context()
    sock = plain_router(ctx)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 50)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 400)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        dealer.connect("127.0.0.1", port, 5.0)
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
        ctx.term()


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


def _greeting(major=3, mechanism=b"PLAIN"):
    return (
        b"\xff"
        + b"\x00" * 8
        + b"\x7f"
        + bytes([major, 0])
        + mechanism.ljust(20, b"\x00")
        + (b"\x01" + b"\x00" * 31)
    )


def _command(name: bytes, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name + body
    return bytes([0x04, len(payload)]) + payload


def _ready(socket_type: bytes = b"ROUTER") -> bytes:
    prop = bytes([11]) + b"Socket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    # A PLAIN server's side of the handshake: WELCOME, then (after INITIATE) READY.
    return _command(b"WELCOME", b"") + _command(b"READY", prop)


def _read_client_hello(conn):
    data = b""
    while len(data) < 64 + 2 + 6 + 2:  # greeting + HELLO with an empty user name and password
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_client_greeting_and_ready_are_well_formed():
    seen = {}

    def script(conn):
        seen["data"] = _read_client_hello(conn)
        conn.sendall(_greeting() + _ready())
        conn.recv(10)

    threads = []
    port = _raw_peer(script, threads)
    d = ZmtpDealer()
    d.connect("127.0.0.1", port, 5.0)
    d.close()
    threads[0].join(10)
    data = seen["data"]
    assert data[:10] == b"\xff" + b"\x00" * 8 + b"\x7f"
    assert data[10] == 3
    assert data[12:32] == b"PLAIN".ljust(20, b"\x00")
    assert data[32] == 0  # as-server: no
    assert data[64:66] == b"\x04\x08" and data[66:72] == b"\x05HELLO"  # empty user and password
    # INITIATE (with Socket-Type DEALER) follows the server's WELCOME: see the real-router tests.


def test_error_command_is_reported_with_its_reason():
    def script(conn):
        _read_client_hello(conn)
        conn.sendall(_greeting() + _command(b"ERROR", bytes([9]) + b"go away!!"))

    port = _raw_peer(script)
    d = ZmtpDealer()
    with pytest.raises(ConnectionLost) as info:
        d.connect("127.0.0.1", port, 5.0)
    assert info.value.peer_error == "go away!!"
    assert "go away!!" in str(info.value)


def test_error_after_ready_is_reported_on_receive():
    def script(conn):
        _read_client_hello(conn)
        conn.sendall(_greeting() + _ready())
        conn.sendall(_command(b"ERROR", bytes([4]) + b"bye!"))
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    d.connect("127.0.0.1", port, 5.0)
    with pytest.raises(ConnectionLost, match="bye!"):
        recv(d)


def test_ping_gets_pong_with_context():
    seen = {}

    def script(conn):
        _read_client_hello(conn)
        conn.sendall(_greeting() + _ready())
        conn.sendall(_command(b"PING", b"\x00\x10ctx") + b"\x00\x02ok")
        conn.settimeout(5)
        data = b""
        while _command(b"PONG", b"ctx") not in data:  # after the client's INITIATE
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
        seen["pong"] = data

    threads = []
    port = _raw_peer(script, threads)
    d = ZmtpDealer()
    d.connect("127.0.0.1", port, 5.0)
    assert recv(d) == [b"ok"]
    threads[0].join(10)
    d.close()
    assert seen["pong"].endswith(_command(b"PONG", b"ctx"))


def test_long_frame_header_from_peer_for_small_frame():
    """A peer may use the 8-byte length form even for short frames."""

    def script(conn):
        _read_client_hello(conn)
        conn.sendall(_greeting() + _ready())
        conn.sendall(b"\x03" + (3).to_bytes(8, "big") + b"abc" + b"\x00\x00")
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    d.connect("127.0.0.1", port, 5.0)
    assert recv(d) == [b"abc", b""]
    d.close()


@pytest.mark.parametrize(
    ("greeting", "match"),
    [
        (_greeting(major=2), "ZMTP 2"),
        (_greeting(mechanism=b"CURVE"), "CURVE"),
        (b"HTTP/1.1 400 Bad Request\r\n" + b"\x00" * 64, "not a ZeroMQ"),
    ],
)
def test_incompatible_peers_are_refused(greeting, match):
    def script(conn):
        _read_client_hello(conn)
        conn.sendall(greeting)
        conn.recv(10)

    port = _raw_peer(script)
    d = ZmtpDealer()
    with pytest.raises(ConnectionLost, match=match):
        d.connect("127.0.0.1", port, 5.0)


def test_wrong_socket_type_is_refused():
    def script(conn):
        _read_client_hello(conn)
        conn.sendall(_greeting() + _ready(b"PUB"))
        conn.recv(10)

    port = _raw_peer(script)
    with pytest.raises(ConnectionLost, match="PUB"):
        ZmtpDealer().connect("127.0.0.1", port, 5.0)


def test_curve_router_is_refused():
    ctx = zmq.Context()
    sock = plain_router(ctx)
    sock.setsockopt(zmq.LINGER, 0)
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    _public, secret = zmq.curve_keypair()
    sock.curve_server = True
    sock.curve_secretkey = secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConnectionLost, match=r"handshake|CURVE"):
            ZmtpDealer().connect("127.0.0.1", port, 5.0)
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
        ZmtpDealer().connect("127.0.0.1", port, 0.3)


# -- large frames move in blocking calls, still bounded by io_timeout --------------------------


def _stalling_peer(after_ready: bytes, hold: threading.Event):
    """A peer that greets, sends ``after_ready``, then neither reads nor writes until ``hold``."""

    def script(conn):
        _read_client_hello(conn)
        conn.sendall(_greeting() + _ready() + after_ready)
        hold.wait(30)

    return _raw_peer(script)


def test_large_send_to_a_peer_that_stopped_reading_times_out():
    hold = threading.Event()
    port = _stalling_peer(b"", hold)
    d = ZmtpDealer()
    d.io_timeout = 1.0
    d.connect("127.0.0.1", port, 5.0)
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
    d.connect("127.0.0.1", port, 5.0)
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
    dealer.connect("127.0.0.1", port, 5.0)
    big = os.urandom(1 << 20) * 24
    dealer.send([b"in", big])
    identity, *frames = sock.recv_multipart()
    assert frames == [b"in", big]
    sock.send_multipart([identity, b"out", big[::-1]])
    assert recv(dealer) == [b"out", big[::-1]]
    assert dealer._sock.gettimeout() == 7.0  # small frames and waits keep the poll-based timeout
