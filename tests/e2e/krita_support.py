"""Running real Krita (5.2 in trixie, 6.0 in sid) from the editor matrix's rootfs in the tests.

Each Krita runs in its own mount namespace (``unshare -m``): ``/proc`` and the test's work
directory are mounted inside the rootfs only for that process tree and vanish with it, so a
crashed test leaves no mount behind and the GIMP tests can use the same rootfs at the same time.
The work directory is bind-mounted at the same path inside the rootfs, so the host sidecar's
connection file, Krita's profile and the shim have one path on both sides.

Krita runs under its own Xvfb with a test-only plug-in (``krita_driver.py``) that connects back
to the test over loopback TCP and runs commands on Krita's UI thread. The real Offcut plug-in is
installed with ``offcut install krita --profile``, exactly as a user installs it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from .plugins import install_plugin
from .rootfs import Rootfs

DRIVER = Path(__file__).with_name("krita_driver.py")


def _free_display(root: Path) -> int:
    for n in range(120, 400):
        if (
            not (root / "tmp" / ".X11-unix" / f"X{n}").exists()
            and not (root / "tmp" / f".X{n}-lock").exists()
        ):
            return n
    raise RuntimeError("no free X display number")


def make_profile(work: Path, shim: bool = False) -> dict[str, Path]:
    """A fresh Krita home with Offcut installed (and so enabled), plus the driver plug-in."""
    home = work / "home"
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    pykrita.mkdir(parents=True, exist_ok=True)
    install_plugin("krita", pykrita)
    driver = pykrita / "offcut_e2e_driver"
    driver.mkdir(exist_ok=True)
    shutil.copyfile(DRIVER, driver / "__init__.py")
    (pykrita / "offcut_e2e_driver.desktop").write_text(
        "[Desktop Entry]\nType=Service\nServiceTypes=Krita/PythonPlugin\n"
        "X-KDE-Library=offcut_e2e_driver\nX-Python-2-Compatible=false\n"
        "Name=Offcut e2e driver\nComment=test only\n"
    )
    # `offcut install krita` has enabled Offcut in this profile's kritarc, as it does for users
    # (Krita was not running); the test adds only its driver's key and the splash setting.
    kritarc = home / ".config" / "kritarc"
    text = kritarc.read_text() if kritarc.is_file() else ""
    if "[python]\n" not in text:
        raise RuntimeError(f"offcut install krita left no [python] group in {kritarc}:\n{text}")
    kritarc.write_text(
        text.replace("[python]\n", "[python]\nenable_offcut_e2e_driver=true\n", 1)
        + "\n[General]\nshowSplash=false\n"
    )
    paths = {"home": home, "pykrita": pykrita}
    if shim:
        # pyzmq and msgpack "not installed": packages that shadow the real ones and refuse.
        shim_dir = work / "shim"
        for mod in ("zmq", "msgpack"):
            (shim_dir / mod).mkdir(parents=True, exist_ok=True)
            (shim_dir / mod / "__init__.py").write_text(
                f'raise ImportError("{mod} is hidden by the Offcut e2e shim")\n'
            )
        paths["shim"] = shim_dir
    return paths


class KritaProcess:
    """One real Krita under Xvfb in the rootfs, driven over a loopback socket."""

    def __init__(
        self,
        rootfs: Rootfs,
        work: Path,
        runtime_dir: Path,
        shim: bool = False,
        geometry: str = "1600x1000",
        mount: Path | None = None,
        env: dict[str, str] | None = None,
        language: str | None = None,
    ) -> None:
        """``env`` adds to Krita's environment (``LANGUAGE=de``); ``language`` is Krita's own
        language setting (Settings ▸ Switch Application Language), written to the profile's
        ``klanguageoverridesrc`` as that dialog does."""
        self.rootfs = rootfs.require("/usr/bin/krita")
        self.root = rootfs.path
        self.work = work
        # One bind mount must show both Krita's profile and the sidecar's runtime dir.
        self.mount = mount or work
        for p in (work, runtime_dir):
            if not p.is_relative_to(self.mount):
                raise ValueError(f"{p} is not inside the bind-mounted {self.mount}")
        self.runtime_dir = runtime_dir
        self.paths = make_profile(work, shim=shim)
        self.extra_env = dict(env or {})
        if language is not None:
            config = self.paths["home"] / ".config"
            config.mkdir(parents=True, exist_ok=True)
            (config / "klanguageoverridesrc").write_text(f"[Language]\nkrita={language}\n")
        self.display = _free_display(self.root)
        self.geometry = geometry
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self.mountpoint = self.root / str(self.mount).lstrip("/")
        self._created: list[Path] = []
        self._next_id = 0
        self._buf = b""
        self.proc: subprocess.Popen[str] | None = None
        self.conn: socket.socket | None = None

    # -- life cycle -------------------------------------------------------------------------

    def _mkdirs_in_rootfs(self) -> None:
        """Create the bind mount's mount point, remembering what to remove afterwards."""
        missing = []
        p = self.mountpoint
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._created.append(d)

    def start(self, timeout: float = 180.0) -> dict:
        self._mkdirs_in_rootfs()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(timeout)
        port = server.getsockname()[1]
        home = self.paths["home"]
        env = {
            "HOME": str(home),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "DISPLAY": f":{self.display}",
            "XDG_RUNTIME_DIR": str(self.work / "xdg"),
            # Krita's swap and single-instance files go with the profile, not the shared /tmp
            "TMPDIR": str(self.work / "tmp"),
            "OFFCUT_RUNTIME_DIR": str(self.runtime_dir),
            "OFFCUT_E2E_PORT": str(port),
            "QT_X11_NO_MITSHM": "1",
        }
        (self.work / "xdg").mkdir(mode=0o700, exist_ok=True)
        (self.work / "tmp").mkdir(mode=0o700, exist_ok=True)
        if "shim" in self.paths:
            env["PYTHONPATH"] = str(self.paths["shim"])
        env.update(self.extra_env)
        env_args = " ".join(f"{k}='{v}'" for k, v in env.items())
        inner = (
            f"Xvfb :{self.display} -screen 0 {self.geometry}x24 -nolisten tcp "
            f">/dev/null 2>&1 & xpid=$!; "
            f"for i in $(seq 100); do [ -e /tmp/.X11-unix/X{self.display} ] && break; "
            f"sleep 0.1; done; "
            f"krita --nosplash; rc=$?; kill $xpid; wait $xpid; exit $rc"
        )
        outer = (
            f"set -e; mount -t proc proc '{self.root}/proc'; "
            f"mount --bind '{self.mount}' '{self.mountpoint}'; "
            f"exec chroot '{self.root}' /usr/bin/env -i {env_args} /bin/sh -c '{inner}'"
        )
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", outer],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self.conn, _ = server.accept()
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError("Krita did not start the e2e driver:\n" + self.tail()) from exc
        finally:
            server.close()
        self.conn.settimeout(None)
        return self.call("hello", timeout=60)

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip("\n"))

    def tail(self, n: int = 60) -> str:
        return "\n".join(list(self.log)[-n:])

    def call(self, cmd: str, timeout: float = 120.0, **args) -> dict:
        """Send one command to the driver and wait for its reply."""
        assert self.conn is not None, "Krita is not running"
        self._next_id += 1
        rid = self._next_id
        msg = dict(args, cmd=cmd, id=rid)
        self.conn.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Krita did not answer {cmd} in {timeout} s:\n{self.tail()}")
            self.conn.settimeout(left)
            try:
                chunk = self.conn.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionError as exc:  # Krita died: its last words say why
                raise RuntimeError(
                    f"Krita dropped the driver during {cmd}:\n{self.tail()}"
                ) from exc
            if not chunk:
                raise RuntimeError(
                    f"Krita closed the driver connection during {cmd}:\n" + self.tail()
                )
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        assert reply.pop("id") == rid
        if not reply.pop("ok"):
            raise RuntimeError(f"driver command {cmd} failed:\n{reply.get('error')}")
        return reply

    def screenshot(self) -> bytes:
        """The whole X screen as PNG bytes, taken with ImageMagick's `import -window root`."""
        out = subprocess.run(
            [
                "chroot",
                str(self.root),
                "/usr/bin/env",
                "-i",
                f"DISPLAY=:{self.display}",
                "PATH=/usr/bin:/bin",
                "import",
                "-window",
                "root",
                "png:-",
            ],
            capture_output=True,
            timeout=60,
        )
        if out.returncode != 0 or not out.stdout.startswith(b"\x89PNG"):
            raise RuntimeError(f"import -window root failed: {out.stderr.decode()}")
        return out.stdout

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Quit Krita (politely, then by its process group) and remove the mount point."""
        if self.proc is not None and self.proc.poll() is None:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.call("quit", timeout=10)
            if self.wait_exit(30) is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                if self.wait_exit(10) is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        # The namespace's mounts died with it; only our empty mount point dirs remain.
        for d in reversed(self._created):
            with contextlib.suppress(OSError):
                d.rmdir()
        self._created.clear()
        for lock in (
            self.root / "tmp" / f".X{self.display}-lock",
            self.root / "tmp" / ".X11-unix" / f"X{self.display}",
        ):
            if lock.exists():
                lock.unlink()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))
