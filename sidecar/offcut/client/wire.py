"""The protocol's facts, written once for both ends (docs/protocol.md).

Offcut's version, the protocol version, the PLAIN user name, the error codes, the pixel formats,
the frame-size bounds, the connection file's schema and location, and the one builder of every
message header. The sidecar imports them from here; this module, like the rest of the client,
imports nothing of the sidecar (it is copied into editor plug-ins as ``offcut_client``).
Standard library only, Python 3.8+.
"""

import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

#: Offcut's version: the client's, the sidecar's (``offcut.__version__``) and the package's
#: (pyproject.toml reads it from here).
VERSION = "0.1.0"
#: The protocol version: ``v`` in every header, ``protocol`` in ``hello`` and the connection file.
PROTOCOL = 1

#: The ZMTP PLAIN user name; the password is the connection file's token.
PLAIN_USERNAME = b"offcut"

# -- error codes: the closed set a reply's ``code`` takes ----------------------------------------

BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
UNSUPPORTED_VERSION = "unsupported_version"
TOO_LARGE = "too_large"
MODEL_MISSING = "model_missing"
MODEL_INVALID = "model_invalid"
BUSY = "busy"
CANCELLED = "cancelled"
INTERNAL = "internal"

ERROR_CODES = frozenset(
    {
        BAD_REQUEST,
        UNAUTHORIZED,
        UNSUPPORTED_VERSION,
        TOO_LARGE,
        MODEL_MISSING,
        MODEL_INVALID,
        BUSY,
        CANCELLED,
        INTERNAL,
    }
)

# -- pixel formats: name -> bytes per pixel ------------------------------------------------------

#: The formats an image may be sent in.
FORMATS = {
    "RGBA8": 4,
    "BGRA8": 4,
    "RGB8": 3,
    "GRAY8": 1,
    "GRAYA8": 2,
    "RGBA16": 8,
    "BGRA16": 8,
    "GRAYA16": 4,
    "RGBAF16": 8,
    "RGBAF32": 16,
    "GRAYAF16": 4,
    "GRAYAF32": 8,
}
#: The formats a mask may be asked for in (``options.mask_format``).
MASK_FORMATS = {"GRAY8": 1, "GRAY16": 2, "GRAYF32": 4}
#: The formats a cutout comes back in.
CUTOUT_FORMATS = {"RGBA8": 4, "RGBA16": 8, "RGBAF32": 16}

# -- frame sizes ---------------------------------------------------------------------------------

#: The widest image format's bytes per pixel (RGBAF32).
MAX_BYTES_PER_PIXEL = max(FORMATS.values())
#: The largest request header the sidecar reads.
MAX_HEADER_BYTES = 64 << 10
#: The sidecar's default ``limits.max_pixels``.
DEFAULT_MAX_PIXELS = 100_000_000
#: Images a sidecar lets wait by default (``limits.queue_depth`` in ``hello``).
DEFAULT_QUEUE_DEPTH = 4
#: The largest frame protocol v1 allows under the default limits: an image of
#: ``DEFAULT_MAX_PIXELS`` in the widest format plus room for the header, i.e. the
#: default ``limits.max_message_bytes``. Frames from the sidecar are bounded by it until its
#: ``hello`` states the real limit.
DEFAULT_MAX_FRAME = DEFAULT_MAX_PIXELS * MAX_BYTES_PER_PIXEL + MAX_HEADER_BYTES
#: The largest frame accepted during the ZMTP handshake, before the peer's READY: only short
#: commands (WELCOME, READY with a few properties, ERROR) are legal there.
HANDSHAKE_MAX_FRAME = 64 << 10

# -- headers -------------------------------------------------------------------------------------


def request(
    op: str, rid: str, token: str, fields: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """A request header: ``v``, ``id``, ``op``, ``token``, then the op's own fields."""
    header = {"v": PROTOCOL, "id": rid, "op": op, "token": token}  # type: Dict[str, Any]
    if fields:
        header.update(fields)
    return header


def reply(
    rid: Optional[str], kind: str, fields: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """A reply header: ``v``, ``id``, ``kind`` (progress, result, error), then its fields."""
    header = {"v": PROTOCOL, "id": rid, "kind": kind}  # type: Dict[str, Any]
    if fields:
        header.update(fields)
    return header


def error_fields(
    code: str, message: str, key: Optional[str] = None, params: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """An ``error`` reply's fields: ``code`` and the English ``message``, then, for a sentence
    in :mod:`.messages`, its ``key`` and ``params`` so the plug-in can show it translated
    (clients that predate them read ``message`` and ignore the rest)."""
    fields = {"code": code, "message": message}  # type: Dict[str, Any]
    if key is not None:
        fields["key"] = key
        fields["params"] = dict(params or {})
    return fields


# -- discovery: the runtime directory and the connection file ------------------------------------

ENV_RUNTIME_DIR = "OFFCUT_RUNTIME_DIR"
CONNECTION_FILE = "sidecar.json"
LOCK_FILE = "sidecar.lock"
LOG_FILE = "sidecar.log"


def connection_record(ip: str, port: int, token: str, pid: int, started: float) -> Dict[str, Any]:
    """The connection file's contents, as the sidecar writes them and the client reads them."""
    return {
        "transport": "tcp",
        "ip": ip,
        "port": port,
        "token": token,
        "pid": pid,
        "protocol": PROTOCOL,
        "sidecar_version": VERSION,
        "started": started,
    }


def runtime_dir(shared: Optional[Callable[[], Optional[str]]] = None) -> Path:
    """Directory of the connection file and lock (docs/protocol.md, "Discovery").

    ``$OFFCUT_RUNTIME_DIR`` first; then, if given, what ``shared()`` names (the client's record of
    a runtime dir shared with a sandboxed editor); then the platform's per-user place.
    """
    if os.environ.get(ENV_RUNTIME_DIR):
        return Path(os.environ[ENV_RUNTIME_DIR])
    chosen = shared() if shared is not None else None
    if chosen:
        return Path(chosen)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "offcut" / "run"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "offcut" / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "offcut"
    return Path.home() / ".cache" / "offcut" / "run"
