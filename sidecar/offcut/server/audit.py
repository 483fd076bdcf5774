"""``offcut serve --audit``: enforce the privacy invariants at run time with Python audit hooks.

While enabled, any file opened for writing, any file removed, renamed or created (FIFOs and device
nodes included), any extended attribute set, any SQLite database opened, any process spawned, any
datagram or connection to a non-loopback address, any name lookup, any syslog message and any
ctypes call raised from Python is blocked with ``PermissionError`` and logged as an
``audit_violation`` line on stderr. The test suites run the sidecar this way, so a change that
starts writing pixels to disk or phoning home fails loudly.

CPython raises no audit event for ``os.write`` and friends, so a descriptor opened for writing
*before* :func:`enable` (by a dependency at import time, or inherited) could be written to without
the hook ever running. :func:`enable` therefore checks every open descriptor once: one that can
write somewhere other than the sidecar's own files (the standard streams, the files in the private
runtime directory, loopback sockets, in-memory objects) is reported as a violation and replaced
in place by a read-only one, so every later write to it fails with ``EBADF`` however it is
attempted (``os.write``, a file object, a C library). ``os.mkfifo`` and ``os.mknod`` have no audit
event either and are wrapped.

Reads stay allowed (models are read from disk). What this cannot see is listed in
SECURITY-NOTES-audit.md: C code (libzmq, ONNX Runtime) opens and sends without Python, so the
tests also watch the process from outside (strace, /proc, a network namespace); ZeroMQ's own
loopback socket is such C code and never reaches the hook.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import stat
import sys
from collections.abc import Callable
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
    "os.setxattr",
    "os.removexattr",
    "shutil.copyfile",
    "shutil.move",
    "shutil.rmtree",
    "shutil.chown",
    "shutil.make_archive",
    "shutil.unpack_archive",
    "os.utime",
}
_PROCESS_EVENTS = {
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
}
_NET_EVENTS = {
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
    "socket.sethostname",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
    "imaplib.open",
    "poplib.connect",
    "nntplib.connect",
    "telnetlib.Telnet.open",
}
# The system log is a file write by another name (journald and rsyslog store it on disk).
_SYSLOG_EVENTS = {"syslog.openlog", "syslog.syslog"}
# SQLite opens, creates and journals its files in C, past the "open" event; extensions load code.
_SQLITE_EVENTS = {"sqlite3.connect", "sqlite3.enable_load_extension", "sqlite3.load_extension"}
# ctypes reaches libc's write(), sendto() and mknod() directly, past every rule above. CPython
# raises no event for a call, only for loading a library and looking up a function (once per
# name: CDLL caches it), so a function pointer looked up before enable() stays callable. Nothing
# the sidecar does while serving uses ctypes (its dependencies finish with it at import time).
_CTYPES_EVENTS = {"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function"}


def violations() -> int:
    """How many actions were blocked (and descriptors disarmed) since start; the status op shows
    it so tests can assert a run stayed clean."""
    return _violations


def _report(event: str, detail: str) -> None:
    """Count and log a violation. Used alone where there is no caller to raise into (the
    descriptor check in :func:`enable` runs inside ``offcut serve`` itself)."""
    global _violations
    _violations += 1
    sys.stderr.write(
        json.dumps(
            {"level": "error", "event": "audit_violation", "audit_event": event, "detail": detail}
        )
        + "\n"
    )
    sys.stderr.flush()


def _violation(event: str, detail: str) -> None:
    _report(event, detail)
    raise PermissionError(f"offcut audit mode blocked {event} ({detail})")


def _is_write(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and flags != -1 and bool(flags & _WRITE_FLAGS)


def _host(address: Any) -> Any:
    """The host part of a socket address: tuples for AF_INET/AF_INET6, the path (str or bytes)
    for AF_UNIX, whatever else for other families (never loopback)."""
    return address[0] if isinstance(address, tuple) and address else address


def _is_loopback(host: Any) -> bool:
    """True only for a literal loopback address (127.0.0.0/8, ::1, ::ffff:127.x). A host *name*
    is never loopback here: "127.evil.example" or "localhost" would need a lookup, and lookups are
    violations of their own."""
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_unspecified(host: Any) -> bool:
    try:
        return isinstance(host, str) and ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _fd_writable(fd: int) -> bool:
    try:
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except (ImportError, OSError):
        return False
    return (flags & os.O_ACCMODE) != os.O_RDONLY


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _enabled:
        return
    if event == "open":
        path, mode, flags = [*args, None, None, None][:3]
        if _is_write(mode, flags):
            _violation(event, f"write to {path!s}")
    elif event in _FS_EVENTS:
        _violation(event, f"file system change ({args[0]!s})" if args else "file system change")
    elif event in _PROCESS_EVENTS:
        _violation(event, "process start")
    elif event == "socket.connect":
        host = _host(args[1] if len(args) > 1 else None)
        if not _is_loopback(host):
            _violation(event, f"connection to {host!r}")
    elif event in ("socket.sendto", "socket.sendmsg"):
        # sendmsg on a connected socket passes no address: the connect was checked already.
        address = args[1] if len(args) > 1 else None
        if address is not None and not _is_loopback(_host(address)):
            _violation(event, f"datagram to {_host(address)!r}")
    elif event == "socket.bind":
        host = _host(args[1] if len(args) > 1 else None)
        if not _is_loopback(host):
            _violation(event, f"bind to {host!r}")
    elif event in _NET_EVENTS:
        _violation(event, "network access")
    elif event in _SQLITE_EVENTS:
        _violation(event, f"SQLite database {args[0]!s}" if args else "SQLite")
    elif event in _SYSLOG_EVENTS:
        _violation(event, "system log")
    elif event in _CTYPES_EVENTS:
        _violation(event, "foreign function call")


# ---------------------------------------------------------------------------- no audit event


def _guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.<name>`` that is a violation while enabled (CPython raises no audit event for it)."""

    def guarded(path: Any, *args: Any, **kwargs: Any) -> Any:
        if _enabled:
            _violation(f"os.{name}", f"creates {path!s}")
        return original(path, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = original.__doc__
    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    return guarded


def _install_guards() -> None:
    """Wrap the file-creating calls that have no audit event, in ``os`` and in ``posix``/``nt``
    (``os`` re-exports them, and a caller could use either)."""
    native = sys.modules.get("posix") or sys.modules.get("nt")
    for name in ("mkfifo", "mknod"):
        original = getattr(os, name, None)
        if original is None or hasattr(original, "__wrapped__"):
            continue
        guarded = _guard(name, original)
        setattr(os, name, guarded)
        if native is not None and getattr(native, name, None) is original:
            setattr(native, name, guarded)


# ------------------------------------------------------------------ descriptors opened earlier


def _open_fds() -> list[int]:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return sorted(int(n) for n in os.listdir(folder) if n.isdigit())
        except OSError:
            continue
    return []


def _fd_name(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return f"descriptor {fd}"


def _own_files() -> set[tuple[int, int]]:
    """(device, inode) of the regular files in the private runtime directory: the lock the
    sidecar holds for its whole life, the connection file and the plug-in's ``sidecar.log``."""
    from offcut import paths

    own = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(paths.runtime_dir()):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    own.add((st.st_dev, st.st_ino))
    return own


def _socket_is_local(fd: int) -> bool:
    """A socket that cannot carry data off this machine or into a file: TCP/UDP whose peer (if
    connected) and local address are loopback (an unbound, unconnected one can only ``sendto``,
    which the hook checks), or an unnamed, unconnected-to-a-path UNIX socket (a socketpair, as
    libzmq's signalers are where eventfd is missing). A UNIX socket connected to a path can reach
    syslog or D-Bus; packet and netlink sockets are never needed."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with s:
        try:
            local = s.getsockname()
        except OSError:
            return False
        try:
            peer: Any = s.getpeername()
        except OSError:
            peer = None
        if s.family in (socket.AF_INET, socket.AF_INET6):
            local_ok = _is_loopback(local[0]) or (_is_unspecified(local[0]) and local[1] == 0)
            return local_ok and (peer is None or _is_loopback(peer[0]))
        if getattr(socket, "AF_UNIX", None) == s.family:
            return local in ("", b"") and peer in (None, "", b"")
    return False


def _disarm(fd: int, regular: bool) -> None:
    """Put a read-only descriptor in place of ``fd`` (same number, same inheritability): the same
    file re-opened read-only where /proc allows it, so reads keep working, else /dev/null. The
    number stays taken, so a later open cannot land on it by chance."""
    inheritable = os.get_inheritable(fd)
    replacement = -1
    if regular:
        with contextlib.suppress(OSError):
            replacement = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    if replacement < 0:
        replacement = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        position = None
        if regular:
            with contextlib.suppress(OSError):
                position = os.lseek(fd, 0, os.SEEK_CUR)
        os.dup2(replacement, fd, inheritable=inheritable)
        if position is not None:
            with contextlib.suppress(OSError):
                os.lseek(fd, position, os.SEEK_SET)
    finally:
        os.close(replacement)


def _check_open_fds() -> None:
    """Report and disarm every descriptor (other than the standard streams) that was opened
    before :func:`enable` and can write to a file, a device, a pipe or a non-loopback peer."""
    if sys.platform == "win32":  # pragma: no cover - no fd table to walk; see the notes
        return
    own = _own_files()
    try:
        devnull = os.stat(os.devnull).st_rdev
    except OSError:
        devnull = -1
    for fd in _open_fds():
        if fd <= 2:
            continue  # stdout carries the readiness line, stderr the log: the parent chose them
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed meanwhile (the directory listing's own descriptor, for one)
        mode = st.st_mode
        name = _fd_name(fd)
        if stat.S_ISSOCK(mode):
            if _socket_is_local(fd):
                continue
            why = "a socket that is not loopback-only"
        elif not _fd_writable(fd):
            continue
        elif stat.S_ISREG(mode):
            if (st.st_dev, st.st_ino) in own or name.startswith("/memfd:"):
                continue
            why = "a file open for writing"
        elif stat.S_ISCHR(mode):
            if st.st_rdev == devnull:
                continue
            why = "a device open for writing"
        elif stat.S_ISFIFO(mode) or stat.S_ISBLK(mode):
            why = "a pipe or device open for writing"
        else:
            continue  # eventfd, epoll, timerfd: in-memory kernel objects (libzmq's own)
        try:
            _disarm(fd, regular=stat.S_ISREG(mode))
            outcome = "now read-only"
        except OSError as exc:
            outcome = f"could not be disarmed: {exc.strerror}"
        _report("preopened_fd", f"{name} (descriptor {fd}) was {why} before audit mode; {outcome}")


_installed = False


def enable() -> None:
    """Start enforcing (idempotent). Bytecode writing is switched off: a lazy import would
    otherwise write a .pyc file and count as a violation. Descriptors already open are checked
    first, while the hook is still quiet (disarming one opens /dev/null)."""
    global _enabled, _installed
    sys.dont_write_bytecode = True
    if not _installed:
        sys.addaudithook(_hook)
        _install_guards()
        _installed = True
    if not _enabled:
        _check_open_fds()
    _enabled = True


def disable() -> None:
    """Stop enforcing (audit hooks cannot be removed; they go quiet). Used at shutdown, when the
    sidecar removes its own connection file."""
    global _enabled
    _enabled = False
