"""Finding and starting the sidecar: runtime dir, connection file, recorded command, spawning.

The runtime directory's rule and the file names are :mod:`.wire`'s; ``offcut.paths`` and
``offcut.server.instance`` use them and this module's lock probe and pid check, so both ends agree.
Every filesystem and process concern of the client is in this one module.
"""

import collections
import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from . import messages, wire
from .errors import INTERNAL, error
from .wire import CONNECTION_FILE, LOCK_FILE, LOG_FILE

SIDECAR_RECORD = "offcut_sidecar.json"
ENV_SIDECAR_COMMAND = "OFFCUT_SIDECAR_COMMAND"
_LOG_MAX = 1 << 20
# glibc's tunable that makes malloc ask for transparent huge pages on its large blocks.
_HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb"
# Windows process-creation flags (winbase.h).
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000
# What CPython's venv redirector sets so that the base interpreter it starts becomes the venv's.
_VENV_LAUNCHER = "__PYVENV_LAUNCHER__"
# Variables through which an editor's bundle points its own libraries and toolkit plug-ins at
# its own folders (AppImage, macOS bundles, Windows installers). The sidecar loads neither Qt nor
# GTK; these would only lead a library it loads into the editor's copies.
_TOOLKIT_VARS = frozenset(
    {
        "QT_PLUGIN_PATH",
        "QT_QPA_PLATFORM_PLUGIN_PATH",
        "QML2_IMPORT_PATH",
        "QML_IMPORT_PATH",
        "GI_TYPELIB_PATH",
        "GIO_MODULE_DIR",
        "GIO_EXTRA_MODULES",
        "GDK_PIXBUF_MODULE_FILE",
        "GDK_PIXBUF_MODULEDIR",
        "GTK_PATH",
        "GTK_EXE_PREFIX",
        "GTK_DATA_PREFIX",
        "GSETTINGS_SCHEMA_DIR",
        "BABL_PATH",
        "GEGL_PATH",
    }
)
# The dynamic loader's search and preload lists on Linux: an AppImage points them into itself.
_LOADER_LISTS = ("LD_LIBRARY_PATH", "LD_PRELOAD")


def runtime_dir() -> Path:
    """The wire's rule (``offcut.paths.runtime_dir``), after ``$OFFCUT_RUNTIME_DIR`` the runtime
    dir an installer record shares with a sandboxed editor."""
    return wire.runtime_dir(_record_runtime_dir)


class ConnectionInfo:
    """The parsed connection file: where the sidecar listens and the token it expects."""

    def __init__(self, data: Dict[str, Any], path: Path) -> None:
        for key, kind in (("ip", str), ("port", int), ("token", str)):
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise ValueError("%s is missing or not a %s" % (key, kind.__name__))
        if not data["token"]:
            raise ValueError("the token is empty")
        # It is the ZMTP PLAIN password: ASCII, at most 255 bytes.
        if len(data["token"]) > 255 or not all(ord(c) < 128 for c in data["token"]):
            raise ValueError("the token is not up to 255 ASCII characters")
        self.path = path
        self.ip = str(data["ip"])
        self.port = int(data["port"])
        self.token = str(data["token"])
        self.pid = int(data.get("pid") or 0)
        self.protocol = int(data.get("protocol") or 0)
        self.sidecar_version = str(data.get("sidecar_version") or "")

    def same_as(self, other: "Optional[ConnectionInfo]") -> bool:
        return other is not None and (self.ip, self.port, self.token, self.pid) == (
            other.ip,
            other.port,
            other.token,
            other.pid,
        )


