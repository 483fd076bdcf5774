"""The on-disk model store: what is installed, whether it can be trusted, and installing more.

Files live flat in one directory (``paths.models_dir()``, or ``OFFCUT_MODELS_DIR``) under their
catalog file names. A model is usable only when its sha256 is known: from the catalog when the
catalog's checksum is confirmed, otherwise from a *pin* the user made by explicitly trusting a
fetched or imported file (``pins.json`` in the same directory). The engine calls
:meth:`ModelStore.open_verified` before loading, which re-hashes the file, so a corrupted or swapped
model is refused (DESIGN §4: re-verified on first load in each sidecar run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from offcut import paths
from offcut.catalog import ModelSpec
from offcut.errors import BAD_REQUEST, MODEL_INVALID, MODEL_MISSING, OffcutError
from offcut.fetch import (
    BLOCK,
    DEFAULT_TIMEOUT,
    ProgressFn,
    download,
    fsync_dir,
    hash_file,
    new_part,
    unlink_quietly,
)

log = logging.getLogger("offcut.store")

INSTALLED = "installed"
MISSING = "missing"
UNVERIFIED = "unverified"
INVALID = "invalid"

PINS_FILE = "pins.json"
PINS_SCHEMA = 1


@dataclass(frozen=True)
class Pin:
    """A checksum the user confirmed for a model the catalog cannot vouch for."""

    file: str
    sha256: str
    size: int
    origin: str
    pinned_at: str


class ModelStore:
    """Model files in one directory plus the user's pins for unverified models."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.models_dir()

    # ----------------------------------------------------------------- queries

    def path(self, spec: ModelSpec) -> Path:
        return self.root / spec.file

    def state(self, spec: ModelSpec) -> str:
        """``installed`` | ``missing`` | ``unverified`` | ``invalid``, without hashing.

        Cheap enough for every ``models``/``hello`` request; only :meth:`open_verified` and
        :meth:`verify` read the whole file.
        """
        try:
            st = self.path(spec).stat()
        except FileNotFoundError:
            return MISSING
        if not self.path(spec).is_file():
            return INVALID
        if spec.size is not None and st.st_size != spec.size:
            return INVALID
        if spec.verified_sha256 is not None:
            return INSTALLED
        pin = self.pin(spec)
        if pin is None:
            return UNVERIFIED
        return INSTALLED if pin.size == st.st_size else INVALID

    def expected_sha256(self, spec: ModelSpec) -> str | None:
        """The catalog's confirmed sha256, else the user's pin, else None."""
        if spec.verified_sha256 is not None:
            return spec.verified_sha256
        pin = self.pin(spec)
        return pin.sha256 if pin is not None else None

    def verify(self, spec: ModelSpec) -> tuple[bool, str]:
        """(matches the expected sha256, actual sha256); streams the whole file."""
        path = self._require_file(spec)
        sha256, _md5, _size = hash_file(path)
        expected = self.expected_sha256(spec)
        return (expected is not None and sha256 == expected), sha256

    def open_verified(self, spec: ModelSpec) -> tuple[Path, str]:
        """The model's path and sha256, or an error telling the user how to fix it."""
        path = self._require_file(spec)
        expected = self.expected_sha256(spec)
        if expected is None:
            raise OffcutError(
                MODEL_INVALID,
                f"Model {spec.name} is unverified: the catalog has no confirmed checksum for it "
                f"and you have not confirmed this file. Run `offcut models fetch {spec.name} "
                f"--trust` (or `offcut models import {spec.name} FILE --trust`) to accept it.",
            )
        sha256, _md5, _size = hash_file(path)
        if sha256 != expected:
            trust = "" if spec.sha256_verified else " --trust"
            raise OffcutError(
                MODEL_INVALID,
                f"Model {spec.name} failed its checksum (sha256 {sha256}, expected {expected}); "
                f"run `offcut models fetch {spec.name}{trust}` to download it again.",
            )
        return path, sha256

    # ----------------------------------------------------------------- installing

    def fetch(
        self,
        spec: ModelSpec,
        progress: ProgressFn | None = None,
        trust_unverified: bool = False,
        *,
        force: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Path:
        """Download and install ``spec``; already-good files are kept unless ``force``.

        An unverified model is checked against what the catalog does know (size, md5), and is
        installed and pinned only with ``trust_unverified``; without it nothing is installed and
        the error shows the sha256 the user is being asked to trust.
        """
        dest = self.path(spec)
        if not force and self.state(spec) == INSTALLED and self.verify(spec)[0]:
            return dest
        self.root.mkdir(parents=True, exist_ok=True)
        expected = spec.verified_sha256
        with download(
            spec, self.root, expected_sha256=expected, progress=progress, timeout=timeout
        ) as got:
            if expected is not None:
                return got.commit(dest)
            if not trust_unverified:
                raise _needs_trust(
                    spec,
                    got.sha256,
                    got.size,
                    md5_ok=spec.md5 is not None,
                    how=f"offcut models fetch {spec.name} --trust",
                    origin=got.source.describe(),
                )
            origin = f"fetch: {got.source.describe()}"
            return self._install_pinned(spec, got.commit, got.sha256, got.size, origin=origin)

    def import_file(self, spec: ModelSpec, file: Path | str, trust: bool = False) -> Path:
        """Copy a user-supplied model file into the store, atomically.

        Verified models must match the catalog's sha256; unverified ones must match any size/md5
        the catalog knows and need ``trust``, which pins the file's sha256.
        """
        src = Path(file)
        if not src.is_file():
            raise OffcutError(BAD_REQUEST, f"{src} is not a file; give the path of {spec.file}.")
        self.root.mkdir(parents=True, exist_ok=True)
        part = new_part(self.root, spec.file, ".part")
        try:
            sha256, md5, size = _copy_hashing(src, part)
            self._check_import(spec, src, sha256, md5, size, trust)

            def commit(dest: Path) -> Path:
                os.chmod(part, 0o644)
                os.replace(part, dest)
                fsync_dir(dest.parent)
                return dest

            if spec.verified_sha256 is not None:
                return commit(self.path(spec))
            return self._install_pinned(spec, commit, sha256, size, origin=f"import: {src.name}")
        finally:
            unlink_quietly(part)

    def remove(self, spec: ModelSpec) -> bool:
        """Delete the model file and its pin; True if a file was removed."""
        self._drop_pin(spec)
        try:
            self.path(spec).unlink()
        except FileNotFoundError:
            return False
        return True

    # ----------------------------------------------------------------- pins

    def pin(self, spec: ModelSpec) -> Pin | None:
        """The user's pin for this model, if it is for the same file name."""
        pin = self._read_pins().get(spec.name)
        return pin if pin is not None and pin.file == spec.file else None

    def _pins_path(self) -> Path:
        return self.root / PINS_FILE

    def _read_pins(self) -> dict[str, Pin]:
        try:
            data = json.loads(self._pins_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self._pins_path(), exc)
            return {}
        return _parse_pins(data)

    def _write_pins(self, pins: dict[str, Pin]) -> None:
        """Replace pins.json atomically (temp file, fsync, rename, fsync directory)."""
        self.root.mkdir(parents=True, exist_ok=True)
        body = {"schema": PINS_SCHEMA, "pins": {k: asdict(v) for k, v in sorted(pins.items())}}
        tmp = new_part(self.root, PINS_FILE, ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._pins_path())
            fsync_dir(self.root)
        finally:
            unlink_quietly(tmp)

    def _drop_pin(self, spec: ModelSpec) -> None:
        pins = self._read_pins()
        if pins.pop(spec.name, None) is not None:
            self._write_pins(pins)

    def _install_pinned(
        self,
        spec: ModelSpec,
        commit: Callable[[Path], Path],
        sha256: str,
        size: int,
        *,
        origin: str,
    ) -> Path:
        """Old pin off, file in, new pin on: a crash between leaves it unverified, not wrong."""
        self._drop_pin(spec)
        dest = commit(self.path(spec))
        pins = self._read_pins()
        pins[spec.name] = Pin(
            file=spec.file,
            sha256=sha256,
            size=size,
            origin=origin,
            pinned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self._write_pins(pins)
        log.info("pinned %s sha256 %s (%s)", spec.name, sha256, origin)
        return dest

    # ----------------------------------------------------------------- helpers

    def _require_file(self, spec: ModelSpec) -> Path:
        path = self.path(spec)
        if not path.is_file():
            raise OffcutError(
                MODEL_MISSING,
                f"Model {spec.name} is not installed: run `offcut models fetch {spec.name}`.",
            )
        return path

    def _check_import(
        self, spec: ModelSpec, src: Path, sha256: str, md5: str, size: int, trust: bool
    ) -> None:
        if spec.size is not None and size != spec.size:
            raise OffcutError(
                MODEL_INVALID,
                f"{src} is {size} bytes but model {spec.name} is {spec.size} bytes; "
                "it is not this model. Nothing was imported.",
            )
        expected = spec.verified_sha256
        if expected is not None:
            if sha256 != expected:
                raise OffcutError(
                    MODEL_INVALID,
                    f"{src} has sha256 {sha256}, but model {spec.name} must have {expected}; "
                    "it is not this model or it is damaged. Nothing was imported.",
                )
            return
        if spec.md5 is not None and md5 != spec.md5:
            raise OffcutError(
                MODEL_INVALID,
                f"{src} has md5 {md5}, but the catalog's md5 for {spec.name} is {spec.md5}; "
                "it is not this model or it is damaged. Nothing was imported.",
            )
        if not trust:
            raise _needs_trust(
                spec,
                sha256,
                size,
                md5_ok=spec.md5 is not None,
                how=f"offcut models import {spec.name} FILE --trust",
                origin=str(src),
            )


def _needs_trust(
    spec: ModelSpec, sha256: str, size: int, *, md5_ok: bool, how: str, origin: str
) -> OffcutError:
    checked = (
        f"It matches the md5 {spec.md5} that rembg pins for it, "
        if md5_ok
        else "The catalog has no other checksum to compare it with, "
    )
    return OffcutError(
        MODEL_INVALID,
        f"Model {spec.name} has no confirmed sha256 in the catalog. The file from {origin} is "
        f"{size} bytes with sha256 {sha256}. {checked}but that is not a cryptographic check. "
        f"Nothing was installed. If you trust this file, run `{how}` to install it and pin "
        "this sha256.",
    )


def _copy_hashing(src: Path, dest: Path) -> tuple[str, str, int]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(BLOCK):
            sha.update(block)
            md5.update(block)
            size += len(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return sha.hexdigest(), md5.hexdigest(), size


def _parse_pins(data: object) -> dict[str, Pin]:
    """Pins from pins.json; malformed entries are skipped (they only ever grant less)."""
    raw = data.get("pins") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Pin] = {}
    for name, entry in raw.items():
        with contextlib.suppress(TypeError, ValueError):
            pin = Pin(**entry)
            valid = (
                isinstance(pin.sha256, str)
                and len(pin.sha256) == 64
                and all(c in "0123456789abcdef" for c in pin.sha256)
                and isinstance(pin.size, int)
                and isinstance(pin.file, str)
            )
            if valid:
                out[name] = pin
    return out
