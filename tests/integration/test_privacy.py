"""The sidecar's privacy invariants (docs/architecture.md §3), each checked on a real ``offcut
serve`` process: loopback only, the token, nothing written to disk, no network, and that audit
mode blocks."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RawClient, Sidecar, need, sample_rgba, sidecar_env
from tests.integration import hostile
from tests.integration.test_security import veth_namespace


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


def need_proc() -> None:
    """These proofs read Linux's /proc; without it they fail under CI (never a silent skip)."""
    need(Path("/proc/self/net/tcp").exists(), "needs Linux /proc")


def test_listening_socket_is_loopback_only(sidecar: Sidecar, raw: RawClient) -> None:
    need_proc()
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


def _interface_addresses() -> list[tuple[socket.AddressFamily, str, int]]:
    """(family, address, scope id) of every usable non-loopback address on this machine's
    interfaces, IPv4 and IPv6, from ``ip -j addr``: the host name may resolve to 127.0.1.1 only,
    so resolving it proves nothing."""
    need(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    found = []
    for link in json.loads(out.stdout):
        for a in link.get("addr_info", []):
            ip = ipaddress.ip_address(a["local"])
            if ip.is_loopback or a.get("tentative") or a.get("dadfailed"):
                continue
            if ip.version == 4:
                found.append((socket.AF_INET, a["local"], 0))
            else:
                scope = socket.if_nametoindex(link["ifname"]) if ip.is_link_local else 0
                found.append((socket.AF_INET6, a["local"], scope))
    return found


def _answers(family: socket.AddressFamily, addr: str, scope: int, port: int) -> bool:
    with socket.socket(family) as s:
        s.settimeout(2)
        target = (addr, port) if family == socket.AF_INET else (addr, port, 0, scope)
        return s.connect_ex(target) == 0


def test_not_reachable_on_other_addresses(sidecar: Sidecar) -> None:
    """Connecting to the sidecar's port on any non-loopback address of this machine, IPv4 and
    IPv6, fails, while a control listener on all addresses answers on the same address (so each
    attempt could have succeeded). The addresses are the interfaces' own; as root (always under
    CI) a veth pair adds one more, so a machine with nothing but loopback is tested too."""
    addrs = _interface_addresses()
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0 or not addrs:
            _ns, host_ip, _ns_ip = stack.enter_context(veth_namespace())
            addrs.append((socket.AF_INET, host_ip, 0))
        controls = {socket.AF_INET: stack.enter_context(socket.create_server(("0.0.0.0", 0)))}
        if any(family == socket.AF_INET6 for family, _, _ in addrs):
            controls[socket.AF_INET6] = stack.enter_context(
                socket.create_server(("::", 0), family=socket.AF_INET6)
            )
        tried = []
        for family, addr, scope in addrs:
            if not _answers(family, addr, scope, controls[family].getsockname()[1]):
                continue  # not usable from here at all (its interface is down)
            tried.append(addr)
            assert not _answers(family, addr, scope, sidecar.port), f"the sidecar answers on {addr}"
    assert tried, f"not even the control listener answered on any of {addrs}"
    assert sidecar.alive()


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
        for p in root.rglob("*")
        if p.is_file()
    }


# Everything by which a process could put bytes in a file or on the network, syscall by syscall.
STRACE_TRACE = (
    "trace=open,openat,openat2,creat,truncate,rename,renameat,renameat2,unlink,unlinkat,"
    "mkdir,mkdirat,mknod,mknodat,link,linkat,symlink,symlinkat,setxattr,lsetxattr,fsetxattr,"
    "socket,connect,bind,sendto,sendmsg,sendmmsg,io_uring_setup"
)
# A syscall name at the start of a line, after strace's pid: text inside a sent buffer (image
# bytes that happen to spell "open(") is never taken for a call.
_LEAD = r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?"
_PATH_CALL = re.compile(
    _LEAD + r"(open|openat|openat2|creat|truncate|rename|renameat2?|unlink|unlinkat|mkdir|mkdirat|"
    r"mknod|mknodat|link|linkat|symlink|symlinkat|setxattr|lsetxattr|fsetxattr)\((.*)"
)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_INET = re.compile(
    r"sa_family=(AF_INET6?), sin6?_port=htons\((\d+)\), "
    r"(?:sin_addr=inet_addr\(\"([\d.]+)\"\)|sin6_flowinfo=[^,]*, inet_pton\(AF_INET6, \"([^\"]+)\")"
)
_UNIX_PATH = re.compile(r'sa_family=AF_UNIX, sun_path="')  # a path; abstract names print as @"
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


