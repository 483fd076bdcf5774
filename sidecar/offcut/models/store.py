"""The on-disk model store: what is installed, whether it can be trusted, and installing more.

Files live flat in one directory (``paths.models_dir()``, or ``OFFCUT_MODELS_DIR``) under their
catalog file names. A model is usable only when its sha256 is known: from the catalog when the
catalog's checksum is confirmed, otherwise from a *pin* the user made by explicitly trusting a
fetched or imported file (``pins.json`` in the same directory). The engine calls
:meth:`ModelStore.open_verified` before loading, which re-hashes the file, so a corrupted or swapped
model is refused (docs/architecture.md §4: re-verified on first load in each sidecar run).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from offcut import paths
from offcut.client.wire import BAD_REQUEST, MODEL_INVALID, MODEL_MISSING
from offcut.errors import OffcutError, error
from offcut.models.catalog import ModelSpec
from offcut.models.fetch import (
    BLOCK,
    DEFAULT_TIMEOUT,
    MAX_DOWNLOAD,
    ProgressFn,
    download,
    fsync_dir,
    hash_file,
    new_part,
    unlink_quietly,
)

log = logging.getLogger("offcut.models.store")

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

    def is_installed(self, spec: ModelSpec) -> bool:
        """``state(spec) == installed``: what :meth:`Catalog.resolve` asks of an alias' models."""
        return self.state(spec) == INSTALLED

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
            raise error(MODEL_INVALID, "model_unverified", model=spec.name)
        sha256, _md5, _size = hash_file(path)
        if sha256 != expected:
            trust = "" if spec.sha256_verified else " --trust"
            raise error(
                MODEL_INVALID,
                "model_checksum",
                model=spec.name,
                sha256=sha256,
                expected=expected,
                command=f"offcut models fetch {spec.name}{trust}",
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

    def derive(
        self,
        spec: ModelSpec,
        source: ModelSpec,
        progress: ProgressFn | None = None,
        *,
        force: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Path:
        """Make and install a derived model from its verified source (docs/models.md).

        The source is fetched first if it is not installed (its only network use), then
        re-verified, transformed by the catalog's recipe (``offcut.models.derive``), and the
        result is installed only if it has exactly the catalog's size and sha256: a derivation
        that differs (another ``onnx`` that serialises differently, a damaged source) installs
        nothing and says so, as a download with the wrong checksum would.
        """
        from offcut.models.derive import derive_bytes

        assert spec.derived is not None and spec.derived.source == source.name
        dest = self.path(spec)
        if not force and self.state(spec) == INSTALLED and self.verify(spec)[0]:
            return dest
        if self.state(source) != INSTALLED or not self.verify(source)[0]:
            self.fetch(source, progress=progress, timeout=timeout)
        src_path, _ = self.open_verified(source)
        data = derive_bytes(src_path, spec, source)
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != spec.verified_sha256 or len(data) != spec.size:
            raise OffcutError(
                MODEL_INVALID,
                f"Deriving {spec.name} from {source.name} gave {len(data)} bytes with sha256 "
                f"{sha256}, but the catalog expects {spec.size} bytes with sha256 {spec.sha256}. "
                f"Nothing was installed. {_onnx_version()} Please report this as a bug; "
                f"`offcut models fetch {source.name}` still gives the model it derives from.",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        part = new_part(self.root, spec.file, ".part")
        try:
            with open(part, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(part, 0o644)
            os.replace(part, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise _cannot_write(spec, self.root, len(data), exc) from None
        finally:
            unlink_quietly(part)
        return dest

    def import_file(self, spec: ModelSpec, file: Path | str, trust: bool = False) -> Path:
        """Copy a user-supplied model file into the store, atomically.

        The file's size is held to the catalog's (or, where the catalog states none, to the
        largest download accepted) before a byte is copied, so a wrong multi-gigabyte file is
        refused at once instead of filling the disk. Verified models must match the catalog's
        sha256; unverified ones must match any md5 the catalog knows and need ``trust``, which
        pins the file's sha256. A failed write (a full disk) leaves no partial file and says
        where room is needed.
        """
        src = Path(file)
        if not src.is_file():
            raise OffcutError(BAD_REQUEST, f"{src} is not a file; give the path of {spec.file}.")
        with _open_source(src) as fin:
            size = os.fstat(fin.fileno()).st_size
            _check_size(spec, src, size)
            part: Path | None = None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                part = new_part(self.root, spec.file, ".part")
                sha256, md5, size = _copy_hashing(fin, part, limit=_size_cap(spec))
                self._check_import(spec, src, sha256, md5, size, trust)

                def commit(dest: Path) -> Path:
                    assert part is not None
                    os.chmod(part, 0o644)
                    os.replace(part, dest)
                    fsync_dir(dest.parent)
                    return dest

                if spec.verified_sha256 is not None:
                    return commit(self.path(spec))
                origin = f"import: {src.name}"
                return self._install_pinned(spec, commit, sha256, size, origin=origin)
            except _ReadError as exc:
                raise _unreadable(src, exc.cause) from None
            except OSError as exc:
                raise _cannot_write(spec, self.root, size, exc) from None
            finally:
                if part is not None:
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
            raise error(MODEL_MISSING, "model_not_installed", model=spec.name)
        return path

    def _check_import(
        self, spec: ModelSpec, src: Path, sha256: str, md5: str, size: int, trust: bool
    ) -> None:
        _check_size(spec, src, size)  # again: the file may have changed while it was copied
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


def _onnx_version() -> str:
    try:
        import onnx

        return f"(onnx {onnx.__version__}, protobuf {_protobuf_version()})"
    except ImportError:
        return ""


def _protobuf_version() -> str:
    try:
        from google.protobuf import __version__ as v
    except ImportError:
        return "?"
    return str(v)


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


def _size_cap(spec: ModelSpec) -> int:
    return spec.size if spec.size is not None else MAX_DOWNLOAD


def _check_size(spec: ModelSpec, src: Path, size: int) -> None:
    """Refuse a file whose size alone shows it is not ``spec`` (cheap: no byte is read)."""
    if spec.size is not None and size != spec.size:
        raise OffcutError(
            MODEL_INVALID,
            f"{src} is {size} bytes but model {spec.name} is {spec.size} bytes; "
            "it is not this model. Nothing was imported.",
        )
    if size > _size_cap(spec):
        raise OffcutError(
            MODEL_INVALID,
            f"{src} is {size} bytes, larger than any model Offcut accepts ({MAX_DOWNLOAD} "
            f"bytes); it is not model {spec.name}. Nothing was imported.",
        )


class _ReadError(Exception):
    """Reading the user's file failed (as opposed to writing into the models folder)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _open_source(src: Path) -> BinaryIO:
    try:
        return open(src, "rb")
    except OSError as exc:
        raise _unreadable(src, exc) from None


def _unreadable(src: Path, exc: OSError) -> OffcutError:
    return OffcutError(
        BAD_REQUEST,
        f"Cannot read {src} ({exc.strerror or exc}); check the path and that you may read it. "
        "Nothing was imported.",
    )


#: Write errors that more room (or a higher quota) would cure.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _cannot_write(spec: ModelSpec, root: Path, size: int, exc: OSError) -> OffcutError:
    if exc.errno in _NO_ROOM:
        advice = (
            f"Free at least {size:,} bytes there, or set OFFCUT_MODELS_DIR to a folder with "
            "room, and run the import again."
        )
    else:
        advice = (
            "Check that you may write there, or set OFFCUT_MODELS_DIR to a folder you own, "
            "and run the import again."
        )
    return OffcutError(
        MODEL_MISSING,
        f"Could not write model {spec.name} into the models folder {root} "
        f"({exc.strerror or exc}). {advice} No partial file was left.",
    )


def _copy_hashing(fin: BinaryIO, dest: Path, *, limit: int) -> tuple[str, str, int]:
    """Copy ``fin`` into ``dest``, hashing as it goes; stops one byte past ``limit`` (a file
    growing while it is copied is refused by the size check, not copied without end)."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(dest, "wb") as fout:
        while size <= limit:
            try:
                block = fin.read(min(BLOCK, limit + 1 - size))
            except OSError as exc:
                raise _ReadError(exc) from exc
            if not block:
                break
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
