"""Running programs from the cached Debian trixie rootfs (real GIMP 3 / Krita 5) in tests.

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
from pathlib import Path

import pytest

ROOTFS = Path(os.environ.get("OFFCUT_ROOTFS", "/var/cache/offcut/rootfs-trixie"))
STAMP = ".offcut-rootfs-v1"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rootfs_problems(*programs: str) -> list[str]:
    """Why the rootfs cannot be used here (empty when it can); ``programs`` are paths in it."""
    problems = []
    if not (ROOTFS / STAMP).is_file():
        problems.append(f"the Debian trixie rootfs is missing at {ROOTFS}: run .ci/rootfs.sh")
    else:
        for program in programs:
            # lexists: the rootfs's absolute symlinks (alternatives) point into the rootfs.
            if not os.path.lexists(ROOTFS / program.lstrip("/")):
                problems.append(f"{ROOTFS} has no {program}: rebuild it with .ci/rootfs.sh")
    if os.geteuid() != 0:
        problems.append("the end-to-end tests need root (unshare, mount, chroot)")
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is not installed on the host")
    return problems


def require_rootfs(*programs: str) -> Path:
    """The rootfs, or a skip saying why — a failure under CI, where nothing may be skipped."""
    problems = rootfs_problems(*programs)
    if problems:
        reason = "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(f"end-to-end prerequisites missing under CI: {reason}")
        pytest.skip(reason)
    return ROOTFS


def namespace_script(binds: Iterable[Path], argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The shell script run by ``unshare``: mounts, then ``exec chroot`` with a clean env."""
    root = shlex.quote(str(ROOTFS))
    lines = [
        "set -e",
        f"mount -t proc proc {root}/proc",
        # A private /tmp: X sockets, lock files and mount points stay out of the shared rootfs.
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/tmp",
    ]
    for host in binds:
        host = Path(host).resolve()
        inside = shlex.quote(str(ROOTFS) + str(host))
        lines.append(f"mkdir -p {inside}")
        lines.append(f"mount --bind {shlex.quote(str(host))} {inside}")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    cmd = " ".join(shlex.quote(a) for a in argv)
    lines.append(f"exec chroot {root} /usr/bin/env -i {env_args} {cmd}")
    return "\n".join(lines)


def run_in_rootfs(
    argv: Sequence[str],
    binds: Iterable[Path] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the rootfs; stdout and stderr are merged, in the order written."""
    full_env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    full_env.update(env or {})
    script = namespace_script(binds, argv, full_env)
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
