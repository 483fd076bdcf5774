"""Second, independent proofs of the privacy claims that otherwise rest on strace alone.

- "No file writes, even through C libraries": a real sidecar serving every option with its
  working directory, HOME, TMPDIR and XDG folders pointed at fresh folders leaves them untouched,
  and no file that appeared or changed in /tmp, /var/tmp or /dev/shm meanwhile holds the image's
  bytes; and /proc, sampled every few milliseconds during jobs, never shows the sidecar holding a
  file open for writing other than its own runtime files.
- "Outbound network only loopback": the same sampler never sees a socket other than loopback TCP
  (from the sidecar's own /proc/PID/net tables), and a sidecar in a network namespace whose only
  way off loopback is an interface we count serves every request while that interface transmits
  nothing.

Each detector is also run against a sidecar with a planted dependency (tests/integration/
hostile.py) that switches audit mode off and leaks, and must report it: a check that cannot fail
proves nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, SIDECAR_SRC, RawClient, Sidecar, need, sample_rgba, sidecar_env
from tests.integration import hostile

SHAPES = [
    (320, 240, {}),
    (320, 240, {"refine": True}),
    (320, 240, {"cutout": True, "decontaminate": True}),
    (200, 150, {"mask_format": "GRAYF32", "threshold": 0.5}),
]


def _segment(c: RawClient, width: int, height: int, opts: dict, image: bytes | None = None) -> None:
    h, _ = c.call(
        {
            "op": "segment",
            "image": {"width": width, "height": height, "format": "RGBA8"},
            "options": opts,
        },
        image if image is not None else sample_rgba(width, height),
    )
    assert h["kind"] == "result", h


# ------------------------------------------------------------------------------ files


def _full_tree(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every entry under ``root`` (folders, links and files): kind and size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime)
    return out


def _changed_since(roots: list[Path], since: float) -> Iterator[Path]:
    """Regular files under ``roots`` created or modified at or after ``since`` (other processes
    write there too: the caller decides which are the sidecar's by their content)."""
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root, onerror=lambda _e: None):
            for name in filenames:
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = p.lstat()
                    if stat.S_ISREG(st.st_mode) and max(st.st_mtime, st.st_ctime) >= since:
                        yield p


def _holds(path: Path, marker: bytes, limit: int = 512 << 20) -> bool:
    with contextlib.suppress(OSError):
        if path.stat().st_size <= limit:
            return marker in path.read_bytes()
    return False


FRESH = ["cwd", "home", "tmp", "cache", "config", "data", "state", "xdg_runtime"]


