"""Per-user directories: where the connection file lives and where models are stored.

Kept in one module so the sidecar, the CLI and the tests agree on every location, and so tests can
isolate themselves with ``OFFCUT_RUNTIME_DIR`` / ``OFFCUT_MODELS_DIR`` / ``OFFCUT_CONFIG_DIR``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def runtime_dir() -> Path:
    """Directory of the connection file and lock (docs/protocol.md, "Discovery")."""
    if os.environ.get("OFFCUT_RUNTIME_DIR"):
        return Path(os.environ["OFFCUT_RUNTIME_DIR"])
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "offcut" / "run"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "offcut" / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "offcut"
    return Path.home() / ".cache" / "offcut" / "run"


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
    return runtime_dir() / "sidecar.json"


def lock_file() -> Path:
    return runtime_dir() / "sidecar.lock"