def check_private(path: Path) -> None:
    """Refuse a connection file others could have written or read.

    The token in it is the only thing keeping other local users off the sidecar; a file that is
    a symlink, owned by someone else, or open to group/other is not trusted (POSIX). Windows has
    no modes to read: there the file's folder must be one of the user's own
    (:func:`windows_dir_problem`).
    """
    try:
        st = os.lstat(str(path))
    except FileNotFoundError:
        raise
    if not stat.S_ISREG(st.st_mode):
        raise error(INTERNAL, "connection_file_not_regular", path=str(path))
    if os.name != "posix":
        issue = windows_dir_issue(str(path.parent), os.environ)
        if issue is not None:
            raise error(INTERNAL, issue[0], **issue[1])
        return
    if st.st_uid != os.getuid():
        raise error(INTERNAL, "connection_file_owner", path=str(path), uid=st.st_uid)
    if st.st_mode & 0o077:
        raise error(
            INTERNAL,
            "connection_file_mode",
            path=str(path),
            mode="%03o" % stat.S_IMODE(st.st_mode),
        )


def windows_dir_problem(
    directory: str,
    environ: Mapping[str, str],
    resolve: Optional[Callable[[str], str]] = None,
) -> Optional[str]:
    """Why ``directory`` cannot be trusted as a Windows runtime dir (English), or None."""
    issue = windows_dir_issue(directory, environ, resolve)
    return None if issue is None else messages.english(issue[0], issue[1])


def windows_dir_issue(
    directory: str,
    environ: Mapping[str, str],
    resolve: Optional[Callable[[str], str]] = None,
) -> Optional[Tuple[str, Dict[str, Any]]]:
    """Why ``directory`` cannot be trusted as a Windows runtime dir, as the key of its sentence
    and its parameters (so a plug-in can show it translated), or None when it can.

    Windows guards folders with ACLs, not modes: the user's profile (``%USERPROFILE%``, which
    holds ``%APPDATA%`` and ``%LOCALAPPDATA%``) is by default open only to the user, SYSTEM and
    the administrators, and a folder made inside it inherits that. A folder elsewhere
    (``C:\\Temp``, a share) may be writable by other users, who could plant a connection file
    there, so an ``OFFCUT_RUNTIME_DIR`` outside the profile is refused. What is not checked:
    a folder inside the profile whose ACL someone widened on purpose (reading the owner SID and
    the DACL needs the security API, and nothing here could test that). ``resolve`` follows
    junctions and links (``os.path.realpath`` when running on Windows).
    """
    import ntpath

    if resolve is None:
        resolve = os.path.realpath if sys.platform == "win32" else (lambda p: p)

    def norm(p: str) -> str:
        return ntpath.normcase(ntpath.normpath(resolve(p)))

    roots = [environ.get(k) for k in ("USERPROFILE", "LOCALAPPDATA", "APPDATA")]
    roots = [norm(r) for r in roots if r and ntpath.isabs(r)]
    if not ntpath.isabs(directory):
        return "runtime_dir_relative", {"path": directory}
    target = norm(directory)
    for root in roots:
        if target == root or target.startswith(root.rstrip("\\") + "\\"):
            return None
    return "runtime_dir_outside", {
        "path": directory,
        "profile": environ.get("USERPROFILE") or "unknown",
    }


def read_connection_file(path: Optional[Path] = None) -> Optional[ConnectionInfo]:
    """The connection file's contents, None if there is none; refuse an unsafe or bad one."""
    path = path or runtime_dir() / CONNECTION_FILE
    try:
        check_private(path)
        with open(str(path), "rb") as fh:
            raw = fh.read(1 << 16)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
        info = ConnectionInfo(data, path)
        if data.get("transport", "tcp") != "tcp":
            raise ValueError("transport %r" % data.get("transport"))
        if not ipaddress.ip_address(info.ip).is_loopback:
            raise ValueError("address %s is not loopback" % info.ip)
        if not 0 < info.port < 65536:
            raise ValueError("port %d" % info.port)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # A half-written file cannot happen (the sidecar renames atomically), so this is damage.
        raise error(INTERNAL, "connection_file_invalid", path=str(path), problem=str(exc)) from exc
    return info


