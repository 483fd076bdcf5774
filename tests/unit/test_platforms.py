"""Every Windows- and macOS-only branch, run here on Linux with the platform handed in.

Nothing here pretends to call a Windows API: where a branch talks to kernel32 the test hands it
a stand-in that keeps the bookkeeping Windows documents (byte-range locks per handle, the size a
structure must declare), so what is checked is which calls are made with which arguments and
what is made of the answer. What only a real Windows or macOS can show is listed in
docs/platforms.md.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import struct
import sys
from pathlib import Path

import pytest

from offcut.client import discovery, zmtp
from offcut.client.discovery import clean_env, spawn_plan, windows_interpreter
from offcut.commands import install
from offcut.server import instance, server

DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000

# What bundled editors leave in the environment their plug-ins run in.
EDITOR_ENV = {
    "HOME": "/home/ann",
    "PATH": "/usr/bin",
    "XDG_RUNTIME_DIR": "/run/user/1000",
    "XDG_DATA_HOME": "/home/ann/.local/share",
    "OFFCUT_RUNTIME_DIR": "/home/ann/run",
    "OFFCUT_MODELS_DIR": "/home/ann/models",
    "LANG": "de_DE.UTF-8",
    "PYTHONPATH": "/tmp/.mount_krita/usr/lib/python3.10/site-packages",
    "PYTHONHOME": "/tmp/.mount_krita/usr",
    "PYTHONSTARTUP": "/home/ann/.pythonrc",
    "PYTHONNOUSERSITE": "1",
    "PYTHONEXECUTABLE": "/Applications/GIMP.app/Contents/MacOS/python3",
    "PYTHONINSPECT": "1",
    "__PYVENV_LAUNCHER__": "/Applications/GIMP.app/Contents/MacOS/python3",
    "QT_PLUGIN_PATH": "/tmp/.mount_krita/usr/plugins",
    "GI_TYPELIB_PATH": "/app/lib/girepository-1.0",
    "OFFCUT_SIDECAR_COMMAND": '["/bin/false"]',
}
KEPT = {
    "HOME",
    "PATH",
    "XDG_RUNTIME_DIR",
    "XDG_DATA_HOME",
    "OFFCUT_RUNTIME_DIR",
    "OFFCUT_MODELS_DIR",
    "LANG",
}


# -- the sidecar's environment -------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_the_sidecar_gets_a_clean_python_environment(platform):
    env = clean_env(EDITOR_ENV, platform)
    assert set(env) == KEPT
    assert all(env[k] == EDITOR_ENV[k] for k in KEPT)


def test_windows_variable_names_are_matched_whatever_their_case():
    env = clean_env({"PythonPath": "C:\\GIMP\\lib", "SystemRoot": "C:\\Windows"}, "win32")
    assert env == {"SystemRoot": "C:\\Windows"}


def test_macos_drops_the_dynamic_loader_variables_only_there():
    env = {"DYLD_LIBRARY_PATH": "/Applications/Krita.app/Contents/Frameworks", "A": "b"}
    assert clean_env(env, "darwin") == {"A": "b"}
    assert clean_env(env, "linux") == env


def test_an_appimage_keeps_only_the_users_own_loader_entries():
    env = {
        "APPDIR": "/tmp/.mount_kritaXY",
        "LD_LIBRARY_PATH": "/tmp/.mount_kritaXY/usr/lib:/opt/cuda/lib64:/tmp/.mount_kritaXY",
        "LD_PRELOAD": "/tmp/.mount_kritaXY/usr/lib/libfix.so /usr/lib/libmine.so",
    }
    out = clean_env(env, "linux")
    assert out["LD_LIBRARY_PATH"] == "/opt/cuda/lib64"
    assert out["LD_PRELOAD"] == "/usr/lib/libmine.so"
    only_bundle = clean_env({**env, "LD_PRELOAD": "/tmp/.mount_kritaXY/x.so"}, "linux")
    assert "LD_PRELOAD" not in only_bundle
    # Outside an AppImage the user's loader settings are theirs.
    assert clean_env({"LD_LIBRARY_PATH": "/x"}, "linux") == {"LD_LIBRARY_PATH": "/x"}


def test_the_records_own_variables_come_after_cleaning():
    plan = spawn_plan(["/v/bin/python", "-m", "offcut", "serve"], {"PYTHONPATH": "/src"},
                      EDITOR_ENV, "linux")  # fmt: skip
    assert plan.env["PYTHONPATH"] == "/src"
    assert "PYTHONHOME" not in plan.env and "OFFCUT_SIDECAR_COMMAND" not in plan.env


def test_a_command_given_by_the_user_keeps_the_users_environment():
    plan = spawn_plan(["/my/python"], {}, EDITOR_ENV, "linux", clean=False)
    assert plan.env["PYTHONPATH"] == EDITOR_ENV["PYTHONPATH"]
    assert "OFFCUT_SIDECAR_COMMAND" not in plan.env  # never handed on: it would recurse


READY_WITH_ENV = (
    "import json, os, sys; print(json.dumps({'ready': True, 'pid': os.getpid(), "
    "'env': dict(os.environ), 'path': sys.path, 'prefix': sys.prefix}), flush=True)"
)


def test_a_real_start_survives_an_editors_python_variables(tmp_path, monkeypatch):
    """A bundle's PYTHONHOME would stop this Python before it runs a line (it would look for
    its standard library there); started through the real spawn path, the child starts, and
    sees none of the editor's Python variables."""
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "editor-bundle"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "editor-site-packages"))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "startup.py"))
    monkeypatch.setenv("__PYVENV_LAUNCHER__", str(tmp_path / "editor-python"))
    spawned = discovery.spawn_sidecar([sys.executable, "-c", READY_WITH_ENV], {}, tmp_path / "run")
    ready = spawned.wait_ready(60)
    spawned.proc.wait(10)
    names = set(ready["env"])
    assert not {n for n in names if n.startswith("PYTHON") or n == "__PYVENV_LAUNCHER__"}
    assert str(tmp_path) not in json.dumps(ready["path"])
    assert ready["prefix"] == sys.prefix


