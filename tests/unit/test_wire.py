"""The protocol's facts are written once, in ``offcut.client.wire``: every other table agrees.

Where a second copy has to stay (numpy dtypes in the sidecar, the plug-ins' own layouts, version
strings in plug-in files that must load without the client), these tests fail when it drifts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from offcut_krita import pixels

import offcut
from offcut import errors, paths
from offcut.client import api, discovery, wire
from offcut.client import errors as client_errors
from offcut.engine import formats
from offcut.server import instance as connection
from offcut.server import protocol

REPO = Path(__file__).resolve().parents[2]


# -- error codes ---------------------------------------------------------------------------------


def test_error_codes_are_the_wires_on_both_ends() -> None:
    assert errors.ERROR_CODES is client_errors.ERROR_CODES is wire.ERROR_CODES
    assert len(wire.ERROR_CODES) == 9
    for code in wire.ERROR_CODES:
        assert getattr(offcut.client, code.upper()) == getattr(wire, code.upper()) == code
    assert errors.OffcutError("no_such_code", "m").code == wire.INTERNAL
    assert client_errors.OffcutClientError("no_such_code", "m").code == wire.INTERNAL


# -- pixel formats -------------------------------------------------------------------------------


def test_sidecar_formats_are_the_wires() -> None:
    # Same names in the same order (hello lists them in this order).
    assert list(formats.FORMATS) == list(wire.FORMATS)
    for name, fmt in formats.FORMATS.items():
        assert fmt.n_channels * np.dtype(fmt.dtype).itemsize == wire.FORMATS[name], name
        assert fmt.bytes_per_pixel == wire.FORMATS[name], name
    assert list(formats.MASK_FORMATS) == list(wire.MASK_FORMATS)
    for name, dtype in formats.MASK_FORMATS.items():
        assert np.dtype(dtype).itemsize == wire.MASK_FORMATS[name], name
    assert set(formats.CUTOUT_FORMAT_FOR_DEPTH.values()) == set(wire.CUTOUT_FORMATS)
    for name, bpp in wire.CUTOUT_FORMATS.items():
        assert wire.FORMATS[name] == bpp, name
    assert wire.MAX_BYTES_PER_PIXEL == 16


def test_client_formats_are_the_wires() -> None:
    assert api.FORMATS is wire.FORMATS
    assert api.MASK_FORMATS is wire.MASK_FORMATS
    assert api.CUTOUT_FORMATS is wire.CUTOUT_FORMATS


def test_krita_plugin_layouts_agree_with_the_wire() -> None:
    for (model, depth), (fmt, bpp, sample) in pixels.LAYOUTS.items():
        assert wire.FORMATS[fmt] == bpp, (model, depth)
        assert bpp % sample == 0
    assert pixels.MASK_SAMPLE_BYTES == wire.MASK_FORMATS
    assert {k: 4 * v for k, v in pixels.CUTOUT_SAMPLE_BYTES.items()} == wire.CUTOUT_FORMATS
    assert set(pixels.MASK_FORMAT_FOR_DEPTH.values()) <= set(wire.MASK_FORMATS)


# -- versions ------------------------------------------------------------------------------------


def test_one_version() -> None:
    assert offcut.__version__ == wire.VERSION == api.CLIENT_VERSION
    assert offcut.client.__version__ == wire.VERSION
    assert protocol.VERSION == api.PROTOCOL == wire.PROTOCOL == 1


def test_pyproject_reads_the_version_from_the_wire() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]$', text, re.M)
    assert re.search(r'^version = \{ attr = "offcut\.client\.wire\.VERSION" \}$', text, re.M)
    assert not re.search(r'^version = "', text, re.M)


def test_plugin_versions_agree_with_the_wire() -> None:
    # The plug-ins state their own version so that it can be reported when the client is missing.
    gimp = (REPO / "plugin_gimp" / "offcut_gimp" / "run.py").read_text()
    krita = (REPO / "plugin_krita" / "offcut_krita" / "controller.py").read_text()
    assert re.findall(r'^PLUGIN_VERSION = "([^"]*)"$', gimp, re.M) == [wire.VERSION]
    assert re.findall(r'^VERSION = "([^"]*)"$', krita, re.M) == [wire.VERSION]


# -- frame sizes ---------------------------------------------------------------------------------


def test_frame_sizes() -> None:
    assert wire.DEFAULT_MAX_FRAME == 100_000_000 * 16 + (64 << 10)
    assert protocol.Limits().max_message_bytes == wire.DEFAULT_MAX_FRAME
    assert protocol.MAX_HEADER_BYTES == wire.MAX_HEADER_BYTES == 64 << 10
    assert protocol.Limits().max_pixels == wire.DEFAULT_MAX_PIXELS
    assert protocol.Limits(max_pixels=10).max_message_bytes == 160 + (64 << 10)


# -- headers -------------------------------------------------------------------------------------


def test_request_header() -> None:
    h = wire.request("segment", "r1", "tok", {"image": {"width": 1}})
    assert list(h.items()) == [
        ("v", 1),
        ("id", "r1"),
        ("op", "segment"),
        ("token", "tok"),
        ("image", {"width": 1}),
    ]
    assert wire.request("hello", "r2", "tok") == {"v": 1, "id": "r2", "op": "hello", "token": "tok"}


def test_reply_header() -> None:
    fields = {"code": "busy", "message": "m"}
    h = wire.reply(None, "error", fields)
    assert list(h) == ["v", "id", "kind", "code", "message"]
    assert h == {"v": 1, "id": None, "kind": "error", **fields}
    assert fields == {"code": "busy", "message": "m"}  # not changed
    assert wire.reply("a", "result") == {"v": 1, "id": "a", "kind": "result"}


# -- the connection file -------------------------------------------------------------------------


def test_connection_record_is_what_both_readers_read(tmp_path: Path) -> None:
    record = wire.connection_record("127.0.0.1", 5555, "t" * 64, 42, 1.5)
    assert record == {
        "transport": "tcp",
        "ip": "127.0.0.1",
        "port": 5555,
        "token": "t" * 64,
        "pid": 42,
        "protocol": wire.PROTOCOL,
        "sidecar_version": wire.VERSION,
        "started": 1.5,
    }
    path = connection.write(record, tmp_path / wire.CONNECTION_FILE)
    assert connection.read(path) == record
    info = discovery.read_connection_file(path)
    assert info is not None
    assert (info.ip, info.port, info.token, info.pid) == ("127.0.0.1", 5555, "t" * 64, 42)
    assert (info.protocol, info.sidecar_version) == (wire.PROTOCOL, wire.VERSION)


def test_file_names_are_the_wires(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(wire.ENV_RUNTIME_DIR, str(tmp_path))
    assert paths.runtime_dir() == discovery.runtime_dir() == wire.runtime_dir() == tmp_path
    assert paths.connection_file() == tmp_path / "sidecar.json"
    assert paths.lock_file() == tmp_path / "sidecar.lock"


def test_runtime_dir_shared_comes_after_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(wire.ENV_RUNTIME_DIR, raising=False)
    assert wire.runtime_dir(lambda: str(tmp_path)) == tmp_path
    assert wire.runtime_dir(lambda: None) == wire.runtime_dir()
    monkeypatch.setenv(wire.ENV_RUNTIME_DIR, "/elsewhere")
    assert wire.runtime_dir(lambda: str(tmp_path)) == Path("/elsewhere")


def test_lock_probe_and_pid_check_are_the_clients(tmp_path: Path) -> None:
    assert connection.pid_alive is discovery.pid_alive
    lock = connection.InstanceLock(tmp_path / wire.LOCK_FILE)
    assert not connection.lock_held(lock.path)
    assert lock.acquire()
    try:
        assert connection.lock_held(lock.path) and discovery.lock_held(lock.path)
    finally:
        lock.release()
    assert not connection.lock_held(lock.path)
