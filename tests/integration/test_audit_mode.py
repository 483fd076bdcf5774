"""Audit mode (``offcut serve --audit``) against what slipped past it before (Security II,
finding 8): writes through descriptors opened before it started, FIFOs and device nodes, extended
attributes, SQLite, datagrams sent without ``connect``, UNIX datagrams, ctypes and syslog.

Each attack runs in a process set up like the sidecar (the instance lock held in a private
runtime directory, a libzmq socket on loopback, logging to stderr) with audit mode enabled, and
must be stopped and reported, while the sidecar's own channels keep working. The last test plants
the same attacks in a real ``offcut serve --audit`` (tests/integration/hostile.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SIDECAR_SRC, RawClient, Sidecar, sample_rgba, sidecar_env
from tests.integration import hostile

# The process under attack: everything the sidecar has open when it calls audit.enable().
_SIDECAR_LIKE = textwrap.dedent("""
    import errno, fcntl, json, logging, os, socket, stat, sys
    import zmq
    cfg = json.loads(sys.argv[1])
    os.environ["OFFCUT_RUNTIME_DIR"] = cfg["runtime"]
    from offcut import paths
    from offcut.server import audit
    from offcut.server import instance as connection
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    connection.ensure_runtime_dir()
    lock = connection.InstanceLock()
    assert lock.acquire()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    ns = {"os": os, "socket": socket, "stat": stat,
          "P": lambda name: os.path.join(cfg["victim"], name)}
    exec(cfg["setup"], ns)
    audit.enable()
    try:
        exec(cfg["attack"], ns)
        outcome = "allowed"
    except PermissionError:
        outcome = "blocked"
    except OSError as exc:
        outcome = "failed:" + errno.errorcode.get(exc.errno or 0, "?")
    # The sidecar's own channels after the attack: the log, libzmq on loopback, the lock.
    logging.getLogger("offcut.sidecar").info(json.dumps({"event": "still_logging"}))
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    dealer.send(b"ping")
    zmq_ok = bool(router.poll(5000)) and router.recv_multipart()[-1] == b"ping"
    probe = os.open(paths.lock_file(), os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock_held = False
    except BlockingIOError:
        lock_held = True
    finally:
        os.close(probe)
    print(json.dumps({"outcome": outcome, "violations": audit.violations(), "zmq": zmq_ok,
                      "lock_held": lock_held}))
""")  # fmt: skip

_PRE_FD = 'fd = os.open(P("leak.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)'
_UDP = "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
_NOROUTE = '(b"pixels", socket.MSG_DONTROUTE, ("198.51.100.7", 9))'

# name: (code run before audit.enable(), the attack, expected outcome, expected audit event)
ATTACKS: dict[str, tuple[str, str, str, str]] = {
    "preopened_os_write": (_PRE_FD, 'os.write(fd, b"pixels")', "failed:EBADF", "preopened_fd"),
    "preopened_os_writev": (_PRE_FD, 'os.writev(fd, [b"pix", b"els"])', "failed:EBADF",
                            "preopened_fd"),
    "preopened_os_pwrite": ('fd = os.open(P("leak.bin"), os.O_RDWR | os.O_CREAT, 0o600)',
                            'os.pwrite(fd, b"pixels", 0)', "failed:EBADF", "preopened_fd"),
    "preopened_file_object": ('f = open(P("leak.bin"), "w")', 'f.write("pixels"); f.flush()',
                              "failed:EBADF", "preopened_fd"),
    "preopened_udp_connected": (f'u = {_UDP}; u.connect(("198.51.100.7", 9))',
                                'u.send(b"pixels", socket.MSG_DONTROUTE)', "failed:ENOTSOCK",
                                "preopened_fd"),
    "preopened_unix_to_a_log_socket": (
        'u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); u.connect(P("log.sock"))',
        'u.send(b"pixels")', "failed:ENOTSOCK", "preopened_fd"),
    "preopened_rw_file_still_reads": (
        'open(P("cache.bin"), "wb").write(b"hello"); fd = os.open(P("cache.bin"), os.O_RDWR); '
        "os.read(fd, 2)",
        'assert os.read(fd, 9) == b"llo", "reading broke"; os.write(fd, b"pixels")',
        "failed:EBADF", "preopened_fd"),
    "mkfifo": ("", 'os.mkfifo(P("leak.fifo"))', "blocked", "os.mkfifo"),
    "mkfifo_via_posix": ("import posix", 'posix.mkfifo(P("leak.fifo"))', "blocked", "os.mkfifo"),
    "mknod": ("", 'os.mknod(P("leak.node"), 0o600 | stat.S_IFREG)', "blocked", "os.mknod"),
    "setxattr": ('open(P("x"), "w").close()', 'os.setxattr(P("x"), "user.offcut", b"pixels")',
                 "blocked", "os.setxattr"),
    "sqlite": ("import sqlite3", 'sqlite3.connect(P("leak.db")).execute("create table t(x)")',
               "blocked", "sqlite3.connect"),
    "udp_sendto": ("", f"{_UDP}.sendto{_NOROUTE}", "blocked", "socket.sendto"),
    "udp_sendmsg": ("", f'{_UDP}.sendmsg([b"pixels"], [], socket.MSG_DONTROUTE, '
                        '("198.51.100.7", 9))', "blocked", "socket.sendmsg"),
    # IPv6 ignores MSG_DONTROUTE: a link-local address scoped to lo cannot leave the machine.
    "udp6_sendto": ("", 'socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"pixels", '
                        '("fe80::7", 9, 0, socket.if_nametoindex("lo")))', "blocked",
                    "socket.sendto"),
    "unix_sendto_a_log_socket": ("", 'socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto('
                                     'b"pixels", P("log.sock"))', "blocked", "socket.sendto"),
    "ctypes_libc_mkfifo": ("import ctypes; libc = ctypes.CDLL(None)",
                           'libc.mkfifo(P("leak.fifo").encode(), 0o600)', "blocked",
                           "ctypes.dlsym"),
    "syslog": ("import syslog", 'syslog.syslog("offcut audit test: syslog was let through")',
               "blocked", "syslog.syslog"),
}  # fmt: skip


@contextlib.contextmanager
def _log_socket(path: Path) -> Iterator[socket.socket]:
    """A UNIX datagram socket in this (test) process, standing in for /dev/log."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as r:
        r.bind(str(path))
        r.setblocking(False)
        yield r


def _run_sidecar_like(tmp_path: Path, setup: str, attack: str) -> tuple[dict, str]:
    """Run the attack in a fresh sidecar-like process; its files go to ``tmp_path/victim``."""
    cfg = {"runtime": str(tmp_path / "run"), "victim": str(tmp_path / "victim"), "setup": setup,
           "attack": attack}  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(SIDECAR_SRC))
    out = subprocess.run([sys.executable, "-c", _SIDECAR_LIKE, json.dumps(cfg)], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def _violations(stderr: str) -> list[dict]:
    return [json.loads(ln) for ln in stderr.splitlines() if '"audit_violation"' in ln]


_EXPECTED_FILES = {"leak.bin": b"", "x": b"", "cache.bin": b"hello"}


def _traces_left(victim: Path) -> list[str]:
    """What an attack left behind in its folder: new names, bytes, extended attributes."""
    left = []
    for p in victim.iterdir():
        if p.name == "log.sock":
            continue
        if p.is_symlink() or not p.is_file() or p.read_bytes() != _EXPECTED_FILES.get(p.name):
            left.append(p.name)
        with contextlib.suppress(OSError):  # tmpfs without user xattrs: nothing to find
            if os.listxattr(p):
                left.append(f"{p.name} xattrs {os.listxattr(p)}")
    return left


@pytest.mark.parametrize("name", list(ATTACKS))
def test_audit_mode_stops_and_reports(tmp_path: Path, name: str) -> None:
    """The attack fails (PermissionError, or EBADF/ENOTSOCK on a descriptor that audit mode
    disarmed when it started), exactly one violation is reported for it and nothing reaches the
    disk or the log socket, while stderr logging, libzmq's loopback socket and the instance lock
    (a descriptor open for writing before enable(), but the sidecar's own) keep working."""
    setup, attack, expected, event = ATTACKS[name]
    victim = tmp_path / "victim"
    victim.mkdir()
    with _log_socket(victim / "log.sock") as log_sock:
        result, stderr = _run_sidecar_like(tmp_path, setup, attack)
        with pytest.raises(BlockingIOError):
            got = log_sock.recv(100)
            pytest.fail(f"the log socket received {got!r}")
    assert result["outcome"] == expected, (result, stderr)
    found = _violations(stderr)
    assert [v["audit_event"] for v in found] == [event], stderr
    assert result["violations"] == 1, stderr
    assert result["zmq"] and result["lock_held"], result
    assert '"event": "still_logging"' in stderr
    assert not _traces_left(victim), _traces_left(victim)


# name: (code run before audit.enable(), what the sidecar or its libraries legitimately do)
ALLOWED: dict[str, tuple[str, str]] = {
    "udp_to_loopback": (
        'r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", 0))',
        's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", r.getsockname());'
        'assert r.recv(9) == b"x"'),
    "preopened_loopback_tcp": (
        "l = socket.create_server(('127.0.0.1', 0)); c = socket.create_connection("
        "l.getsockname()); a, _ = l.accept()",
        'c.sendall(b"x"); assert a.recv(9) == b"x"'),
    "memfd_pipe_read_end_and_dev_null": (
        'm = os.memfd_create("x"); n = os.open(os.devnull, os.O_WRONLY); r, w = os.pipe(); '
        "os.close(w)",
        'os.write(m, b"x"); os.write(n, b"x"); assert os.read(r, 9) == b""'),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ALLOWED))