# -- how the process is started ------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_posix_starts_a_new_session(platform):
    plan = spawn_plan(["/v/bin/python", "-m", "offcut", "serve"], {}, {}, platform)
    assert plan.argv == ["/v/bin/python", "-m", "offcut", "serve"]
    assert plan.options == {"start_new_session": True}


def make_venv(tmp_path: Path, cfg_beside_exe: bool = False) -> tuple[Path, Path]:
    """A Windows venv's layout: Scripts\\python.exe (the redirector), pyvenv.cfg naming home."""
    base = tmp_path / "Python312"
    base.mkdir()
    for name in ("python.exe", "pythonw.exe"):
        (base / name).write_bytes(b"MZ")
    scripts = tmp_path / "venv" / "Scripts"
    scripts.mkdir(parents=True)
    for name in ("python.exe", "pythonw.exe"):
        (scripts / name).write_bytes(b"MZ")
    cfg = (scripts if cfg_beside_exe else scripts.parent) / "pyvenv.cfg"
    cfg.write_text(f"home = {base}\ninclude-system-site-packages = false\nversion = 3.12.4\n")
    return base, scripts / "python.exe"


@pytest.mark.parametrize("cfg_beside_exe", [False, True])
def test_windows_runs_the_base_pythonw_as_the_venv(tmp_path, cfg_beside_exe):
    base, redirector = make_venv(tmp_path, cfg_beside_exe)
    plan = spawn_plan([str(redirector), "-m", "offcut", "serve"], {}, {"PATH": "x"}, "win32")
    assert plan.argv == [str(base / "pythonw.exe"), "-m", "offcut", "serve"]
    assert plan.env["__PYVENV_LAUNCHER__"] == str(redirector)  # how it finds the venv's packages
    flags = plan.options["creationflags"]
    assert flags == CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP
    assert not flags & DETACHED_PROCESS, "Windows ignores CREATE_NO_WINDOW with it"
    assert "start_new_session" not in plan.options