def lock_held(path: Path) -> bool:
    """Whether a process holds the sidecar's lock file (``sidecar.lock``) right now.

    A live pid is not enough to trust a connection file: after a SIGKILL the file stays, pids
    are reused, and another local user can listen on the freed port and receive the next layer's
    pixels. The lock lives in the user's private runtime directory and dies with its holder, so
    "someone holds it" means "our sidecar is alive". Probed with a shared, non-blocking lock that
    is released at once: shared, so that two editors probing at the same moment do not take each
    other for the sidecar, and so that a probe can never stop a sidecar from holding its lock
    (it only delays a starting one's first try, which ``instance.wait_for_running`` repeats).
    """
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        if sys.platform == "win32":
            return _held_windows(fd)
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


#: ``LockFileEx`` flags (fileapi.h): no ``LOCKFILE_EXCLUSIVE_LOCK`` (2) makes the lock shared.
LOCKFILE_FAIL_IMMEDIATELY = 0x1
LOCKFILE_EXCLUSIVE_LOCK = 0x2


def _held_windows(fd: int, kernel32: Any = None, os_handle: Any = None) -> bool:
    """The Windows probe: a shared ``LockFileEx`` on the byte the sidecar locks, given up at once.

    The sidecar holds byte 0 with ``msvcrt.locking`` (an exclusive ``LockFile``). Windows locks
    are mandatory and per handle: a shared request on that byte fails while the sidecar holds it,
    and taking or dropping ours never touches another handle's lock, so the probe cannot steal or
    break it. ``msvcrt.locking`` itself has no shared mode, and an exclusive probe would make a
    second editor probing at the same moment see a "live" sidecar that is not there.
    ``kernel32`` and ``os_handle`` are parameters so that a test on another system can check
    which calls are made; on Windows they are the real ones.
    """
    import ctypes

    if kernel32 is None:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    if os_handle is None:
        import msvcrt

        os_handle = msvcrt.get_osfhandle  # type: ignore[attr-defined]
    overlapped = _overlapped_type()()  # offset 0: the byte ``msvcrt.locking`` locks
    handle = ctypes.c_void_p(os_handle(fd))
    if not kernel32.LockFileEx(
        handle, LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ctypes.byref(overlapped)
    ):
        return True  # ERROR_LOCK_VIOLATION: the sidecar holds it
    kernel32.UnlockFileEx(handle, 0, 1, 0, ctypes.byref(overlapped))
    return False


def _overlapped_type() -> Any:
    """Made on first use: ctypes is imported only where a probe needs it (Windows)."""
    import ctypes

    class Overlapped(ctypes.Structure):
        """``OVERLAPPED`` (minwinbase.h); only the offset matters here, and it is 0."""

        _fields_ = [
            ("Internal", ctypes.c_size_t),
            ("InternalHigh", ctypes.c_size_t),
            ("Offset", ctypes.c_uint32),
            ("OffsetHigh", ctypes.c_uint32),
            ("hEvent", ctypes.c_void_p),
        ]

    return Overlapped


def sidecar_alive(info: "ConnectionInfo", conn_path: Path) -> bool:
    """A connection file may be trusted only while its pid lives AND the lock is held."""
    return pid_alive(info.pid) and lock_held(conn_path.parent / LOCK_FILE)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a dead pid means a stale connection file)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _pid_alive_windows(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = ctypes.c_void_p  # a HANDLE, not the default C int
    kernel32.GetExitCodeProcess.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong)]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # type: ignore[attr-defined]  # access denied: exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# -- the sidecar command -----------------------------------------------------------------------