def _serve_in_fresh_folders(
    tmp_path: Path, models_dir: Path, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Serve every option with the working directory, HOME, TMPDIR and every XDG folder pointed
    at fresh empty folders under ``tmp_path/fresh``, and report what changed: in those folders
    (every entry, not only files), in the models directory and the runtime directory, and which
    files appearing or changing in /tmp, /var/tmp or /dev/shm meanwhile hold the image's random
    marker bytes (other processes write there too; only the sidecar has the marker)."""
    fresh = tmp_path / "fresh"
    for name in FRESH:
        (fresh / name).mkdir(parents=True)
    runtime = tmp_path / "run"
    env = sidecar_env(
        runtime,
        models_dir,
        HOME=str(fresh / "home"),
        TMPDIR=str(fresh / "tmp"),
        XDG_CACHE_HOME=str(fresh / "cache"),
        XDG_CONFIG_HOME=str(fresh / "config"),
        XDG_DATA_HOME=str(fresh / "data"),
        XDG_STATE_HOME=str(fresh / "state"),
        XDG_RUNTIME_DIR=str(fresh / "xdg_runtime"),
        PYTHONDONTWRITEBYTECODE="1",  # the .pyc cache is Python's, written before audit mode
        **(extra_env or {}),
    )
    marker = os.urandom(48)
    width, height = 320, 240
    image = bytearray(sample_rgba(width, height))
    for row in range(0, height, 16):  # the marker at the start of every 16th row
        image[row * width * 4 : row * width * 4 + len(marker)] = marker
    shared = [Path(p) for p in ("/tmp", "/var/tmp", "/dev/shm") if Path(p).is_dir()]
    before = _full_tree(fresh)
    models_before = _full_tree(models_dir)
    started = time.time() - 1.0  # file-system timestamps may be coarser than time.time()
    cwd = ["sh", "-c", 'cd "$1" || exit 1; shift; exec "$@"', "sh", str(fresh / "cwd")]
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"], env=env, wrapper=cwd)
    c = RawClient(s.port, s.token)
    try:
        for _, _, opts in SHAPES:
            _segment(c, width, height, opts, bytes(image))
        if "OFFCUT_HOSTILE" in env:
            hostile.wait(s, len(SHAPES))
        c.call({"op": "shutdown"})
        assert s.proc.wait(30) == 0
    finally:
        c.close()
        s.stop()
    after = _full_tree(fresh)
    return {
        "fresh": sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
        "models_changed": _full_tree(models_dir) != models_before,
        "runtime": sorted(p.name for p in runtime.iterdir()),
        "marker_in": [p for p in _changed_since(shared, started) if _holds(p, marker)],
        "violations": [ln for ln in s.stderr_lines if "audit_violation" in ln],
    }


def test_no_file_appears_anywhere_the_sidecar_could_write(tmp_path: Path, models_dir: Path) -> None:
    """Not strace: after serving every option, the fresh working directory, HOME, TMPDIR and XDG
    folders are exactly as they were (not one entry), the models directory is unchanged, the
    runtime directory holds only its lock, and no new or changed file in /tmp, /var/tmp or
    /dev/shm holds the image's bytes."""
    seen = _serve_in_fresh_folders(tmp_path, models_dir)
    assert seen == {"fresh": [], "models_changed": False, "runtime": ["sidecar.lock"],
                    "marker_in": [], "violations": []}  # fmt: skip


def test_fresh_folders_and_marker_search_see_a_planted_write(
    tmp_path: Path, models_dir: Path
) -> None:
    """Both halves of the check above can fail: a planted dependency that switches audit mode off
    and creates a file in TMPDIR on each request shows up in the fresh folders, and a new file
    holding the marker is found by the content search."""
    victim = tmp_path / "fresh" / "tmp"
    env = hostile.plant(tmp_path / "planted", ["write_file"], evade=True)
    env["OFFCUT_HOSTILE_DIR"] = str(victim)
    seen = _serve_in_fresh_folders(tmp_path, models_dir, env)
    assert seen["fresh"] == ["tmp", "tmp/late.bin"], seen  # the folder's mtime, and the file
    marker = os.urandom(48)
    probe = tmp_path / "probe.bin"
    since = time.time() - 1.0
    probe.write_bytes(os.urandom(1000) + marker + os.urandom(1000))
    found = [p for p in _changed_since([tmp_path], since) if _holds(p, marker)]
    assert found == [probe], found


# ------------------------------------------------------------------------------ /proc sampler

_SOCKET_TABLES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6", "icmp",
                  "icmp6", "packet", "unix", "netlink")  # fmt: skip


def _hex_endpoint(text: str) -> tuple[str, int]:
    """An ``ADDR:PORT`` from /proc/net/{tcp,udp,...}: the address in 32-bit words in host
    (little-endian) order, the port in hex."""
    hexaddr, port = text.split(":")
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def _ip_kind(ip: str) -> str:
    """Classify an address as "loopback", "any" (unspecified) or "other"; an IPv4-mapped IPv6
    address is read as the IPv4 address it carries."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return "loopback" if addr.is_loopback else "any" if addr.is_unspecified else "other"


Endpoint = tuple[str, int]


def _socket_table(pid: int) -> dict[str, tuple[str, Endpoint | None, Endpoint | None]]:
    """inode -> (table, local, remote) for every socket in the process's network namespace."""
    found: dict[str, tuple[str, Endpoint | None, Endpoint | None]] = {}
    for table in _SOCKET_TABLES:
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            for line in lines:
                cols = line.split()
                if table in ("packet", "unix", "netlink"):
                    inode = cols[{"packet": 8, "unix": 6, "netlink": 9}[table]]
                    found[inode] = (table, None, None)
                else:
                    local, remote = _hex_endpoint(cols[1]), _hex_endpoint(cols[2])
                    found[cols[9]] = (table, local, remote)
    return found


