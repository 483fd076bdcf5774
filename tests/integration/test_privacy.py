"""The sidecar's privacy invariants (DESIGN §3), each checked on a real ``offcut serve`` process:
loopback only, the token, nothing written to disk, no network, and that audit mode blocks."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RawClient, Sidecar, need, sample_rgba, sidecar_env


def _tcp_sockets_of(pid: int) -> list[tuple[str, str, str]]:
    """(local, remote, state) of every TCP/TCP6/UDP socket the process holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                found.append((f"{table}:{cols[1]}", cols[2], cols[3]))
    return found


def _decode_v4(hexaddr: str) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    ip = socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1])
    return ip, int(port_hex, 16)


needs_proc = pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")


@needs_proc
def test_listening_socket_is_loopback_only(sidecar: Sidecar, raw: RawClient) -> None:
    raw.call({"op": "hello"})  # one live connection too
    socks = _tcp_sockets_of(sidecar.proc.pid)
    listening = [s for s in socks if s[2] == "0A"]  # TCP_LISTEN
    assert listening, socks
    for local, remote, _ in socks:
        table, addr = local.split(":", 1)
        assert table == "tcp", f"unexpected {table} socket: {local}"  # no IPv6, no UDP
        ip, _port = _decode_v4(addr)
        assert ip == "127.0.0.1", local
        rip, _ = _decode_v4(remote)
        assert rip in ("0.0.0.0", "127.0.0.1"), remote
    assert any(_decode_v4(s[0].split(":", 1)[1]) == ("127.0.0.1", sidecar.port) for s in listening)


def test_not_reachable_on_other_addresses(sidecar: Sidecar) -> None:
    """Connecting to the port on any non-loopback address of this machine must fail."""
    addrs = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addrs.add(info[4][0])
    except OSError:
        pass
    addrs.discard("127.0.0.1")
    addrs = {a for a in addrs if not a.startswith("127.")}
    for addr in addrs:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, sidecar.port)) != 0, addr


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
        for p in root.rglob("*")
        if p.is_file()
    }


_WRITE_OPEN = re.compile(r"open(?:at)?\(.*?\"([^\"]+)\", ([A-Z_|]+)")
_CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=(AF_INET6?), sin6?_port=htons\((\d+)\), "
    r"(?:sin_addr=inet_addr\(\"([\d.]+)\"\)|.*?inet_pton\(AF_INET6, \"([^\"]+)\")"
)


def _strace_findings(log: Path, runtime: Path) -> tuple[list[str], list[str]]:
    """(files opened for writing outside the runtime dir, non-loopback connects) in a strace log."""
    writes, connects = [], []
    for line in log.read_text(errors="replace").splitlines():
        m = _WRITE_OPEN.search(line)
        if m and re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND", m.group(2)):
            path = m.group(1)
            if not path.startswith(str(runtime)) and not path.startswith("/dev/"):
                writes.append(line.strip())
        c = _CONNECT.search(line)
        if c:
            addr = c.group(3) or c.group(4)
            if addr not in ("127.0.0.1", "::1"):
                connects.append(line.strip())
        elif "connect(" in line and "AF_UNIX" not in line and "AF_INET" in line:
            connects.append(line.strip())
    return writes, connects