def sidecar_command() -> Tuple[List[str], Dict[str, str]]:
    """The command (and extra environment) that starts ``offcut serve``.

    In order: ``$OFFCUT_SIDECAR_COMMAND`` (a JSON array), the ``offcut_sidecar.json`` the installer
    wrote next to this package, and, in a source checkout where ``offcut`` itself imports, this
    Python with ``-m offcut serve`` and the checkout as its only ``PYTHONPATH``.
    """
    cmd = user_command()
    if cmd is not None:
        return cmd, {}
    record = record_path()
    if record.is_file():
        return read_record(record)
    if _offcut_importable():
        import_root = _offcut_import_root()
        env = {"PYTHONPATH": import_root} if import_root else {}  # type: Dict[str, str]
        return [sys.executable, "-m", "offcut", "serve"], env
    raise error(INTERNAL, "no_sidecar_command")


def user_command() -> Optional[List[str]]:
    """``$OFFCUT_SIDECAR_COMMAND``, parsed; None when unset.

    A command the user sets runs in the user's environment, as a shell would run it (see
    :func:`spawn_plan`); the recorded one does not.
    """
    env_cmd = os.environ.get(ENV_SIDECAR_COMMAND)
    if not env_cmd:
        return None
    try:
        cmd = json.loads(env_cmd)
        if not (isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd)):
            raise ValueError("not a list of strings")
    except ValueError as exc:
        raise error(
            INTERNAL, "bad_command_variable", variable=ENV_SIDECAR_COMMAND, problem=str(exc)
        ) from exc
    return cmd


def record_path() -> Path:
    """Where the installer puts ``offcut_sidecar.json``: beside this package's folder."""
    return Path(__file__).resolve().parent.parent / SIDECAR_RECORD


def _record_runtime_dir() -> Optional[str]:
    """A sandboxed editor's record names the runtime dir it shares with the host sidecar."""
    path = record_path()
    try:
        with open(str(path), encoding="utf-8") as fh:
            value = json.load(fh).get("runtime_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _offcut_importable() -> bool:
    return _sidecar_package() is not None


def _offcut_import_root() -> Optional[str]:
    package = _sidecar_package()
    return str(package.parent) if package is not None else None


def _sidecar_package() -> Optional[Path]:
    """The folder of the sidecar's ``offcut`` package on this Python's path, or None.

    Only the sidecar's package counts, not anything else named ``offcut``: it is recognised by
    ``__main__.py`` and ``server/server.py``, what ``-m offcut serve`` runs. The Krita plug-in's
    package sits in Krita's pykrita folder, which is on ``sys.path``; it is ``offcut_krita``
    now, but an install from before the rename (or other software) may still hold an
    ``offcut`` that comes first, so the path is searched past it. Nothing is imported: a
    foreign package's code never runs here.
    """
    if __package__ == "offcut.client":  # this client is the sidecar's own
        return Path(__file__).resolve().parent.parent
    candidates = []  # type: List[str]
    try:
        spec = importlib.util.find_spec("offcut")  # the one ``import offcut`` would give
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        candidates.extend(spec.submodule_search_locations or [])
    candidates.extend(os.path.join(p or ".", "offcut") for p in sys.path if isinstance(p, str))
    for location in candidates:
        folder = Path(location).resolve()
        if (folder / "__main__.py").is_file() and (folder / "server" / "server.py").is_file():
            return folder
    return None


def read_record(path: Path) -> Tuple[List[str], Dict[str, str]]:
    """Parse an installer record: ``{"command": [...], "env": {...}}``."""
    try:
        with open(str(path), encoding="utf-8") as fh:
            data = json.load(fh)
        cmd = data["command"]
        env = data.get("env") or {}
        if not (isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd)):
            raise ValueError("command is not a list of strings")
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise ValueError("env is not a map of strings")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise error(INTERNAL, "record_damaged", path=str(path), problem=str(exc)) from exc
    return list(cmd), {str(k): str(v) for k, v in env.items()}


# -- spawning ----------------------------------------------------------------------------------


