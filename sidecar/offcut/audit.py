"""``offcut serve --audit``: enforce the privacy invariants at run time with Python audit hooks.

While enabled, any file opened for writing, any file removed, renamed or created, any process
spawned, and any network connection or name lookup raised from Python is blocked with
``PermissionError`` and logged as an ``audit_violation`` line on stderr. The test suites run the
sidecar this way, so a change that starts writing pixels to disk or phoning home fails loudly.

Reads stay allowed (models are read from disk). ZeroMQ's own loopback socket lives in libzmq and
is not a Python socket; the network tests (tests/integration/test_privacy.py) check it from
``/proc/net/tcp`` instead.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_enabled = False
_violations = 0

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FS_EVENTS = {
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.truncate",
    "os.symlink",
    "os.link",
    "os.chmod",
    "os.chown",
    "shutil.copyfile",
    "shutil.move",
    "shutil.rmtree",
    "os.utime",
}
_PROCESS_EVENTS = {
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
}
_NET_EVENTS = {
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
}


def violations() -> int:
    return _violations


def _violation(event: str, detail: str) -> None:
    global _violations
    _violations += 1
    sys.stderr.write(
        json.dumps(
            {"level": "error", "event": "audit_violation", "audit_event": event, "detail": detail}
        )
        + "\n"
    )
    sys.stderr.flush()
    raise PermissionError(f"offcut audit mode blocked {event} ({detail})")


def _is_write(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and flags != -1 and bool(flags & _WRITE_FLAGS)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _enabled:
        return
    if event == "open":
        path, mode, flags = [*args, None, None, None][:3]
        if _is_write(mode, flags):
            _violation(event, f"write to {path!s}")
    elif event in _FS_EVENTS:
        _violation(event, "file system change")
    elif event in _PROCESS_EVENTS:
        _violation(event, "process start")
    elif event == "socket.connect":
        address = args[1] if len(args) > 1 else None
        host = address[0] if isinstance(address, tuple) and address else address
        if host not in ("127.0.0.1", "::1") and not (
            isinstance(host, str) and host.startswith("127.")
        ):
            _violation(event, f"connection to {host!r}")
    elif event == "socket.bind":
        address = args[1] if len(args) > 1 else None
        host = address[0] if isinstance(address, tuple) and address else address
        if host not in ("127.0.0.1",):
            _violation(event, f"bind to {host!r}")
    elif event in _NET_EVENTS:
        _violation(event, "network access")


_installed = False


def enable() -> None:
    """Start enforcing (idempotent). Bytecode writing is switched off: a lazy import would
    otherwise write a .pyc file and count as a violation."""
    global _enabled, _installed
    sys.dont_write_bytecode = True
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _enabled = True


def disable() -> None:
    """Stop enforcing (audit hooks cannot be removed; they go quiet). Used at shutdown, when the
    sidecar removes its own connection file."""
    global _enabled
    _enabled = False
