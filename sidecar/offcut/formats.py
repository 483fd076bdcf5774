"""Pixel formats on the wire and their conversion to what the models see.

Editors hand over layers in their native layouts (GIMP: R'G'B'A u8/float; Krita: B,G,R,A for
integer depths, R,G,B,A for float). Accepting those as they are saves a full-resolution copy in
the editor's Python, which is the slowest and most memory-starved process in the chain. Here each
format becomes a zero-copy numpy view; conversion to 8-bit sRGB happens in row bands so no
full-resolution float copy is ever made (DESIGN §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from offcut.errors import bad_request

# Rows converted at a time for non-8-bit inputs: bounds the float scratch memory to a few MB.
_BAND_ROWS = 256


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
        return self.n_channels * np.dtype(self.dtype).itemsize

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
        raise bad_request(
            f"Pixel format {name!r} is not supported; use one of: {', '.join(FORMATS)}."
        )
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
            f"The pixel buffer has {len(memoryview(buf).cast('B'))} bytes but a {width}x{height} "
            f"{fmt.name} image needs {size}; send tightly packed rows with no padding."
        )
    return np.frombuffer(buf, dtype=fmt.dtype).reshape(height, width, fmt.n_channels)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (0..1, float32) to the sRGB transfer curve, in place where possible."""
    low = linear <= 0.0031308
    out = np.where(
        low, linear * 12.92, 1.055 * np.power(np.maximum(linear, 0.0031308), 1 / 2.4) - 0.055
    )
    return out.astype(np.float32, copy=False)


_SRGB_LUT16: np.ndarray | None = None


def _srgb_lut16() -> np.ndarray:
    """u16 linear → u8 sRGB lookup table (built once: 65536 entries beat a per-pixel pow)."""
    global _SRGB_LUT16
    if _SRGB_LUT16 is None:
        x = np.arange(65536, dtype=np.float32) / 65535.0
        _SRGB_LUT16 = np.clip(_srgb_encode(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _SRGB_LUT16


def _colour_indices(fmt: PixelFormat) -> list[int]:
    if fmt.is_gray:
        return [0]
    return [fmt.channels.index(c) for c in "RGB"]


def _band_to_u8(band: np.ndarray, fmt: PixelFormat, linear: bool) -> np.ndarray:
    """Colour channels of a band of rows as u8 sRGB (R, G, B order, or Y for gray)."""
    cols = band[..., _colour_indices(fmt)]
    if fmt.depth == "16":
        if linear:
            return _srgb_lut16()[cols]
        # Exact rounding of v * 255 / 65535 without floats: (v * 255 + 32767) // 65535.
        return ((cols.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    f = np.nan_to_num(cols.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(f, 0.0, 1.0, out=f)
    if linear:
        f = _srgb_encode(f)
    return (f * 255.0 + 0.5).astype(np.uint8)


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
    alpha premultiplication it applies to "RGBA". Deeper or linear inputs are converted band by
    band into one u8 array.
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
    out = np.empty((h, w, 1 if fmt.is_gray else 3), dtype=np.uint8)
    if fmt.depth == "8":  # 8-bit but linear: go through the 16-bit LUT for exactness
        for r0 in range(0, h, _BAND_ROWS):
            band = arr[r0 : r0 + _BAND_ROWS, :, _colour_indices(fmt)].astype(np.uint16) * 257
            out[r0 : r0 + _BAND_ROWS] = _srgb_lut16()[band]
    else:
        for r0 in range(0, h, _BAND_ROWS):
            out[r0 : r0 + _BAND_ROWS] = _band_to_u8(arr[r0 : r0 + _BAND_ROWS], fmt, linear)
    if fmt.is_gray:
        return Image.fromarray(out[..., 0], "L")
    return Image.fromarray(out, "RGB")


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