class Spawned:
    """A sidecar process this client started, and what it printed while starting."""

    def __init__(self, proc: "subprocess.Popen[bytes]", log_path: Optional[Path], log_start: int):
        self.proc = proc
        self.stdout_lines = collections.deque(maxlen=20)  # type: Deque[str]
        self.ready = threading.Event()
        self.readiness = None  # type: Optional[Dict[str, Any]]
        self.log_path = log_path
        self.log_start = log_start
        self._thread = threading.Thread(target=self._drain, name="offcut-sidecar-stdout")
        self._thread.daemon = True
        self._thread.start()

    def _drain(self) -> None:
        """Read stdout to its end so the sidecar can never block or fail writing to it."""
        stream = self.proc.stdout
        assert stream is not None
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                self.stdout_lines.append(line)
                if self.readiness is None and line.startswith("{"):
                    try:
                        data = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(data, dict) and data.get("ready"):
                        self.readiness = data
                        self.ready.set()
        except (OSError, ValueError):
            pass
        finally:
            self.ready.set()
        with contextlib.suppress(Exception):
            self.proc.wait()  # reap it: a zombie would look alive to pid_alive()

    def last_output(self, lines: int = 12) -> str:
        """The sidecar's last stderr lines (from its log) and stdout lines, for error messages."""
        out = []  # type: List[str]
        if self.log_path is not None:
            try:
                with open(str(self.log_path), "rb") as fh:
                    fh.seek(self.log_start)
                    text = fh.read(256 << 10).decode("utf-8", "replace")
                out.extend(text.splitlines()[-lines:])
            except OSError:
                pass
        out.extend(list(self.stdout_lines)[-lines:])
        return "\n".join("    " + line for line in out if line.strip())

    def wait_ready(
        self, timeout: float, cancelled: Optional[Callable[[], bool]] = None
    ) -> Dict[str, Any]:
        """Wait for the readiness line; on failure raise with what the sidecar said.

        ``cancelled`` lets a user's cancel end the wait; the sidecar is left starting (it will
        serve the next call), not killed.
        """
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if cancelled is not None and cancelled():
                raise error("cancelled", "cancelled_starting")
            if time.monotonic() >= deadline:
                break
        if self.readiness is not None:
            return self.readiness
        status = None  # type: Optional[int]
        try:
            # Its stdout closed without a readiness line: it is exiting; let it finish.
            status = self.proc.wait(timeout=2.0 if self.ready.is_set() else 0.01)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # ours and not ready: do not leave a half-started sidecar around
            self.proc.wait()
        args = self.proc.args
        command = " ".join(args) if isinstance(args, list) else str(args)
        said = self.last_output()
        if status is not None:
            if said:
                raise error(
                    INTERNAL,
                    "start_exited_output",
                    connection=True,
                    command=command,
                    status=status,
                    output=said,
                )
            raise error(INTERNAL, "start_exited", connection=True, command=command, status=status)
        seconds = "%.0f" % timeout
        if said:
            raise error(
                INTERNAL,
                "start_timeout_output",
                connection=True,
                command=command,
                seconds=seconds,
                output=said,
            )
        raise error(INTERNAL, "start_timeout", connection=True, command=command, seconds=seconds)


def with_huge_pages(env: Dict[str, str], platform: Optional[str] = None) -> Dict[str, str]:
    """Ask glibc (Linux) to back the sidecar's large malloc blocks with transparent huge pages.

    Every request hands the sidecar a new layer-sized message, which libzmq mallocs and glibc
    maps fresh; on a VM each 4 KiB page then costs a fault and is zeroed as the pixels arrive,
    which for a large layer takes about as long as a small model's whole run. With
    ``glibc.malloc.hugetlb=1`` glibc advises those maps for 2 MiB pages, which makes the loopback
    transfer of a large layer and its mask clearly faster (docs/benchmarks.md, tuning log).
    Only glibc reads the variable; elsewhere it is inert.
    A ``glibc.malloc.hugetlb`` the user set already is left as it is (``=0`` turns this off).
    Returns ``env``, changed in place.
    """
    if not (platform or sys.platform).startswith("linux"):
        return env
    current = env.get("GLIBC_TUNABLES", "")
    if _HUGEPAGES_TUNABLE not in current:
        extra = _HUGEPAGES_TUNABLE + "=1"
        env["GLIBC_TUNABLES"] = current + ":" + extra if current else extra
    return env


