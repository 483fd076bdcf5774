"""Running programs from the cached Debian rootfs of the editor matrix (real GIMP and Krita).

Every run gets its own mount namespace (``unshare --mount``): ``/proc``, a private tmpfs on the
rootfs's ``/tmp`` and bind mounts of the test's own directories exist only for that process tree
and vanish with it. So a crashed or killed test leaves no mount behind, nothing is ever unmounted
by hand, and the GIMP and Krita suites can use the same rootfs at the same time without seeing
each other's X sockets, lock files or profiles.

Host directories are mounted at the *same path* inside the rootfs, so a path written in a spec
file, the sidecar's connection file or a plug-in profile means the same thing on both sides.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOTFS_DIR = Path(os.environ.get("OFFCUT_ROOTFS_DIR", "/var/cache/offcut"))
STAMP = ".offcut-rootfs-v1"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Rootfs:
    """One Debian rootfs of the editor matrix, built and cached by ``.ci/rootfs.sh SUITE``."""

    suite: str
    gimp: str  # GIMP's series, as in its binaries' names: gimp-console-3.0
    krita: str  # the Krita series it ships, for messages and reports

    @property
    def path(self) -> Path:
        return ROOTFS_DIR / f"rootfs-{self.suite}"

    @property
    def gimp_console(self) -> str:
        return f"/usr/bin/gimp-console-{self.gimp}"

    @property
    def gimp_gui(self) -> str:
        return f"/usr/bin/gimp-{self.gimp}"

    def problems(self, *programs: str) -> list[str]:
        """Why this rootfs cannot be used here (empty when it can); ``programs`` are paths in it."""
        problems = []
        build = f".ci/rootfs.sh {self.suite}"
        if not (self.path / STAMP).is_file():
            problems.append(
                f"the Debian {self.suite} rootfs is missing at {self.path}: run {build}"
            )
        else:
            for program in programs:
                # lexists: the rootfs's absolute symlinks (alternatives) point into the rootfs.
                if not os.path.lexists(self.path / program.lstrip("/")):
                    problems.append(f"{self.path} has no {program}: rebuild it with {build}")
        if os.geteuid() != 0:
            problems.append("the end-to-end tests need root (unshare, mount, chroot)")
        for tool in ("unshare", "chroot", "mount"):
            if shutil.which(tool) is None:
                problems.append(f"`{tool}` is not installed on the host")
        return problems

    def require(self, *programs: str) -> Rootfs:
        """This rootfs, or a skip saying why — a failure under CI, where nothing may be skipped."""
        problems = self.problems(*programs)
        if problems:
            reason = "; ".join(problems)
            if os.environ.get("CI"):
                pytest.fail(f"end-to-end prerequisites missing under CI: {reason}")
            pytest.skip(reason)
        return self


# The editor matrix: every end-to-end suite runs in each of these (tests/e2e/conftest.py).
MATRIX = {
    "trixie": Rootfs("trixie", gimp="3.0", krita="5.2"),
    "sid": Rootfs("sid", gimp="3.2", krita="6.0"),
}
# The rootfs whose editors the docs show: only its runs may write the screenshots in docs/img.
DOCS_SUITE = "trixie"
# OFFCUT_E2E_ROOTFS=trixie narrows a local run to one rootfs; CI runs them all.
SELECTED = [
    MATRIX[name.strip()]
    for name in os.environ.get("OFFCUT_E2E_ROOTFS", ",".join(MATRIX)).split(",")
    if name.strip()
]


def namespace_script(
    rootfs: Rootfs, binds: Iterable[Path], argv: Sequence[str], env: Mapping[str, str]
) -> str:
    """The shell script run by ``unshare``: mounts, then ``exec chroot`` with a clean env."""
    root = shlex.quote(str(rootfs.path))
    lines = [
        "set -e",
        f"mount -t proc proc {root}/proc",
        # A private /tmp: X sockets, lock files and mount points stay out of the shared rootfs.
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/tmp",
    ]
    for host in binds:
        host = Path(host).resolve()
        inside = shlex.quote(str(rootfs.path) + str(host))
        lines.append(f"mkdir -p {inside}")
        lines.append(f"mount --bind {shlex.quote(str(host))} {inside}")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    cmd = " ".join(shlex.quote(a) for a in argv)
    lines.append(f"exec chroot {root} /usr/bin/env -i {env_args} {cmd}")
    return "\n".join(lines)


def run_in_rootfs(
    rootfs: Rootfs,
    argv: Sequence[str],
    binds: Iterable[Path] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the rootfs; stdout and stderr are merged, in the order written."""
    full_env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    full_env.update(env or {})
    script = namespace_script(rootfs, binds, argv, full_env)
    # Its own session, so that a time-out ends the whole tree (GIMP and its plug-ins) at once.
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, output=out) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)