def test_windows_replaces_an_inherited_venv_launcher(tmp_path):
    _, redirector = make_venv(tmp_path)
    env = {"__PYVENV_LAUNCHER__": "C:\\Program Files\\GIMP 3\\bin\\python.exe"}
    plan = spawn_plan([str(redirector)], {}, env, "win32")
    assert plan.env["__PYVENV_LAUNCHER__"] == str(redirector)


def test_windows_without_a_venv_uses_pythonw_beside_python(tmp_path):
    (tmp_path / "python.exe").write_bytes(b"MZ")
    assert windows_interpreter([str(tmp_path / "python.exe"), "-m", "offcut"]) == (
        [str(tmp_path / "python.exe"), "-m", "offcut"],
        None,
    )
    (tmp_path / "pythonw.exe").write_bytes(b"MZ")
    argv, launcher = windows_interpreter([str(tmp_path / "python.exe"), "-m", "offcut"])
    assert argv == [str(tmp_path / "pythonw.exe"), "-m", "offcut"] and launcher is None


def test_windows_falls_back_to_the_base_python_exe(tmp_path):
    base, redirector = make_venv(tmp_path)
    (base / "pythonw.exe").unlink()
    argv, launcher = windows_interpreter([str(redirector)])
    assert argv == [str(base / "python.exe")] and launcher == str(redirector)


def test_windows_leaves_other_programs_and_broken_venvs_alone(tmp_path):
    assert windows_interpreter(["C:\\tools\\offcut-serve.exe", "--x"]) == (
        ["C:\\tools\\offcut-serve.exe", "--x"],
        None,
    )
    base, redirector = make_venv(tmp_path)
    for name in ("python.exe", "pythonw.exe"):
        (base / name).unlink()  # the base Python was uninstalled: let the redirector say so
    assert windows_interpreter([str(redirector)]) == ([str(redirector)], None)


# -- the lock probe ------------------------------------------------------------------------------


class LockingKernel32:
    """Windows' byte-range locks as documented for LockFileEx/LockFile: per handle, mandatory;
    a shared lock conflicts only with another handle's exclusive one, an exclusive lock with any
    other handle's lock. Only byte 0 is ever locked here."""

    EXCLUSIVE = 0x2

    def __init__(self):
        self.held = {}  # handle -> "shared" | "exclusive"
        self.calls = []

    def LockFileEx(self, handle, flags, reserved, low, high, overlapped):
        handle = handle.value
        self.calls.append(("lock", handle, flags, low, high))
        assert (low, high) == (1, 0), "one byte"
        want = "exclusive" if flags & self.EXCLUSIVE else "shared"
        others = [mode for h, mode in self.held.items() if h != handle]
        if "exclusive" in others or (want == "exclusive" and others):
            return 0
        self.held[handle] = want
        return 1

    def UnlockFileEx(self, handle, reserved, low, high, overlapped):
        self.calls.append(("unlock", handle.value, low, high))
        return 1 if self.held.pop(handle.value, None) else 0


def probe(kernel32, handle):
    return discovery._held_windows(3, kernel32=kernel32, os_handle=lambda fd: handle)


def test_windows_probe_sees_the_sidecars_lock_and_leaves_it_alone():
    k = LockingKernel32()
    k.held[100] = "exclusive"  # the sidecar's msvcrt.locking
    assert probe(k, 200) is True
    assert k.held == {100: "exclusive"}, "the probe took or dropped nothing of the sidecar's"
    (_, _, flags, _, _), *rest = k.calls
    assert flags == discovery.LOCKFILE_FAIL_IMMEDIATELY, "shared and non-blocking"
    assert not flags & discovery.LOCKFILE_EXCLUSIVE_LOCK
    assert rest == [], "nothing to release after a refusal"


def test_windows_probes_at_the_same_moment_do_not_see_each_other():
    k = LockingKernel32()
    k.held[300] = "shared"  # another editor's probe, caught mid-probe
    assert probe(k, 200) is False
    assert k.held == {300: "shared"}, "ours was released, theirs untouched"
    assert k.calls[-1] == ("unlock", 200, 1, 0)


def test_windows_probe_of_a_free_lock_says_so_and_releases_it():
    k = LockingKernel32()
    assert probe(k, 200) is False
    assert k.held == {}