def _is_loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _outside(path: str, runtime: Path) -> bool:
    """Whether ``path`` (as strace printed it) lies outside the runtime directory. Relative
    paths and ".." count as outside: the sidecar only ever names its files absolutely."""
    if not path.startswith("/"):
        return True
    norm = os.path.normpath(path)
    return norm != str(runtime) and not norm.startswith(str(runtime) + "/")


def _file_finding(call: str, rest: str, runtime: Path) -> bool:
    """A call that writes to the file system somewhere other than the runtime directory."""
    paths = [m.group(1) for m in _STRING.finditer(rest.split(") = ")[0])]
    if call in ("open", "openat", "openat2"):
        head = rest.split(") = ")[0]
        if not _WRITE_FLAGS.search(head.split('"', 2)[-1] if paths else head):
            return False
        return any(p != "/dev/null" and _outside(p, runtime) for p in paths[:1])
    if call in ("setxattr", "lsetxattr", "fsetxattr", "creat", "mknod", "mknodat"):
        return call == "fsetxattr" or any(_outside(p, runtime) for p in paths[:1])
    if call in ("link", "linkat", "symlink", "symlinkat"):
        return True  # the sidecar makes no links anywhere
    names = paths[:2] if call.startswith("rename") else paths[:1]
    return any(_outside(p, runtime) for p in names)


def _net_finding(line: str) -> bool:
    """A network use that is not plain loopback TCP: datagram, raw or packet sockets, binds and
    connects and sends to any non-loopback address, UNIX sockets addressed by path (syslog,
    journald, D-Bus), io_uring (which could write without any of these syscalls)."""
    if re.search(_LEAD + r"io_uring_setup\(", line):
        return True
    sock = re.search(_LEAD + r"socket\((AF_\w+), (SOCK_\w+)", line)
    if sock:
        family, kind = sock.groups()
        if family == "AF_PACKET":
            return True
        return family in ("AF_INET", "AF_INET6") and kind in ("SOCK_DGRAM", "SOCK_RAW")
    call = re.search(_LEAD + r"(connect|bind|sendto|sendmsg|sendmmsg)\(", line)
    if not call:
        return False
    if _UNIX_PATH.search(line) or "sa_family=AF_PACKET" in line:
        return True
    for m in _INET.finditer(line):
        if not _is_loopback_ip(m.group(3) or m.group(4)):
            return True
    # An address this parser cannot read is flagged rather than missed.
    return call.group(1) in ("connect", "bind") and "AF_INET" in line and not _INET.search(line)


def _strace_findings(log: Path, runtime: Path) -> tuple[list[str], list[str]]:
    """(file-system writes outside the runtime dir, network uses other than loopback TCP) in a
    strace log written with ``STRACE_TRACE``."""
    writes, network = [], []
    for line in log.read_text(errors="replace").splitlines():
        if "resumed>" in line and "(" not in line.split("resumed>")[0]:
            continue  # the rest of a call whose arguments were on its "unfinished" line
        m = _PATH_CALL.search(line)
        if m and _file_finding(m.group(1), m.group(2), runtime):
            writes.append(line.strip())
        if _net_finding(line):
            network.append(line.strip())
    return writes, network