@needs_proc
def test_nothing_written_to_disk_and_no_network_while_serving(
    tmp_path: Path, models_dir: Path
) -> None:
    """Serve requests with every option under strace, which sees the syscalls of every library
    (ONNX Runtime and libzmq included, not only Python): no file is opened for writing outside the
    runtime directory (connection file, lock), no connection leaves loopback. HOME, TMPDIR and the
    models directory are unchanged afterwards, and audit mode saw nothing either."""
    need(shutil.which("strace") is not None, "strace is not installed (apt-get install strace)")
    home, tmp, runtime = tmp_path / "home", tmp_path / "tmp", tmp_path / "run"
    for d in (home, tmp, runtime):
        d.mkdir()
    log = tmp_path / "strace.log"
    env = sidecar_env(
        runtime,
        models_dir,
        HOME=str(home),
        TMPDIR=str(tmp),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    before = {d: _tree(d) for d in (home, tmp, models_dir)}
    s = Sidecar(
        runtime,
        models_dir,
        env=env,
        wrapper=[
            "strace",
            "-f",
            "-qq",
            "-s",
            "256",
            "-o",
            str(log),
            "-e",
            "trace=open,openat,creat,connect,sendto,rename,renameat,unlink,unlinkat,mkdir",
        ],
    )
    c = RawClient(s.port, s.token)
    try:
        for opts in (
            {},
            {"refine": True},
            {"cutout": True, "decontaminate": True},
            {"mask_format": "GRAYF32", "threshold": 0.5},
        ):
            h, _ = c.call(
                {
                    "op": "segment",
                    "image": {"width": 200, "height": 150, "format": "RGBA8"},
                    "options": opts,
                },
                sample_rgba(200, 150),
            )
            assert h["kind"] == "result", h
        st, _ = c.call({"op": "status"})
        assert st["audit_violations"] == 0
        c.call({"op": "shutdown"})  # not SIGTERM: that would reach strace, not the sidecar
        assert s.proc.wait(30) == 0
    finally:
        c.close()
        s.stop()
    writes, connects = _strace_findings(log, runtime)
    assert "openat(" in log.read_text() or "open(" in log.read_text(), "strace saw nothing"
    assert not writes, writes[:5]
    assert not connects, connects[:5]
    for d, snapshot in before.items():
        assert _tree(d) == snapshot, f"files changed under {d}"
    assert sorted(p.name for p in runtime.iterdir()) == ["sidecar.lock"]
    assert not any("audit_violation" in ln for ln in s.stderr_lines)


def test_strace_parser_sees_writes_and_connects(tmp_path: Path) -> None:
    """The parser above must catch what it looks for, or the privacy test proves nothing."""
    log = tmp_path / "log"
    log.write_text(
        '12 openat(AT_FDCWD, "/home/u/.cache/x.db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 5\n'
        '12 openat(AT_FDCWD, "/models/u2netp.onnx", O_RDONLY|O_CLOEXEC) = 6\n'
        "12 connect(7, {sa_family=AF_INET, sin_port=htons(443), "
        'sin_addr=inet_addr("20.1.2.3")}, 16) = 0\n'
        "12 connect(8, {sa_family=AF_INET, sin_port=htons(5555), "
        'sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
    )
    writes, connects = _strace_findings(log, tmp_path / "run")
    assert len(writes) == 1 and "x.db" in writes[0]
    assert len(connects) == 1 and "20.1.2.3" in connects[0]


def test_audit_mode_blocks_writes_and_network(tmp_path: Path) -> None:
    """The hook itself: in audit mode a write, a spawn and a DNS lookup all fail loudly."""
    code = f"""
import socket, subprocess, sys
from offcut import audit
audit.enable()
results = []
for name, action in [
    ("write", lambda: open({str(tmp_path / "leak.png")!r}, "wb")),
    ("spawn", lambda: subprocess.run(["true"])),
    ("dns", lambda: socket.getaddrinfo("example.org", 80)),
    ("connect", lambda: socket.create_connection(("10.1.2.3", 80), timeout=1)),
]:
    try:
        action()
        results.append(name + ":allowed")
    except PermissionError:
        results.append(name + ":blocked")
print(",".join(results), audit.violations())
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "sidecar"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["write:blocked,spawn:blocked,dns:blocked,connect:blocked", "4"], (
        out
    )
    assert out.stderr.count("audit_violation") == 4
    assert not (tmp_path / "leak.png").exists()


def test_token_is_never_printed_or_logged(sidecar: Sidecar, raw: RawClient) -> None:
    raw.call({"op": "hello", "token": "wrong"})
    raw.call({"op": "segment", "image": {"width": 8, "height": 8, "format": "RGBA8"}}, bytes(256))
    assert sidecar.token not in "".join(sidecar.stderr_lines)
    assert "token" not in sidecar.ready


def test_connection_file_refused_with_wrong_permissions(tmp_path: Path) -> None:
    from offcut import connection

    cf = tmp_path / "sidecar.json"
    cf.write_text('{"port": 1, "token": "x", "pid": 1}')
    cf.chmod(0o644)
    with pytest.raises(RuntimeError, match="0600"):
        connection.read(cf)
    cf.chmod(0o600)
    assert connection.read(cf)["port"] == 1
