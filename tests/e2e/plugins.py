"""Installing the plug-ins for the end-to-end tests the way a user does: ``offcut install``.

Under CI the command is the ``offcut`` of a wheel built from this repository and installed in a
venv of its own, with no source tree on its path (``OFFCUT_E2E_OFFCUT``, set by ``.ci/test``):
the editors then run exactly the files a user's ``pip install offcut`` puts in place. Locally,
without that variable, the source tree's ``python -m offcut`` is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def installer() -> list[str]:
    """The argv prefix of the ``offcut`` command that installs the plug-ins."""
    wheel_offcut = os.environ.get("OFFCUT_E2E_OFFCUT")
    if wheel_offcut:
        return [wheel_offcut]
    if os.environ.get("CI"):
        pytest.fail("under CI the editors must run the wheel's plug-ins: set OFFCUT_E2E_OFFCUT")
    return [sys.executable, "-m", "offcut"]


def install_plugin(editor: str, profile: Path) -> str:
    """``offcut install EDITOR --profile PROFILE``; returns what it printed."""
    env = dict(os.environ)
    if not os.environ.get("OFFCUT_E2E_OFFCUT"):
        env["PYTHONPATH"] = str(REPO / "sidecar") + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)  # the wheel's files only, nothing from this checkout
    out = subprocess.run(
        [*installer(), "install", editor, "--profile", str(profile)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )
    if out.returncode != 0:
        raise RuntimeError(f"offcut install {editor} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout
