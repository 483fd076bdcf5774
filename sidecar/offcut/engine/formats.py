"""Pixel formats on the wire and their conversion to what the models see.

Editors hand over layers in their native layouts (GIMP: R'G'B'A u8/float; Krita: B,G,R,A for
integer depths, R,G,B,A for float). Accepting those as they are saves a full-resolution copy in
the editor's Python, which is the slowest and most memory-starved process in the chain. Here each
format becomes a zero-copy numpy view; conversion to 8-bit sRGB happens in row bands, on
offcut.engine.resample's band threads, so no full-resolution float copy is ever made
(docs/architecture.md §5). Its lookup tables are each built once, cached by the function that
builds them. Resizing to the model's input is offcut.engine.resample's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from offcut.client import wire
from offcut.engine import resample
from offcut.errors import bad_request


@dataclass(frozen=True)
class PixelFormat:
    """One wire pixel format: channel order, sample type and size."""

    name: str
    channels: str  # "RGBA", "BGRA", "RGB", "Y", "YA"
    dtype: str  # numpy dtype string, little endian
    depth: str  # "8", "16" or "float": decides the cutout's format

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def bytes_per_pixel(self) -> int:
        # The wire's table; a unit test checks it against the channels and dtype here.
        return wire.FORMATS[self.name]

    @property
    def has_alpha(self) -> bool:
        return "A" in self.channels

    @property
    def is_gray(self) -> bool:
        return self.channels.startswith("Y")


FORMATS: dict[str, PixelFormat] = {
    f.name: f
    for f in (
        PixelFormat("RGBA8", "RGBA", "|u1", "8"),
        PixelFormat("BGRA8", "BGRA", "|u1", "8"),
        PixelFormat("RGB8", "RGB", "|u1", "8"),
        PixelFormat("GRAY8", "Y", "|u1", "8"),
        PixelFormat("GRAYA8", "YA", "|u1", "8"),
        PixelFormat("RGBA16", "RGBA", "<u2", "16"),
        PixelFormat("BGRA16", "BGRA", "<u2", "16"),
        PixelFormat("GRAYA16", "YA", "<u2", "16"),
        PixelFormat("RGBAF16", "RGBA", "<f2", "float"),
        PixelFormat("RGBAF32", "RGBA", "<f4", "float"),
        PixelFormat("GRAYAF16", "YA", "<f2", "float"),
        PixelFormat("GRAYAF32", "YA", "<f4", "float"),
    )
}

# The names and sizes are the wire's (offcut.client.wire); the numpy dtypes are this module's.
MASK_FORMATS: dict[str, str] = {"GRAY8": "|u1", "GRAY16": "<u2", "GRAYF32": "<f4"}
CUTOUT_FORMAT_FOR_DEPTH: dict[str, str] = {"8": "RGBA8", "16": "RGBA16", "float": "RGBAF32"}
COLORSPACES = ("srgb", "linear")

# Pillow decoders for 8-bit formats: (mode of the decoded image, raw mode of the buffer).
# "RGBX"/"BGRX" drop alpha while decoding: the model sees colour only, as in rembg, and Pillow's
# RGBA resize would premultiply and darken transparent pixels.
_PIL_8BIT: dict[str, tuple[str, str]] = {
    "RGBA8": ("RGB", "RGBX"),
    "BGRA8": ("RGB", "BGRX"),
    "RGB8": ("RGB", "RGB"),
    "GRAY8": ("L", "L"),
    "GRAYA8": ("L", "LX"),
}


def get_format(name: object) -> PixelFormat:
    if not isinstance(name, str) or name not in FORMATS:
        raise bad_request("unsupported_format", format=repr(name), choices=", ".join(FORMATS))
    return FORMATS[name]


def expected_size(fmt: PixelFormat, width: int, height: int) -> int:
    return width * height * fmt.bytes_per_pixel


def view(
    buf: memoryview | bytes | bytearray, fmt: PixelFormat, width: int, height: int
) -> np.ndarray:
    """A zero-copy (height, width, channels) view of a tightly packed buffer.

    The size is checked first: a buffer that does not match its declared format is the most
    common way a client can be wrong, and it must be an error before any work is done.
    """
    size = expected_size(fmt, width, height)
    if len(memoryview(buf).cast("B")) != size:
        raise bad_request(
            "buffer_size",
            size=len(memoryview(buf).cast("B")),
            width=width,
            height=height,
            format=fmt.name,
            expected=size,
        )
    return np.frombuffer(buf, dtype=fmt.dtype).reshape(height, width, fmt.n_channels)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (0..1, float32) to the sRGB transfer curve, in place where possible."""
    low = linear <= 0.0031308
    out = np.where(
        low, linear * 12.92, 1.055 * np.power(np.maximum(linear, 0.0031308), 1 / 2.4) - 0.055
    )
    return out.astype(np.float32, copy=False)