class ProcSampler(threading.Thread):
    """Reads /proc/PID/fd, fdinfo and net tables in a loop and keeps what breaks the rules:
    a descriptor above 2 open for writing that is not one of the sidecar's runtime files, /dev/null
    or an in-memory object; a socket that is not TCP between loopback addresses (netlink is
    allowed: libzmq lists the interfaces once at start)."""

    def __init__(self, pid: int, runtime: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.runtime = pid, runtime
        self.stop = threading.Event()
        self.samples = 0
        self.findings: set[str] = set()
        self.tcp_seen: set[tuple[Endpoint, Endpoint]] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                self.sample()
            time.sleep(0.002)

    def sample(self) -> None:
        sockets: dict[str, str] = {}
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                info = Path(f"/proc/{self.pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue  # closed while we looked
            if target.startswith("socket:["):
                sockets[target[8:-1]] = fd
                continue
            flags = int(
                next(ln.split()[1] for ln in info.splitlines() if ln.startswith("flags")), 8
            )
            if int(fd) <= 2 or (flags & os.O_ACCMODE) == os.O_RDONLY:
                continue
            if target.startswith(("anon_inode:", "/memfd:")) or target == "/dev/null":
                continue
            if Path(target).parent == self.runtime:
                continue
            self.findings.add(f"writable {target} (flags {flags:o})")
        table = _socket_table(self.pid)
        for inode, fd in sockets.items():
            kind, local, remote = table.get(inode, ("?", None, None))
            if kind == "netlink":
                continue
            if kind == "?":
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{self.pid}/fd/{fd}") == f"socket:[{inode}]":
                        self.findings.add(f"socket {inode} in no table")  # still open: unknown
                continue
            if (
                kind in ("tcp", "tcp6")
                and local is not None
                and remote is not None
                and _ip_kind(local[0]) == "loopback"
                and _ip_kind(remote[0]) in ("loopback", "any")
            ):
                self.tcp_seen.add((local, remote))
            else:
                self.findings.add(f"{kind} socket {local} -> {remote}")
        self.samples += 1


def _sample_while_serving(
    tmp_path: Path, models_dir: Path, env_extra: dict[str, str], after_first: float = 0.0
) -> tuple[ProcSampler, Sidecar]:
    need(Path("/proc/self/fdinfo").is_dir(), "needs Linux /proc")
    runtime = tmp_path / "run"
    env = sidecar_env(runtime, models_dir, **env_extra)
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"], env=env)
    sampler = ProcSampler(s.proc.pid, runtime)
    sampler.start()
    c = RawClient(s.port, s.token)
    try:
        for i, (width, height, opts) in enumerate(SHAPES):
            _segment(c, width, height, opts)
            if i == 0 and after_first:
                time.sleep(after_first)
        st, _ = c.call({"op": "status"})
    finally:
        sampler.stop.set()
        sampler.join(10)
        c.close()
        s.stop()
    if st["audit_violations"]:
        sampler.findings.add(f"{st['audit_violations']} audit violations")
    return sampler, s


def test_proc_shows_only_read_only_files_and_loopback_tcp_during_jobs(
    tmp_path: Path, models_dir: Path
) -> None:
    """Not strace: while the sidecar decodes, infers, refines, decontaminates and encodes, /proc
    shows it holding no file open for writing but its runtime files (and stdout/stderr), and no
    socket but TCP between loopback addresses: no UDP, raw, packet or UNIX socket, no listener on
    another address, no peer off loopback. The sampler saw the listener and our connection, so
    it was looking."""
    sampler, _ = _sample_while_serving(tmp_path, models_dir, {})
    assert not sampler.findings, sampler.findings
    assert sampler.samples >= 20, sampler.samples
    assert len(sampler.tcp_seen) >= 2, sampler.tcp_seen  # the listener and our connection


def test_proc_sampler_sees_a_planted_leak(tmp_path: Path, models_dir: Path) -> None:
    """The same sampler against a planted dependency that, with audit mode switched off, opens a
    file for writing and a UDP socket connected to a TEST-NET-2 address (connect sends nothing)
    during the first request: both are reported."""
    env = hostile.plant(tmp_path / "planted", ["write_file", "udp_connected"], evade=True)
    sampler, s = _sample_while_serving(tmp_path, models_dir, env, after_first=0.5)
    assert hostile.results(s.stderr_lines)[0] == {"write_file": "allowed",
                                                  "udp_connected": "allowed"}  # fmt: skip
    late = tmp_path / "planted" / "victim" / "late.bin"
    assert any(f.startswith(f"writable {late} ") for f in sampler.findings), sampler.findings
    assert any(
        f.startswith("udp socket") and "'198.51.100.7', 9)" in f for f in sampler.findings
    ), sampler.findings


# ------------------------------------------------------------------------------ namespace

_IN_NAMESPACE = """
import json, sys
from pathlib import Path
cfg = json.loads(sys.argv[1])
sys.path[:0] = cfg["path"]
from tests.conftest import RawClient, Sidecar, sample_rgba, sidecar_env
from tests.integration import hostile
runtime, models = Path(cfg["runtime"]), Path(cfg["models"])
s = Sidecar(runtime, models, ["--idle-timeout", "0"],
            env=sidecar_env(runtime, models, **cfg["env"]))
c = RawClient(s.port, s.token)
kinds = []
try:
    for width, height, opts in cfg["shapes"]:
        h, _ = c.call({"op": "segment", "options": opts,
                       "image": {"width": width, "height": height, "format": "RGBA8"}},
                      sample_rgba(width, height))
        kinds.append(h["kind"])
    if cfg["env"].get("OFFCUT_HOSTILE"):
        hostile.wait(s, len(cfg["shapes"]))
    st, _ = c.call({"op": "status"})
finally:
    c.close()
    s.stop()
print(json.dumps({"kinds": kinds, "violations": st["audit_violations"],
                  "hostile": hostile.results(s.stderr_lines)}))
"""


def _ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout


@contextlib.contextmanager
def counted_namespace() -> Iterator[tuple[str, str]]:
    """A network namespace with loopback up and one way off it: a veth interface carrying the
    default route to a peer in a second namespace that has no address, so nothing sent can go
    anywhere, but everything sent is counted. IPv6 is off in both (no router solicitations or
    multicast reports as background traffic, and no IPv6 route to leave by). Yields (namespace,
    interface)."""
    need(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    need(os.geteuid() == 0, "creating a network namespace needs root")
    tag = f"oc{os.getpid() % 100000}c"
    ns, sink = f"offcut-{tag}", f"offcut-{tag}-sink"
    octet = random.Random(os.getpid()).randrange(0, 250)
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    need(made.returncode == 0, f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _ip("netns", "add", sink)
        for name in (ns, sink):  # /proc/sys/net is the reading process's namespace's
            _ip("netns", "exec", name, "sh", "-c",
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")  # fmt: skip
        _ip("-n", ns, "link", "add", "out0", "type", "veth", "peer", "name", "in0", "netns", sink)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"10.203.{octet}.1/30", "dev", "out0")
        _ip("-n", ns, "link", "set", "out0", "up")
        _ip("-n", sink, "link", "set", "in0", "up")
        _ip("-n", ns, "route", "add", "default", "via", f"10.203.{octet}.2")
        yield ns, "out0"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", sink], capture_output=True)


def _tx_packets(ns: str, ifname: str) -> int:
    link = json.loads(_ip("-n", ns, "-s", "-j", "link", "show", ifname))[0]
    return int(link["stats64"]["tx"]["packets"])


def _serve_in(ns: str, tmp_path: Path, models_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    cfg = {
        "path": [str(ROOT), str(SIDECAR_SRC)],
        "runtime": str(tmp_path / "run"),
        "models": str(models_dir),
        "env": env,
        "shapes": SHAPES,
    }
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _IN_NAMESPACE, json.dumps(cfg)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_serves_in_a_namespace_where_every_packet_off_loopback_is_counted(
    tmp_path: Path, models_dir: Path
) -> None:
    """Not strace: the sidecar and its client run in a network namespace whose only way off
    loopback is a veth we count. Every request, with every option, is served, and the veth
    transmits nothing at all (not even an ARP request, which any attempt to reach any address
    off loopback would cause, DNS included)."""
    with counted_namespace() as (ns, ifname):
        time.sleep(0.5)  # let the link settle before the baseline
        before = _tx_packets(ns, ifname)
        seen = _serve_in(ns, tmp_path, models_dir, {})
        after = _tx_packets(ns, ifname)
    assert seen["kinds"] == ["result"] * len(SHAPES), seen
    assert seen["violations"] == 0
    assert after - before == 0, f"{after - before} packets left loopback"


def test_namespace_counter_sees_a_planted_datagram(tmp_path: Path, models_dir: Path) -> None:
    """The counter against a planted dependency that switches audit mode off and sends one UDP
    datagram per request to a TEST-NET-2 address by the default route: the veth transmits (the
    ARP request for the gateway, which nobody answers, so the datagram itself goes nowhere)."""
    env = hostile.plant(tmp_path / "planted", ["udp_routed"], evade=True)
    with counted_namespace() as (ns, ifname):
        time.sleep(0.5)
        before = _tx_packets(ns, ifname)
        seen = _serve_in(ns, tmp_path, models_dir, env)
        after = _tx_packets(ns, ifname)
    assert seen["kinds"] == ["result"] * len(SHAPES), seen
    assert seen["hostile"] and all(r == {"udp_routed": "allowed"} for r in seen["hostile"]), seen
    assert after - before > 0, "a datagram sent by the default route was not counted"
