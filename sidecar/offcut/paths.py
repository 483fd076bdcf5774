"""Per-user directories: where the connection file lives and where models are stored.

Kept in one module so the sidecar, the CLI and the tests agree on every location, and so tests can
isolate themselves with ``OFFCUT_RUNTIME_DIR`` / ``OFFCUT_MODELS_DIR`` / ``OFFCUT_CONFIG_DIR``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from offcut.client import wire


def runtime_dir() -> Path:
    """Directory of the connection file and lock: the rule the client follows too (``wire``)."""
    return wire.runtime_dir()


def data_dir() -> Path:
    """Per-user data directory (models live in ``data_dir()/models`` unless overridden)."""
    if os.environ.get("OFFCUT_DATA_DIR"):
        return Path(os.environ["OFFCUT_DATA_DIR"])
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "offcut"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "offcut"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "offcut"


def models_dir() -> Path:
    """Where model files are stored; ``OFFCUT_MODELS_DIR`` overrides it."""
    if os.environ.get("OFFCUT_MODELS_DIR"):
        return Path(os.environ["OFFCUT_MODELS_DIR"])
    return data_dir() / "models"


def connection_file() -> Path:
    return runtime_dir() / wire.CONNECTION_FILE


def lock_file() -> Path:
    return runtime_dir() / wire.LOCK_FILE