def serve_under_strace(
    tmp_path: Path,
    models_dir: Path,
    requests: list[dict],
    settle: Callable[[Sidecar], object] | None = None,
    **extra_env: str,
) -> tuple[Sidecar, Path, Path, dict[Path, dict]]:
    """Run a real sidecar under ``strace -f`` with HOME, TMPDIR and the XDG folders pointed at
    fresh folders, send it ``requests`` (segment options), stop it with the shutdown op (SIGTERM
    would reach strace), and return it, the strace log, its runtime dir and tree snapshots
    taken before it started (of HOME, TMPDIR and the models directory). ``settle`` runs before
    the shutdown (to wait for something the sidecar does after its last reply)."""
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
        **extra_env,
    )
    before = {d: _tree(d) for d in (home, tmp, models_dir)}
    wrapper = ["strace", "-f", "-qq", "-s", "256", "-o", str(log), "-e", STRACE_TRACE]
    s = Sidecar(runtime, models_dir, env=env, wrapper=wrapper)
    c = RawClient(s.port, s.token)
    try:
        for opts in requests:
            h, _ = c.call(
                {
                    "op": "segment",
                    "image": {"width": 200, "height": 150, "format": "RGBA8"},
                    "options": opts,
                },
                sample_rgba(200, 150),
            )
            assert h["kind"] == "result", h
        if settle is not None:
            settle(s)
        c.call({"op": "shutdown"})  # not SIGTERM: that would reach strace, not the sidecar
        assert s.proc.wait(60) == 0
    finally:
        c.close()
        s.stop()
    return s, log, runtime, before


def test_nothing_written_to_disk_and_no_network_while_serving(
    tmp_path: Path, models_dir: Path
) -> None:
    """Serve requests with every option under strace, which sees the syscalls of every library
    (ONNX Runtime and libzmq included, not only Python): nothing is written to the file system
    outside the runtime directory (connection file, lock), no socket but loopback TCP is used,
    nothing is sent or connected off loopback. HOME, TMPDIR and the models directory are
    unchanged afterwards, and audit mode saw nothing either."""
    need_proc()
    s, log, runtime, before = serve_under_strace(
        tmp_path,
        models_dir,
        [
            {},
            {"refine": True},
            {"cutout": True, "decontaminate": True},
            {"mask_format": "GRAYF32", "threshold": 0.5},
        ],
    )
    writes, network = _strace_findings(log, runtime)
    text = log.read_text(errors="replace")
    assert "openat(" in text or "open(" in text, "strace saw nothing"
    assert "socket(AF_INET, SOCK_STREAM" in text, "strace did not see libzmq's socket"
    assert not writes, writes[:5]
    assert not network, network[:5]
    for d, snapshot in before.items():
        assert _tree(d) == snapshot, f"files changed under {d}"
    assert sorted(p.name for p in runtime.iterdir()) == ["sidecar.lock"]
    assert not any("audit_violation" in ln for ln in s.stderr_lines)


