"""``offcut models import`` as a user runs it: the real CLI process, the real catalog, real files.

The children run under a 1 MB file-size limit (RLIMIT_FSIZE): an import that refuses before
copying never comes near it, and a regression that copies first fails at once instead of
filling this machine's disk.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from tests.conftest import SIDECAR_SRC

LIMIT = 1 << 20


def _small_files_only() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def models_import(name: str, file: Path, models: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        OFFCUT_MODELS_DIR=str(models),
        PYTHONPATH=str(SIDECAR_SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return subprocess.run(
        [sys.executable, "-m", "offcut", "models", "import", name, str(file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_small_files_only,
    )


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that uses no disk (a hole)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def test_a_huge_file_is_refused_before_anything_is_copied(tmp_path: Path) -> None:
    """A 3 GB file offered as u2netp (4.6 MB) used to be copied whole into the models folder
    before its size was looked at. Now it is refused from its size alone; for a model whose
    size the catalog does not state, anything over the largest accepted download is refused."""
    models = tmp_path / "models"
    big = sparse(tmp_path / "u2netp.onnx", 3_000_000_000)
    r = models_import("u2netp", big, models)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{big} is 3000000000 bytes but model u2netp is 4574861 bytes" in r.stderr
    assert "Nothing was imported" in r.stderr
    assert not models.exists() or list(models.iterdir()) == []

    huge = sparse(tmp_path / "u2net.onnx", 5 << 30)
    r = models_import("u2net", huge, models)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{huge} is {5 << 30} bytes, larger than any model Offcut accepts" in r.stderr
    assert not models.exists() or list(models.iterdir()) == []


def test_a_write_that_fails_leaves_nothing_and_says_what_to_do(
    tmp_path: Path, models_dir: Path
) -> None:
    """The real u2netp (4.6 MB) into a models folder where files may not grow past 1 MB: the
    kernel fails the copy as a full disk would. No traceback, no partial file, and the message
    names the folder."""
    models = tmp_path / "models"
    r = models_import("u2netp", models_dir / "u2netp.onnx", models)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"Could not write model u2netp into the models folder {models}" in r.stderr
    assert "File too large" in r.stderr and "OFFCUT_MODELS_DIR" in r.stderr
    assert "Free at least 4,574,861 bytes there" in r.stderr
    assert list(models.iterdir()) == []