# -- memory in `status` --------------------------------------------------------------------------


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads this Linux's /proc")
def test_linux_reports_the_current_resident_set():
    held = bytearray(64 << 20)  # touched: resident now
    for i in range(0, len(held), 4096):
        held[i] = 1
    rss, kind = server.memory_reader("linux")()
    assert kind == "current"
    assert abs(rss - vm_rss()) < 16 << 20
    del held


@pytest.mark.parametrize(("platform", "unit"), [("darwin", 1), ("freebsd14", 1024)])
def test_where_only_the_peak_is_known_it_is_labelled_peak(platform, unit):
    rss, kind = server.memory_reader(platform)()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert kind == "peak"
    assert peak * unit <= rss <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


class MemoryKernel32:
    """K32GetProcessMemoryInfo's contract: refuse a structure whose ``cb`` is not its size."""

    def __init__(self, working_set: int):
        self.working_set = working_set
        self.seen_cb = None
        parent = self

        class Fn:
            argtypes = None
            restype = None

            def __call__(self, process, counters_ref, cb):
                counters = counters_ref._obj
                parent.seen_cb = (cb, counters.cb, ctypes.sizeof(counters))
                if counters.cb != ctypes.sizeof(counters) or cb != counters.cb:
                    return 0
                counters.PeakWorkingSetSize = parent.working_set * 2
                counters.WorkingSetSize = parent.working_set
                counters.PagefileUsage = 1
                return 1

        class Current:
            restype = None

            def __call__(self):
                return 0xFFFFFFFFFFFFFFFF  # the pseudo-handle -1

        self.K32GetProcessMemoryInfo = Fn()
        self.GetCurrentProcess = Current()


def test_windows_reads_the_working_set_not_the_peak():
    k = MemoryKernel32(123_456_789)
    read = server.windows_working_set(kernel32=k)
    assert read() == 123_456_789
    cb, declared, size = k.seen_cb
    # PROCESS_MEMORY_COUNTERS: two DWORDs, then eight SIZE_Ts.
    assert cb == declared == size == 8 + 8 * ctypes.sizeof(ctypes.c_size_t)


# -- the runtime directory on Windows ------------------------------------------------------------

PROFILE = {
    "USERPROFILE": "C:\\Users\\ann",
    "LOCALAPPDATA": "C:\\Users\\ann\\AppData\\Local",
    "APPDATA": "C:\\Users\\ann\\AppData\\Roaming",
}


@pytest.mark.parametrize(
    "path",
    [
        "C:\\Users\\ann\\AppData\\Local\\offcut\\run",
        "c:/users/ANN/offcut-run",  # case and slashes do not matter there
        "C:\\Users\\ann",
    ],
)
def test_windows_accepts_a_runtime_dir_in_the_users_profile(path):
    assert discovery.windows_dir_problem(path, PROFILE) is None


@pytest.mark.parametrize(
    "path",
    [
        "C:\\Temp\\offcut",
        "C:\\Users\\ann2\\run",  # a neighbour whose name starts like ours
        "C:\\Users\\ann\\..\\bob\\run",
        "\\\\server\\share\\offcut",
        "D:\\offcut",
        "offcut\\run",
    ],
)
def test_windows_refuses_a_runtime_dir_others_may_write(path):
    problem = discovery.windows_dir_problem(path, PROFILE)
    assert problem and "OFFCUT_RUNTIME_DIR" in problem


def test_windows_runtime_dir_check_follows_junctions():
    moved = {"C:\\Users\\ann\\run": "C:\\Temp\\run"}
    problem = discovery.windows_dir_problem(
        "C:\\Users\\ann\\run", PROFILE, resolve=lambda p: moved.get(p, p)
    )
    assert problem and "outside your user profile" in problem


def test_windows_without_a_known_profile_trusts_no_override():
    assert discovery.windows_dir_problem("C:\\Users\\ann\\run", {}) is not None


# -- replacing the connection file while a reader has it open ------------------------------------


def flaky(failures: int):
    calls = []

    def action():
        calls.append(1)
        if len(calls) <= failures:
            raise PermissionError(13, "The process cannot access the file")

    return action, calls