@functools.cache
def _srgb_lut16() -> np.ndarray:
    """u16 linear → u8 sRGB lookup table (built once: 65536 entries beat a per-pixel pow)."""
    x = np.arange(65536, dtype=np.float32) / 65535.0
    return np.clip(_srgb_encode(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _colour_indices(fmt: PixelFormat) -> list[int]:
    if fmt.is_gray:
        return [0]
    return [fmt.channels.index(c) for c in "RGB"]


def _u16_to_u8(v: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` for u16 samples, as ``(v * 255 + 32895) >> 16``.

    Equal to ``(v * 255 + 32767) // 65535`` for all 65 536 values (a unit test checks every
    one), without the integer division that made this the slowest step for 16-bit layers.
    """
    t = v.astype(np.uint32)
    t *= 255
    t += 32895
    t >>= 16
    return t.astype(np.uint8)


def _float_to_u8(f: np.ndarray, linear: bool) -> np.ndarray:
    """Float samples to u8: NaN → 0, ±inf clipped, 0..1, sRGB-encoded first when linear."""
    t = f.astype(np.float32)  # a copy: the request's buffer is never written
    np.nan_to_num(t, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(t, 0.0, 1.0, out=t)
    if linear:
        t = _srgb_encode(t)
    t *= np.float32(255.0)
    t += np.float32(0.5)
    return t.astype(np.uint8)


@functools.cache
def _lut(kind: str, linear: bool) -> np.ndarray:
    """A u8 table for every 8-bit value ("u8") or every half-float bit pattern ("f16").

    Built once with the per-sample arithmetic it replaces, so a lookup gives that arithmetic's
    result exactly: half floats have only 65 536 values, and one lookup is several times cheaper
    than ``nan_to_num``, ``clip`` and the sRGB curve's ``pow`` per sample.
    """
    if kind == "u8":  # linear 8-bit only (8-bit sRGB needs no conversion), via the u16 table
        return _srgb_lut16()[np.arange(256, dtype=np.uint32) * 257]
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    return _float_to_u8(halves, linear)


def _to_u8(band: np.ndarray, fmt: PixelFormat, linear: bool) -> np.ndarray:
    """Every sample of a band of rows as u8 sRGB, same shape (alpha is converted along)."""
    if fmt.depth == "16":
        return _srgb_lut16()[band] if linear else _u16_to_u8(band)
    if fmt.depth == "8":
        return _lut("u8", True)[band]
    if band.dtype.itemsize == 2:
        return _lut("f16", linear)[band.view(np.uint16)]
    return _float_to_u8(band, linear)


def _convert_rows(
    arr: np.ndarray, out: np.ndarray, fmt: PixelFormat, linear: bool, span: tuple[int, int]
) -> None:
    """Rows ``span`` of ``arr`` (h, w, channels) into ``out`` (h, w, 4: RGBX; or 1: L)."""
    r0, r1 = span
    u8 = _to_u8(arr[r0:r1], fmt, linear)
    if fmt.is_gray:
        out[r0:r1, :, 0] = u8[..., 0]
    elif fmt.channels == "RGBA":
        out[r0:r1] = u8  # alpha lands in the X byte, which every later step ignores
    else:
        for i, c in enumerate(_colour_indices(fmt)):
            out[r0:r1, :, i] = u8[..., c]


# Rows converted per task when a deep layer is decoded: each band's temporaries stay small.
_DECODE_ROWS = 64


def to_model_image(
    buf: memoryview | bytes | bytearray,
    fmt: PixelFormat,
    width: int,
    height: int,
    roi: tuple[int, int, int, int],
    colorspace: str,
) -> Image.Image:
    """The ROI as an 8-bit sRGB Pillow image ("RGB"/"RGBX", or "L" for gray formats).

    8-bit sRGB inputs are wrapped by Pillow straight over the ROI's rows: RGBA8 becomes an
    "RGBX" image sharing the request's buffer (no copy at all), which Pillow resizes without the
    alpha premultiplication it applies to "RGBA". Deeper or linear inputs are converted in bands
    of rows on all cores into one u8 RGBX (or L) array that Pillow wraps without a copy; each
    sample is converted exactly (to the nearest level; linear ones through the sRGB curve).
    """
    x, y, w, h = roi
    linear = colorspace == "linear"
    mv = memoryview(buf).cast("B")
    row_bytes = width * fmt.bytes_per_pixel
    if fmt.name in _PIL_8BIT and not linear:
        mode, rawmode = _PIL_8BIT[fmt.name]
        rows = mv[y * row_bytes : (y + h) * row_bytes]
        img = Image.frombuffer(mode, (width, h), rows, "raw", rawmode, 0, 1)
        return img if (x == 0 and w == width) else img.crop((x, 0, x + w, h))
    arr = view(buf, fmt, width, height)[y : y + h, x : x + w]
    out = np.empty((h, w, 1 if fmt.is_gray else 4), dtype=np.uint8)
    spans = resample.band_spans(h, -(-h // _DECODE_ROWS))
    resample.run_bands(
        lambda sp: _convert_rows(arr, out, fmt, linear, sp), spans, pool=len(spans) > 1
    )
    if fmt.is_gray:
        return Image.frombuffer("L", (w, h), out, "raw", "L", 0, 1)
    return Image.frombuffer("RGBX", (w, h), out, "raw", "RGBX", 0, 1)


def alpha_of(
    buf: memoryview | bytes | bytearray,
    fmt: PixelFormat,
    width: int,
    height: int,
    roi: tuple[int, int, int, int],
) -> np.ndarray | None:
    """The ROI's alpha as float32 0..1 (None when the format has none); used for cutouts."""
    if not fmt.has_alpha:
        return None
    x, y, w, h = roi
    a = view(buf, fmt, width, height)[y : y + h, x : x + w, fmt.channels.index("A")]
    if fmt.depth == "8":
        return a.astype(np.float32) / 255.0
    if fmt.depth == "16":
        return a.astype(np.float32) / 65535.0
    return np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def colour_of(
    buf: memoryview | bytes | bytearray,
    fmt: PixelFormat,
    width: int,
    height: int,
    roi: tuple[int, int, int, int],
) -> np.ndarray:
    """The ROI's colour in R, G, B order (gray repeated), in the input's own sample type.

    Used for the cutout, which keeps the input's depth and colorspace.
    """
    x, y, w, h = roi
    arr = view(buf, fmt, width, height)[y : y + h, x : x + w]
    if fmt.is_gray:
        return np.repeat(arr[..., :1], 3, axis=2)
    return arr[..., _colour_indices(fmt)]