# Lines as strace 6.1 prints them (captured from a C program making each call), each with what
# the parser must make of it: "write", "network" or None (allowed).
_STRACE_SAMPLES = [
    ('openat(AT_FDCWD, "/home/u/.cache/x.db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 5', "write"),
    ('openat(AT_FDCWD, "/models/u2netp.onnx", O_RDONLY|O_CLOEXEC) = 6', None),
    ('openat(AT_FDCWD, "/R/sidecar.lock", O_RDWR|O_CREAT|O_CLOEXEC, 0600) = 3', None),
    ('openat(AT_FDCWD, "/R/../leak.png", O_WRONLY|O_CREAT|O_TRUNC, 0600) = 3', "write"),
    ('openat(AT_FDCWD, "leak.png", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3', "write"),
    ('openat(AT_FDCWD, "/dev/shm/leak", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0600) = 7', "write"),
    ('openat(AT_FDCWD, "/dev/null", O_WRONLY) = 7', None),
    ('openat2(AT_FDCWD, "/tmp/leak", {flags=O_WRONLY|O_CREAT, mode=0600, resolve=0}, 24) = 3',
     "write"),
    ('creat("/tmp/leak", 0600) = 3', "write"),
    ('mknodat(AT_FDCWD, "/tmp/leak.fifo", S_IFIFO|0600) = 0', "write"),
    ('mknod("/tmp/leak.node", S_IFREG|0600) = 0', "write"),
    ('setxattr("/home/u/photo.png", "user.x", "pixels", 6, 0) = 0', "write"),
    ('fsetxattr(3, "user.x", "pixels", 6, 0) = 0', "write"),
    ('linkat(AT_FDCWD, "/proc/self/fd/7", AT_FDCWD, "/tmp/leak", AT_SYMLINK_FOLLOW) = 0', "write"),
    ('rename("/R/.sidecar.json.7.tmp", "/R/sidecar.json") = 0', None),
    ('rename("/R/.sidecar.json.7.tmp", "/tmp/leak") = 0', "write"),
    ('unlink("/R/sidecar.json") = 0', None),
    ('mkdir("/R", 0700) = -1 EEXIST (File exists)', None),
    ('mkdir("/tmp/leak", 0700) = 0', "write"),
    ('truncate("/home/u/photo.png", 0) = 0', "write"),
    ("connect(7, {sa_family=AF_INET, sin_port=htons(443), "
     'sin_addr=inet_addr("20.1.2.3")}, 16) = 0', "network"),
    ("connect(8, {sa_family=AF_INET, sin_port=htons(5555), "
     'sin_addr=inet_addr("127.0.0.1")}, 16) = 0', None),
    ("connect(7, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), "
     'inet_pton(AF_INET6, "2001:db8::7", &sin6_addr), sin6_scope_id=0}, 28) = -1 EHOSTUNREACH',
     "network"),
    ('connect(11, {sa_family=AF_UNIX, sun_path="/dev/log"}, 110) = 0', "network"),
    ("socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 10", None),
    ("socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 10", None),
    ("socket(AF_INET, SOCK_DGRAM, IPPROTO_IP) = 3", "network"),
    ("socket(AF_INET6, SOCK_DGRAM|SOCK_CLOEXEC, IPPROTO_UDP) = 4", "network"),
    ("socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) = 4", "network"),
    ("socket(AF_PACKET, SOCK_RAW, htons(0 /* ETH_P_??? */)) = 8", "network"),
    ('sendto(3, "pixels", 6, MSG_DONTROUTE, {sa_family=AF_INET, sin_port=htons(9), '
     'sin_addr=inet_addr("198.51.100.7")}, 16) = -1 ENETUNREACH (Network is unreachable)',
     "network"),
    ('sendto(4, "pixels", 6, 0, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), '
     'inet_pton(AF_INET6, "2001:db8::7", &sin6_addr), sin6_scope_id=0}, 28) = 6', "network"),
    ('sendto(4, "pixels", 6, 0, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), '
     'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 6', None),
    ('sendto(3, "pixels", 6, 0, {sa_family=AF_INET, sin_port=htons(9), '
     'sin_addr=inet_addr("127.0.0.1")}, 16) = 6', None),
    ('sendto(13, "\\3\\0\\0pixels", 8192, 0, NULL, 0) = 8192', None),  # libzmq, connected
    ('sendto(13, "mkdir(\\"/tmp/x\\", 0) socket(AF_INET, SOCK_DGRAM", 42, 0, NULL, 0) = 42', None),
    ('sendto(11, "x", 1, 0, {sa_family=AF_UNIX, sun_path="/dev/log"}, 110) = 1', "network"),
    ("sendto(10, [{nlmsg_len=20, nlmsg_type=RTM_GETADDR, nlmsg_flags=NLM_F_REQUEST|NLM_F_DUMP, "
     "nlmsg_seq=1, nlmsg_pid=0}, {ifa_family=AF_UNSPEC, ...}], 20, 0, {sa_family=AF_NETLINK, "
     "nl_pid=0, nl_groups=00000000}, 12) = 20", None),  # libzmq's getifaddrs()
    ("sendmsg(3, {msg_name={sa_family=AF_INET, sin_port=htons(9), "
     'sin_addr=inet_addr("198.51.100.7")}, msg_namelen=16, msg_iov=[{iov_base="pixels", '
     "iov_len=6}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, MSG_DONTROUTE) = -1 ENETUNREACH",
     "network"),
    ("sendmmsg(3, [{msg_hdr={msg_name={sa_family=AF_INET, sin_port=htons(9), "
     'sin_addr=inet_addr("198.51.100.7")}, msg_namelen=16, msg_iov=[{iov_base="pixels", '
     "iov_len=6}], msg_iovlen=1, msg_controllen=0, msg_flags=0}}], 1, MSG_DONTROUTE) = -1",
     "network"),
    ('sendto(3, "sin_addr=inet_addr(\\"127.0.0.1\\")", 33, 0, {sa_family=AF_INET, '
     'sin_port=htons(9), sin_addr=inet_addr("198.51.100.7")}, 16 <unfinished ...>', "network"),
    ("bind(10, {sa_family=AF_INET, sin_port=htons(0), "
     'sin_addr=inet_addr("127.0.0.1")}, 16) = 0', None),
    ("bind(5, {sa_family=AF_INET, sin_port=htons(0), "
     'sin_addr=inet_addr("0.0.0.0")}, 16) = 0', "network"),
    ("bind(7, {sa_family=AF_INET6, sin6_port=htons(0), sin6_flowinfo=htonl(0), "
     'inet_pton(AF_INET6, "::", &sin6_addr), sin6_scope_id=0}, 28) = 0', "network"),
    ("bind(10, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 0", None),
    ("io_uring_setup(8, {flags=0, sq_thread_cpu=0, sq_thread_idle=0}) = 5", "network"),
]  # fmt: skip