def clean_env(environ: Mapping[str, str], platform: str) -> Dict[str, str]:
    """The editor's environment without what would make the sidecar's Python someone else's.

    The plug-in runs inside the editor's Python, whose bundle often steers it with variables:
    Krita's AppImage and Windows build and GIMP's installers set ``PYTHONHOME``/``PYTHONPATH``
    for their own Python, a macOS framework Python's stub leaves ``__PYVENV_LAUNCHER__``
    (which makes another Python believe it runs from that venv), an AppImage points the loader
    at its own libraries. Inherited, they make the venv's Python load the editor's standard
    library or packages, or fail to start. Dropped: every ``PYTHON*`` variable and
    ``__PYVENV_LAUNCHER__``; the toolkits' plug-in paths; on macOS the ``DYLD_*`` loader
    variables; on Linux the ``LD_LIBRARY_PATH``/``LD_PRELOAD`` entries inside the AppImage
    (``$APPDIR``), keeping the user's own. Everything else (``HOME``, ``XDG_*``, ``OFFCUT_*``,
    ``PATH``, ``SYSTEMROOT``, proxies, locale) is kept: the sidecar finds its folders with them.
    """
    upper = platform == "win32"  # names are case-insensitive there
    env = {}  # type: Dict[str, str]
    appdir = environ.get("APPDIR") if platform.startswith("linux") else None
    for key, value in environ.items():
        name = key.upper() if upper else key
        if name.startswith("PYTHON") or name in (_VENV_LAUNCHER, ENV_SIDECAR_COMMAND):
            continue
        if name in _TOOLKIT_VARS:
            continue
        if platform == "darwin" and name.startswith("DYLD_"):
            continue
        if appdir and name in _LOADER_LISTS:
            value = _outside(value, appdir, ":" if name == "LD_LIBRARY_PATH" else r"[:\s]+")
            if not value:
                continue
        env[key] = value
    return env


def _outside(value: str, root: str, separator: str) -> str:
    """The entries of a loader list (split on the ``separator`` pattern) not inside ``root``."""
    prefix = root.rstrip("/") + "/"
    parts = re.split(separator, value)
    return ":".join(p for p in parts if p and not (p.rstrip("/") + "/").startswith(prefix))


def windows_interpreter(cmd: List[str]) -> Tuple[List[str], Optional[str]]:
    """The command with the interpreter the sidecar should really run as, on Windows.

    A venv's ``Scripts\\python.exe`` is CPython's redirector: it starts the base ``python.exe``
    named by ``home`` in ``pyvenv.cfg`` as its child, in a job that dies with it, and sets
    ``__PYVENV_LAUNCHER__`` so that child sets itself up as the venv. Started through it, the
    sidecar's pid is not ours to wait on or kill, and a console program started by a process
    without a console gets a new, visible console window, whose closing kills the sidecar.
    So do what the redirector does ourselves, with the window-less ``pythonw.exe``: run the
    base interpreter directly and hand it the venv through ``__PYVENV_LAUNCHER__`` (returned
    second; None when there is no venv). Outside a venv ``pythonw.exe`` beside ``python.exe``
    is used. Anything that is not a ``python.exe``/``pythonw.exe`` is run as given.
    """
    exe = Path(cmd[0])
    if exe.name.lower() not in ("python.exe", "pythonw.exe"):
        return list(cmd), None
    home = None  # type: Optional[Path]
    # Where the redirector looks: beside itself, then two levels up (the venv's root).
    for cfg in (exe.parent / "pyvenv.cfg", exe.parent.parent / "pyvenv.cfg"):
        value = _venv_home(cfg)
        if value:
            home = Path(value)
            break
    folder = home if home is not None else exe.parent
    for name in ("pythonw.exe", "python.exe"):
        candidate = folder / name
        if candidate.is_file():
            return [str(candidate), *cmd[1:]], (str(exe) if home is not None else None)
    return list(cmd), None


