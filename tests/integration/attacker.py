"""Attacks on a running sidecar, as another local user would make them: standard library only.

The tests run this file as a second user account (``nobody``), fed on stdin to an interpreter
that user may execute, so it imports nothing but the standard library and reads nothing of the
victim's: it knows the port (``ss -ltn`` shows it to everyone) and what libzmq makes predictable.
Each command prints one JSON line saying what it got, for the test to judge.

    attacker.py claim PORT ID_HEX SECONDS       take a routing id, read whatever arrives
    attacker.py claim-range PORT START_HEX N     take N consecutive ids, then connect anonymously
    attacker.py idle PORT N SECONDS              N connections that handshake and then sit idle
    attacker.py flood PORT N                     N requests with wrong tokens, N/5 PLAIN logins
    attacker.py bigframe PORT MECH MEGABYTES     begin one huge frame and stream into it
    attacker.py ping PORT SECONDS                a request every 0.2 s, without the token
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"


def greeting(mechanism: bytes) -> bytes:
    return SIGNATURE + b"\x03\x00" + mechanism.ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def command(name: bytes, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name + body
    if len(payload) > 255:
        return b"\x06" + struct.pack(">Q", len(payload)) + payload
    return bytes([0x04, len(payload)]) + payload


def prop(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def frames(*parts: bytes) -> bytes:
    out = b""
    for i, body in enumerate(parts):
        more = 0x01 if i < len(parts) - 1 else 0
        if len(body) > 255:
            out += bytes([more | 0x02]) + struct.pack(">Q", len(body)) + body
        else:
            out += bytes([more, len(body)]) + body
    return out


def pack(obj: dict) -> bytes:
    """Just enough msgpack for a flat request header (str keys; str or small int values)."""

    def one(v: object) -> bytes:
        if isinstance(v, int):
            return bytes([v]) if 0 <= v < 128 else b"\xd3" + struct.pack(">q", v)
        b = str(v).encode()
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b

    return bytes([0x80 | len(obj)]) + b"".join(one(k) + one(v) for k, v in obj.items())


def null_peer(port: int, identity: bytes = b"", timeout: float = 3.0) -> socket.socket:
    """A ZMTP 3 DEALER with the NULL mechanism, optionally asking for a routing id.

    Returns once the server's greeting and READY are read (libzmq drops a peer whose messages
    arrive before its handshake is done), or once the server gave up on us.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    props = prop(b"Socket-Type", b"DEALER") + (prop(b"Identity", identity) if identity else b"")
    s.sendall(greeting(b"NULL") + command(b"READY", props))
    read_for(s, timeout, until=b"READY")
    return s


def read_for(s: socket.socket, seconds: float, until: bytes | None = None) -> bytes:
    """What arrives within ``seconds`` (or until ``until`` was seen, or the peer closed)."""
    got = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not (until and until in got):
        s.settimeout(min(left, 0.2))
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got


def summary(data: bytes) -> dict:
    """What a peer received beyond the handshake: replies of each kind, and the bytes."""
    return {
        "bytes": len(data),
        "progress": data.count(b"progress"),
        "result": data.count(b"\xa4kind\xa6result"),
        "error": data.count(b"\xa4kind\xa5error"),
        "mask": data.count(b"\xa4mask"),
    }


def claim(port: int, ident_hex: str, seconds: float) -> dict:
    s = null_peer(port, bytes.fromhex(ident_hex))
    got = read_for(s, seconds)
    s.close()
    return summary(got)


def claim_range(port: int, start_hex: str, count: int) -> dict:
    start = int(start_hex, 16)
    peers = [null_peer(port, b"\x00" + struct.pack(">I", start + k)) for k in range(count)]
    time.sleep(0.3)
    anon = null_peer(port)
    try:
        anon.sendall(frames(pack({"v": 1, "id": "x", "op": "status", "token": "0" * 64})))
        got = read_for(anon, 1.0)
    except OSError:  # refused: it got nothing
        got = b""
    for p in peers:
        p.close()
    anon.close()
    return {"anonymous_got": len(got)}


def idle(port: int, count: int, seconds: float) -> dict:
    held, failed = [], 0
    for _ in range(count):
        try:
            held.append(null_peer(port, timeout=2.0))
        except OSError:
            failed += 1
    time.sleep(seconds)
    open_at_end = 0
    for s in held:
        s.settimeout(0.01)
        try:
            while s.recv(4096):  # what the server said before it closed, if it did
                pass
        except TimeoutError:
            open_at_end += 1  # no end of stream: the server still holds it open
        except OSError:
            pass
        s.close()
    return {"opened": len(held), "failed": failed, "open_at_end": open_at_end}


def flood(port: int, count: int) -> dict:
    sent = 0
    with null_peer(port) as s:
        for n in range(count):
            header = pack({"v": 1, "id": f"flood-{n}-" + "x" * 90, "op": "status", "token": "0"})
            try:
                s.sendall(frames(header))
                sent += 1
            except OSError:
                break
        answered = summary(read_for(s, 2.0))["error"]
    logins = 0
    for _ in range(count // 5):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as p:
                hello = bytes([6]) + b"offcut" + bytes([64]) + b"0" * 64
                p.sendall(greeting(b"PLAIN") + command(b"HELLO", hello))
                read_for(p, 0.02)
                logins += 1
        except OSError:
            pass
    return {"requests": sent, "answered": answered, "logins": logins}


def bigframe(port: int, mechanism: str, megabytes: int) -> dict:
    """Declare a 1.5 GB frame (a NULL message, or a PLAIN HELLO before authentication) and
    stream into it; a server that refuses early makes the sends fail, which is the answer."""
    declared = 1500 << 20
    chunk = b"\x00" * (1 << 20)
    sent = 0
    started = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if mechanism == "PLAIN":
            s.sendall(greeting(b"PLAIN") + b"\x06" + struct.pack(">Q", declared) + b"\x05HELLO")
        else:  # NULL: READY (after the server's), then the message frame
            s.close()
            s = null_peer(port)
            s.sendall(b"\x02" + struct.pack(">Q", declared))
        while sent < megabytes << 20:
            s.sendall(chunk)
            sent += len(chunk)
        stopped = "sent all"
        read_for(s, 3.0)
    except OSError as exc:
        stopped = type(exc).__name__
    s.close()
    return {"sent_mb": sent >> 20, "stopped": stopped, "seconds": time.monotonic() - started}


def ping(port: int, seconds: float) -> dict:
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with null_peer(port, timeout=1) as s:
                s.sendall(frames(pack({"v": 1, "id": f"p{n}", "op": "status", "token": "0"})))
                read_for(s, 0.05)
            n += 1
        except OSError:
            pass
        time.sleep(0.2)
    return {"pings": n}


def main(argv: list[str]) -> None:
    cmd, port, *rest = argv
    p = int(port)
    if cmd == "claim":
        out = claim(p, rest[0], float(rest[1]))
    elif cmd == "claim-range":
        out = claim_range(p, rest[0], int(rest[1]))
    elif cmd == "idle":
        out = idle(p, int(rest[0]), float(rest[1]))
    elif cmd == "flood":
        out = flood(p, int(rest[0]))
    elif cmd == "bigframe":
        out = bigframe(p, rest[0], int(rest[1]))
    elif cmd == "ping":
        out = ping(p, float(rest[0]))
    else:
        raise SystemExit(f"unknown attack {cmd}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