def test_strace_parser_sees_writes_and_connects(tmp_path: Path) -> None:
    """The parser above must catch what it looks for, or the privacy test proves nothing: every
    sample line is classified as expected (with strace's pid prefix, as ``-f`` writes it)."""
    runtime = Path("/R")
    log = tmp_path / "log"
    log.write_text("".join(f"12 {line}\n" for line, _ in _STRACE_SAMPLES))
    writes, network = _strace_findings(log, runtime)
    expected_writes = [f"12 {line}" for line, kind in _STRACE_SAMPLES if kind == "write"]
    expected_network = [f"12 {line}" for line, kind in _STRACE_SAMPLES if kind == "network"]
    assert writes == expected_writes
    assert network == expected_network


def test_strace_catches_a_planted_leak_that_switches_audit_mode_off(
    tmp_path: Path, models_dir: Path
) -> None:
    """The strace proof does not lean on audit mode: a planted dependency that switches the hook
    off (any code in the process can) and then, on a request, sends a UDP datagram off loopback
    (to TEST-NET-2 with MSG_DONTROUTE, so it fails locally and never leaves), makes a FIFO, sets
    an extended attribute and opens a file for writing is seen doing each of them, while audit
    mode reports nothing."""
    need_proc()
    planted = tmp_path / "planted"
    attacks = ["udp_sendto", "mkfifo", "setxattr", "write_file"]
    s, log, runtime, _ = serve_under_strace(
        tmp_path,
        models_dir,
        [{}],
        settle=lambda sidecar: hostile.wait(sidecar, 1),
        **hostile.plant(planted, attacks, evade=True),
    )
    outcomes = hostile.results(s.stderr_lines)
    assert len(outcomes) == 1 and outcomes[0]["mkfifo"] == "allowed", outcomes
    assert outcomes[0]["udp_sendto"] == "failed:ENETUNREACH", outcomes
    assert not any("audit_violation" in ln for ln in s.stderr_lines), "the hook was not evaded"
    writes, network = _strace_findings(log, runtime)
    victim = str(planted / "victim")
    assert [ln for ln in network if "socket(AF_INET, SOCK_DGRAM" in ln], network
    assert [ln for ln in network if "sendto(" in ln and '"198.51.100.7"' in ln], network
    assert [ln for ln in writes if "mknod" in ln and f"{victim}/fifo" in ln], writes
    assert [ln for ln in writes if "setxattr(" in ln and f"{victim}/xattr-target" in ln], writes
    assert [ln for ln in writes if "open" in ln and f"{victim}/late.bin" in ln], writes


def test_audit_mode_blocks_writes_and_network(tmp_path: Path) -> None:
    """The hook itself: in audit mode a write, a spawn and a DNS lookup all fail loudly."""
    code = f"""
import socket, subprocess, sys
from offcut.server import audit
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
    from offcut.server import instance as connection

    cf = tmp_path / "sidecar.json"
    cf.write_text('{"port": 1, "token": "x", "pid": 1}')
    cf.chmod(0o644)
    with pytest.raises(RuntimeError, match="0600"):
        connection.read(cf)
    cf.chmod(0o600)
    assert connection.read(cf)["port"] == 1