def test_audit_mode_leaves_loopback_and_memory_alone(tmp_path: Path, name: str) -> None:
    """What must keep working in audit mode: loopback datagrams and TCP connections opened before
    or after enable(), in-memory files, /dev/null and read-only ends. No violation, no disarming
    (so the parametrized attacks above fail for the right reason, not because everything does)."""
    setup, action = ALLOWED[name]
    (tmp_path / "victim").mkdir()
    result, stderr = _run_sidecar_like(tmp_path, setup, action)
    assert result == {"outcome": "allowed", "violations": 0, "zmq": True, "lock_held": True}, stderr
    assert not _violations(stderr)


# What the planted dependency tries in a real sidecar, and what audit mode makes of each try.
PLANTED = {
    "preopened_fd": "failed:EBADF",
    "preopened_file": "failed:EBADF",
    "udp_sendto": "blocked",
    "mkfifo": "blocked",
    "mknod": "blocked",
    "setxattr": "blocked",
    "sqlite": "blocked",
    "ctypes_mkfifo": "blocked",
}


def test_planted_dependency_is_stopped_in_a_real_sidecar(tmp_path: Path, models_dir: Path) -> None:
    """A malicious package imported before ``offcut serve --audit`` starts (it opens its files
    then) attacks on every segment request. Every attack fails, each is reported (the two
    descriptors once at start, the rest on every request), the requests are still served with
    every option, and nothing lands on disk."""
    runtime = tmp_path / "run"
    env = sidecar_env(runtime, models_dir, **hostile.plant(tmp_path, list(PLANTED)))
    s = Sidecar(runtime, models_dir, ["--idle-timeout", "0"], env=env)
    c = RawClient(s.port, s.token)
    try:
        for opts in ({}, {"refine": True, "cutout": True, "decontaminate": True}):
            h, _ = c.call(
                {"op": "segment", "image": {"width": 96, "height": 64, "format": "RGBA8"},
                 "options": opts},
                sample_rgba(),
            )  # fmt: skip
            assert h["kind"] == "result", h
        outcomes = hostile.wait(s, 2)
        st, _ = c.call({"op": "status"})
    finally:
        c.close()
        s.stop()
    assert outcomes == [PLANTED, PLANTED], "".join(s.stderr_lines[-20:])
    events = Counter(
        json.loads(ln)["audit_event"] for ln in s.stderr_lines if '"audit_violation"' in ln
    )
    assert events == {
        "preopened_fd": 2,
        "socket.sendto": 2,
        "os.mkfifo": 2,
        "os.mknod": 2,
        "os.setxattr": 2,
        "sqlite3.connect": 2,
        "ctypes.dlsym": 2,  # a blocked lookup is not cached: blocked again next time
    }, events
    assert st["audit_violations"] == sum(events.values())
    victim = tmp_path / "victim"
    assert sorted(p.name for p in victim.iterdir()) == [
        "preopened-file.bin", "preopened.bin", "xattr-target"
    ]  # fmt: skip
    for p in victim.iterdir():
        assert p.read_bytes() == b"", p
        with contextlib.suppress(OSError):
            assert not os.listxattr(p), p