def test_windows_retries_while_a_reader_holds_the_connection_file():
    action, calls = flaky(3)
    instance.while_shared(action, "win32", pause=0)
    assert len(calls) == 4


def test_windows_gives_up_on_a_file_that_stays_locked():
    action, calls = flaky(100)
    with pytest.raises(PermissionError):
        instance.while_shared(action, "win32", tries=5, pause=0)
    assert len(calls) == 5


def test_posix_raises_a_permission_error_at_once():
    action, calls = flaky(1)
    with pytest.raises(PermissionError):
        instance.while_shared(action, "linux", pause=0)
    assert len(calls) == 1


# -- socket timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_posix_socket_timeouts_are_a_timeval(platform):
    value = zmtp.kernel_timeout(2.7, platform)
    assert value == struct.pack("ll", 2, 0) and len(value) == 2 * ctypes.sizeof(ctypes.c_long)
    assert zmtp.kernel_timeout(0.2, platform) == struct.pack("ll", 1, 0)


def test_windows_socket_timeouts_are_milliseconds_in_a_dword():
    assert zmtp.kernel_timeout(2.5, "win32") == struct.pack("<I", 2500)
    assert zmtp.kernel_timeout(0.0, "win32") == struct.pack("<I", 1)
    assert zmtp.kernel_timeout(1e12, "win32") == struct.pack("<I", 0xFFFFFFFF)


@pytest.mark.skipif(os.name != "posix", reason="the timeval layout of this system")
def test_the_kernel_reads_back_the_timeout_it_was_given():
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, zmtp.kernel_timeout(3, sys.platform))
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
    assert struct.unpack("ll", got[: struct.calcsize("ll")]) == (3, 0)


# -- where the editors keep their profiles -------------------------------------------------------


def test_windows_finds_microsoft_store_profiles_that_exist(tmp_path):
    local = tmp_path / "Local"
    env = {"APPDATA": str(tmp_path / "Roaming"), "LOCALAPPDATA": str(local)}
    store_krita = local / "Packages/49800Krita_RG8Z7PKEHE0F4/LocalCache/Roaming/krita"
    store_gimp = local / "Packages/GIMP.GIMP_8wekyb3d8bbwe/LocalCache/Roaming/GIMP/3.0"
    store_krita.mkdir(parents=True)
    store_gimp.mkdir(parents=True)
    (local / "Packages/Microsoft.Paint_8wekyb3d8bbwe/LocalCache/Roaming/krita").mkdir(parents=True)
    (local / "Packages/KritaNeverRan_x/LocalCache").mkdir(parents=True)
    krita = install.candidate_targets("krita", "win32", tmp_path, env)
    assert [(t.path, t.kind) for t in krita] == [
        (tmp_path / "Roaming/krita/pykrita", "native"),
        (store_krita / "pykrita", "store"),
    ]
    gimp = install.candidate_targets("gimp", "win32", tmp_path, env)
    assert [(t.path, t.kind) for t in gimp] == [
        (tmp_path / "Roaming/GIMP/3.0/plug-ins", "native"),
        (store_gimp / "plug-ins", "store"),
    ]
    # Only the Store build has run: that is where `offcut install` goes by default.
    assert install.default_targets("krita", platform="win32", home=tmp_path, environ=env) == [
        install.Target(store_krita / "pykrita", "store")
    ]
    assert install._target_for_profile(store_krita / "pykrita").kind == "store"


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_gimps_own_profile_variable_comes_first(tmp_path, platform):
    env = {"GIMP3_DIRECTORY": "portable/gimp-profile", "APPDATA": str(tmp_path / "R")}
    first = install.candidate_targets("gimp", platform, tmp_path, env)[0]
    assert first.path == tmp_path / "portable/gimp-profile/plug-ins"  # relative: under home
    absolute = {**env, "GIMP3_DIRECTORY": str(tmp_path / "stick/profile")}
    assert install.candidate_targets("gimp", platform, tmp_path, absolute)[0].path == (
        tmp_path / "stick/profile/plug-ins"
    )
    assert install.candidate_targets("krita", platform, tmp_path, env)[0].path.name == "pykrita"