def _venv_home(cfg: Path) -> Optional[str]:
    """``home`` from a ``pyvenv.cfg`` (``key = value`` lines), or None."""
    try:
        with open(str(cfg), encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == "home" and value.strip():
                    return value.strip()
    except (OSError, UnicodeDecodeError):
        return None
    return None


class SpawnPlan(NamedTuple):
    """How to start the sidecar: the argv, its whole environment and ``Popen``'s own options."""

    argv: List[str]
    env: Dict[str, str]
    options: Dict[str, Any]


def spawn_plan(
    cmd: List[str],
    extra_env: Mapping[str, str],
    environ: Mapping[str, str],
    platform: str,
    clean: bool = True,
) -> SpawnPlan:
    """Everything platform-specific about starting the sidecar, decided without starting it.

    ``clean``: start from :func:`clean_env` (the recorded command and the source checkout's);
    False keeps the caller's whole environment (a command the user or a test gave, whose
    environment is part of it). ``extra_env`` (the record's) is added after cleaning.
    POSIX: a new session, so the sidecar outlives the plug-in process and its terminal.
    Windows: :func:`windows_interpreter`, with ``CREATE_NO_WINDOW`` (no console, should the
    interpreter be a console program) and ``CREATE_NEW_PROCESS_GROUP`` (the editor's Ctrl+C does
    not reach it). Not ``DETACHED_PROCESS``: Windows ignores ``CREATE_NO_WINDOW`` with it, and a
    console program then opens a window of its own.
    """
    env = clean_env(environ, platform) if clean else dict(environ)
    env.pop(ENV_SIDECAR_COMMAND, None)
    env.update(extra_env)
    with_huge_pages(env, platform)
    if platform != "win32":
        return SpawnPlan(list(cmd), env, {"start_new_session": True})
    argv, launcher = windows_interpreter(cmd)
    if launcher is not None:
        env[_VENV_LAUNCHER] = launcher
    flags = _CREATE_NO_WINDOW | _CREATE_NEW_PROCESS_GROUP
    return SpawnPlan(argv, env, {"creationflags": flags})


def spawn_sidecar(
    cmd: List[str], extra_env: Dict[str, str], rundir: Path, clean: bool = True
) -> Spawned:
    """Start the sidecar detached from this (often short-lived) plug-in process.

    How, per platform, is :func:`spawn_plan`'s. Its stdout, which carries only the readiness
    line, is a pipe drained by a daemon thread. Its stderr (logs, never pixels) goes to
    ``sidecar.log`` in the private runtime directory: a pipe would break as soon as this plug-in
    process exits while the sidecar keeps logging.
    """
    plan = spawn_plan(cmd, extra_env, os.environ, sys.platform, clean)
    log_path = None  # type: Optional[Path]
    log_fh = None
    log_start = 0
    try:
        rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = rundir / LOG_FILE
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(str(log_path), flags, 0o600)
        if os.fstat(fd).st_size > _LOG_MAX:
            os.ftruncate(fd, 0)
        log_start = os.fstat(fd).st_size
        log_fh = os.fdopen(fd, "ab")
    except OSError:
        log_path = None
    try:
        proc = subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fh if log_fh is not None else subprocess.DEVNULL,
            env=plan.env,
            cwd=str(Path.home()) if Path.home().is_dir() else None,
            close_fds=True,
            **plan.options,
        )
    except OSError as exc:
        raise error(
            INTERNAL,
            "cannot_start",
            connection=True,
            command=" ".join(plan.argv),
            error=str(exc),
        ) from exc
    finally:
        if log_fh is not None:
            log_fh.close()
    return Spawned(proc, log_path, log_start)
