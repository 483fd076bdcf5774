"""The connection file and the single-instance lock (docs/protocol.md, "Discovery").

The file is the only place the secret token is written: mode 0600 in a 0700 per-user directory,
written atomically so a client never reads half a file. The lock, held for the sidecar's whole
life, is what makes "one sidecar per user" true even when two editors start one at the same
moment: the loser of the lock race reports the winner instead of binding a second port.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offcut import paths
from offcut.client import discovery
from offcut.client.discovery import pid_alive

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt
else:
    import fcntl


def new_token() -> str:
    return secrets.token_hex(32)


def ensure_runtime_dir(directory: Path | None = None) -> Path:
    """Create the runtime directory 0700, and refuse one that other users could tamper with.

    The directory itself is never followed through a symlink: a link planted at its path (in a
    shared ``/tmp``, say) would make the sidecar chmod and fill a directory of the attacker's
    choosing. It is opened with ``O_NOFOLLOW`` and checked and tightened through that descriptor.
    """
    d = directory or paths.runtime_dir()
    if sys.platform == "win32":  # pragma: no cover - ACLs, not modes, protect it there
        problem = discovery.windows_dir_problem(str(d), os.environ)
        if problem:
            raise RuntimeError(problem)
        d.mkdir(parents=True, exist_ok=True)
        return d
    if not d.is_dir():  # no mkdir when it exists: a write syscall, even a failing one, is noise
        d.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise RuntimeError(
            f"The runtime directory {d} is a symbolic link or not a directory; remove it, or set "
            "OFFCUT_RUNTIME_DIR to a directory of your own."
        ) from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise RuntimeError(
                f"The runtime directory {d} belongs to another user; set OFFCUT_RUNTIME_DIR to a "
                "directory of your own."
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return d


class InstanceLock:
    """An exclusive, non-blocking lock on ``sidecar.lock``, released when the process dies."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.lock_file()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if sys.platform == "win32":  # pragma: no cover
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write(info: dict[str, Any], path: Path | None = None) -> Path:
    """Write the connection file atomically with mode 0600 (sibling temp file, fsync, rename)."""
    target = path or paths.connection_file()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, json.dumps(info, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    while_shared(lambda: os.replace(tmp, target))
    return target


def while_shared(
    action: Callable[[], None], platform: str | None = None, tries: int = 40, pause: float = 0.025
) -> None:
    """Run a rename or unlink of the connection file, retrying while a reader has it open.

    On Windows a file that another process holds open (a client reading it, a second sidecar
    waiting in :func:`wait_for_running`) cannot be replaced or removed until it is closed:
    Python opens files without ``FILE_SHARE_DELETE``, and the call fails with ``PermissionError``.
    Readers hold it for a moment, so a short retry turns a failed start into a short wait. On
    POSIX the call never fails that way, and a ``PermissionError`` is real: it is raised at once.
    """
    for attempt in range(tries):
        try:
            action()
            return
        except PermissionError:
            if (platform or sys.platform) != "win32" or attempt == tries - 1:
                raise
            time.sleep(pause)


def read(path: Path | None = None) -> dict[str, Any] | None:
    """The connection file's contents, or None if there is none (or it cannot be trusted)."""
    target = path or paths.connection_file()
    try:
        st = target.lstat()
    except FileNotFoundError:
        return None
    if sys.platform != "win32" and (
        not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077
    ):
        raise RuntimeError(
            f"Refusing the connection file {target}: it must be a regular file owned by you with "
            "mode 0600. Delete it and start the sidecar again."
        )
    try:
        return json.loads(target.read_text())
    except (OSError, ValueError):
        return None


def remove(path: Path | None = None, pid: int | None = None) -> None:
    """Remove the connection file, but only if it is ours (``pid`` matches)."""
    target = path or paths.connection_file()
    try:
        info = json.loads(target.read_text())
    except (OSError, ValueError):
        return
    if pid is None or info.get("pid") == pid:
        with contextlib.suppress(FileNotFoundError):
            while_shared(target.unlink)


def lock_held(path: Path | None = None) -> bool:
    """Whether some process holds the instance lock now: the client's probe (a live pid alone
    can be a reused one), so both ends judge a connection file alike."""
    return discovery.lock_held(path or paths.lock_file())


def alive(info: dict[str, Any]) -> bool:
    """A connection file describes a running sidecar: its pid lives and the lock is held."""
    return pid_alive(int(info.get("pid", 0))) and lock_held()


def wait_for_running(lock: InstanceLock, timeout: float = 10.0) -> dict[str, Any] | None:
    """Wait for the lock holder's connection file (it may still be starting up).

    Returns None once ``lock`` has been acquired here instead: the holder went away (or a client
    was only probing the lock), and this process should become the sidecar after all.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read()
        if info and alive(info):
            return info
        if lock.acquire():
            return None
        time.sleep(0.05)
    return None
