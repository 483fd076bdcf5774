"""Protocol v1 on the sidecar side: header decoding and argument validation.

Everything a client sends is untrusted. This module turns raw frames into validated values or an
:class:`OffcutError` with ``bad_request``/``too_large``; nothing here touches a model, so the
server can answer malformed requests without queueing them. The contract is docs/protocol.md.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Any

import msgpack

from offcut.client import wire
from offcut.engine import formats
from offcut.engine.engine import SegmentRequest
from offcut.errors import bad_request, error

VERSION = wire.PROTOCOL
OPS = ("hello", "models", "segment", "cancel", "status", "shutdown")
MAX_HEADER_BYTES = wire.MAX_HEADER_BYTES
MAX_ID_CHARS = 128
STAGES = ("queued", "decode", "inference", "postprocess", "refine", "decontaminate", "encode")


@dataclass(frozen=True)
class Limits:
    max_pixels: int = wire.DEFAULT_MAX_PIXELS
    max_side: int = 65_535
    queue_depth: int = wire.DEFAULT_QUEUE_DEPTH

    @property
    def max_message_bytes(self) -> int:
        # The largest legal frame: an image of max_pixels in the widest format, plus the header.
        # With the default max_pixels this is the client's wire.DEFAULT_MAX_FRAME.
        return self.max_pixels * wire.MAX_BYTES_PER_PIXEL + MAX_HEADER_BYTES

    def as_dict(self) -> dict[str, int]:
        return {
            "max_pixels": self.max_pixels,
            "max_side": self.max_side,
            "max_message_bytes": self.max_message_bytes,
            "queue_depth": self.queue_depth,
        }


def encode(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def decode_header(frame: bytes | memoryview) -> dict[str, Any]:
    """The request header as a dict with string keys, or ``bad_request``."""
    if len(frame) > MAX_HEADER_BYTES:
        raise bad_request("header_too_large", limit=MAX_HEADER_BYTES)
    try:
        header = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types for bad input
        raise bad_request("header_not_msgpack") from None
    if not isinstance(header, dict) or not all(isinstance(k, str) for k in header):
        raise bad_request("header_not_map")
    return header


def request_id(header: dict[str, Any]) -> str | None:
    """The id to echo in replies, if the header carries a usable one."""
    rid = header.get("id")
    if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_CHARS:
        return rid
    return None


def check_token(header: dict[str, Any], token: str) -> None:
    supplied = header.get("token")
    ok = isinstance(supplied, str) and hmac.compare_digest(
        supplied.encode("utf-8", "surrogatepass"), token.encode()
    )
    if not ok:
        raise error(wire.UNAUTHORIZED, "token_mismatch")


def authorize(header: dict[str, Any], token: str) -> str:
    """The token first, then the envelope: a peer without the token learns nothing, not even
    which protocol version this sidecar speaks. Returns the op."""
    check_token(header, token)
    return check_envelope(header)


def check_envelope(header: dict[str, Any]) -> str:
    """Version, id and op, in the order docs/protocol.md gives. Returns the op."""
    v = header.get("v")
    if v != VERSION or isinstance(v, bool):
        raise error(wire.UNSUPPORTED_VERSION, "unsupported_version", version=VERSION, used=repr(v))
    if request_id(header) is None:
        raise bad_request("bad_id", limit=MAX_ID_CHARS)
    op = header.get("op")
    if op not in OPS:
        raise bad_request("unknown_op", op=repr(op), ops=", ".join(OPS))
    return op


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request("bad_integer", name=name, low=lo, high=hi)
    return value


def _bool(options: dict[str, Any], name: str) -> bool:
    value = options.get(name, False)
    if not isinstance(value, bool):
        raise bad_request("bad_option", name=name)
    return value


def parse_segment(
    header: dict[str, Any], buffers: list[memoryview], limits: Limits
) -> SegmentRequest:
    """Validate a ``segment`` request completely before any work is queued."""
    image = header.get("image")
    if not isinstance(image, dict):
        raise bad_request("bad_image")
    width = _int(image.get("width"), "image.width", 1, 1 << 31)
    height = _int(image.get("height"), "image.height", 1, 1 << 31)
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise error(
            wire.TOO_LARGE,
            "image_too_large",
            width=width,
            height=height,
            max_pixels=f"{limits.max_pixels:,}",
            max_side=limits.max_side,
        )
    fmt = formats.get_format(image.get("format"))
    colorspace = image.get("colorspace", "srgb")
    if colorspace not in formats.COLORSPACES:
        raise bad_request("bad_colorspace", choices=", ".join(formats.COLORSPACES))
    if len(buffers) != 1:
        raise bad_request("buffer_count", count=len(buffers))
    formats.view(buffers[0], fmt, width, height)  # checks the size

    roi = None
    if header.get("roi") is not None:
        r = header["roi"]
        if not isinstance(r, dict):
            raise bad_request("bad_roi")
        x = _int(r.get("x"), "roi.x", 0, width - 1)
        y = _int(r.get("y"), "roi.y", 0, height - 1)
        w = _int(r.get("w"), "roi.w", 1, width - x)
        h = _int(r.get("h"), "roi.h", 1, height - y)
        roi = (x, y, w, h)

    model = header.get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 128):
        raise bad_request("bad_model")

    options = header.get("options") or {}
    if not isinstance(options, dict):
        raise bad_request("bad_options")
    mask_format = options.get("mask_format", "GRAY8")
    # isinstance first: an unhashable value (a list, a map) must be a bad_request, not a TypeError.
    if not isinstance(mask_format, str) or mask_format not in formats.MASK_FORMATS:
        raise bad_request("bad_mask_format", choices=", ".join(formats.MASK_FORMATS))
    threshold = options.get("threshold")
    if threshold is not None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
            or not 0.0 <= threshold <= 1.0
        ):
            raise bad_request("bad_threshold")
        threshold = float(threshold)
    return SegmentRequest(
        pixels=buffers[0],
        width=width,
        height=height,
        fmt=fmt,
        colorspace=colorspace,
        model=model,
        roi=roi,
        refine=_bool(options, "refine"),
        decontaminate=_bool(options, "decontaminate"),
        mask_format=mask_format,
        cutout=_bool(options, "cutout"),
        threshold=threshold,
    )
