"""Pixel formats on the wire and their conversion to what the models see.

Editors hand over layers in their native layouts (GIMP: R'G'B'A u8/float; Krita: B,G,R,A for
integer depths, R,G,B,A for float). Accepting those as they are saves a full-resolution copy in
the editor's Python, which is the slowest and most memory-starved process in the chain. Here each
format becomes a zero-copy numpy view; conversion to 8-bit sRGB happens in row bands so no
full-resolution float copy is ever made (docs/architecture.md §5).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from offcut.client import wire
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


_LUTS: dict[tuple[str, bool], np.ndarray] = {}


def _lut(kind: str, linear: bool) -> np.ndarray:
    """A u8 table for every 8-bit value ("u8") or every half-float bit pattern ("f16").

    Built once with the per-sample arithmetic it replaces, so a lookup gives that arithmetic's
    result exactly: half floats have only 65 536 values, and one lookup is several times cheaper
    than ``nan_to_num``, ``clip`` and the sRGB curve's ``pow`` per sample.
    """
    key = (kind, linear)
    if key not in _LUTS:
        if kind == "u8":  # linear 8-bit only (8-bit sRGB needs no conversion), via the u16 table
            _LUTS[key] = _srgb_lut16()[np.arange(256, dtype=np.uint32) * 257]
        else:
            halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
            _LUTS[key] = _float_to_u8(halves, linear)
    return _LUTS[key]


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
    spans = _spans(h, -(-h // _DECODE_ROWS))
    _map(lambda sp: _convert_rows(arr, out, fmt, linear, sp), spans, pool=len(spans) > 1)
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


# ----------------------------------------------------------------------------- resampling
#
# LANCZOS resizes of large layers (to the model input, and the mask back to the layer) are the
# biggest cost after inference. Pillow runs each one on one core. Both of its passes are
# independent along one axis (the horizontal pass row by row, the vertical pass column by
# column), so each pass can be split into bands and run on all cores with Pillow's own code, which
# releases the GIL. Done in Pillow's pass order with Pillow's coefficients, the result is the
# same image bit for bit, so masks still equal rembg's (which resizes with Pillow too).

_LANCZOS = Image.Resampling.LANCZOS
# Below this many pixels (the larger of source and output, per axis) one call is a few ms.
_PARALLEL_MIN_PIXELS = 1 << 20
# Modes whose band results are exact with a ``box``-limited call (8-bit samples: Pillow's
# fixed-point identity pass is exact). Float images are cut with ``crop`` instead.
_BOX_EXACT_MODES = ("L", "RGB", "RGBX", "RGBA", "LA", "La", "RGBa", "CMYK")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_parallel_ok: bool | None = None


def resize_threads() -> int:
    """Threads for the split resizes: the cores this process may run on (at most 8)."""
    env = os.environ.get("OFFCUT_RESIZE_THREADS")
    if env and env.isdigit():
        return max(1, min(int(env), 64))
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(resize_threads(), thread_name_prefix="offcut-resize")
        return _pool


def _pillow_major() -> int:
    try:
        return int(Image.__version__.split(".")[0])  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return 0


def _horizontal_first(iw: int, ih: int, ow: int, oh: int) -> bool:
    """The pass order of Pillow's ``ImagingResampleInner`` for this resize.

    Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width does; earlier versions always start with the horizontal pass. The
    self-check in :func:`_parallel_exact` guards against a Pillow that decides otherwise.
    """
    if _pillow_major() >= 13:
        dh = ih - oh
        return not (dh > 0 and dh > (iw - ow) * 2)
    return True


def _spans(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // max(1, min(parts, n)))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _map(fn: Callable[[tuple[int, int]], None], spans: list[tuple[int, int]], pool: bool) -> None:
    if pool and len(spans) > 1:
        for _ in _executor().map(fn, spans):
            pass
    else:
        for sp in spans:
            fn(sp)


Sink = Callable[[Image.Image, int, int], None]


def _sink_into(mode: str, size: tuple[int, int], out: np.ndarray | None) -> tuple[Sink, Any]:
    """Where a pass puts its bands: a new image, or the caller's (height, width) array.

    An "L" array is wrapped by Pillow (``frombuffer``, no copy) and pasted into directly; other
    modes are copied in through numpy.
    """
    if out is None:
        dst = Image.new(mode, size)
        return (lambda part, x, y: dst.paste(part, (x, y))), dst
    if mode == "L":
        mapped = Image.frombuffer("L", size, out, "raw", "L", 0, 1)
        mapped.readonly = 0  # our own writable array: paste straight into it
        return (lambda part, x, y: mapped.paste(part, (x, y))), out

    def put(part: Image.Image, x: int, y: int) -> None:
        w, h = part.size
        out[y : y + h, x : x + w] = np.asarray(part)

    return put, out


def _h_pass(im: Image.Image, ow: int, parts: int, pool: bool, out: np.ndarray | None = None) -> Any:
    """Pillow's horizontal pass alone, in bands of rows (each row is independent)."""
    iw, ih = im.size
    sink, result = _sink_into(im.mode, (ow, ih), out)
    exact_box = im.mode in _BOX_EXACT_MODES

    def one(span: tuple[int, int]) -> None:
        y0, y1 = span
        if exact_box:  # the box's vertical pass is an exact identity for 8-bit samples
            part = im.resize((ow, y1 - y0), _LANCZOS, box=(0, y0, iw, y1))
        else:
            part = im.crop((0, y0, iw, y1)).resize((ow, y1 - y0), _LANCZOS)
        sink(part, 0, y0)

    _map(one, _spans(ih, parts), pool)
    return result


def _v_pass(im: Image.Image, oh: int, parts: int, pool: bool, out: np.ndarray | None = None) -> Any:
    """Pillow's vertical pass alone, in strips of columns (each column is independent)."""
    iw, ih = im.size
    sink, result = _sink_into(im.mode, (iw, oh), out)
    exact_box = im.mode in _BOX_EXACT_MODES

    def one(span: tuple[int, int]) -> None:
        x0, x1 = span
        # A box-limited call is only cheap when Pillow starts it with the (identity) horizontal
        # pass: started vertically, it would resample every column of ``im`` for each strip.
        if exact_box and _horizontal_first(iw, ih, x1 - x0, oh):
            part = im.resize((x1 - x0, oh), _LANCZOS, box=(x0, 0, x1, ih))
        else:
            part = im.crop((x0, 0, x1, ih)).resize((x1 - x0, oh), _LANCZOS)
        sink(part, x0, 0)

    _map(one, _spans(iw, parts), pool)
    return result


def _split_resize(
    im: Image.Image,
    size: tuple[int, int],
    parts: int,
    pool: bool,
    out: np.ndarray | None = None,
) -> Any:
    """The resize as two split passes in Pillow's order; the last one writes into ``out``."""
    iw, ih = im.size
    ow, oh = size
    if _horizontal_first(iw, ih, ow, oh):
        if oh == ih:
            return _h_pass(im, ow, parts, pool, out)
        mid = _h_pass(im, ow, parts, pool) if ow != iw else im
        return _v_pass(mid, oh, parts, pool, out)
    if ow == iw:
        return _v_pass(im, oh, parts, pool, out)
    mid = _v_pass(im, oh, parts, pool) if oh != ih else im
    return _h_pass(mid, ow, parts, pool, out)


def _parallel_exact() -> bool:
    """Once per process: do split resizes reproduce this Pillow's single call bit for bit?"""
    global _parallel_ok
    if _parallel_ok is None:
        rng = np.random.default_rng(7)
        ok = True
        cases = [
            ((61, 47), (13, 11)),  # both smaller, horizontal first
            ((23, 97), (19, 9)),  # height shrinks most: vertical first on Pillow 13
            ((11, 9), (67, 53)),  # both larger (the mask upsample)
            ((40, 30), (9, 71)),  # mixed
        ]
        for (iw, ih), (ow, oh) in cases:
            for mode, arr in (
                ("RGB", rng.integers(0, 256, (ih, iw, 3), dtype=np.uint8)),
                ("L", rng.integers(0, 256, (ih, iw), dtype=np.uint8)),
                ("F", rng.random((ih, iw), dtype=np.float32)),
            ):
                im = Image.fromarray(arr, mode)
                want = np.asarray(im.resize((ow, oh), _LANCZOS))
                got = np.asarray(_split_resize(im, (ow, oh), 3, pool=False))
                ok = ok and want.shape == got.shape and bool(np.array_equal(want, got))
                if mode != "RGB":
                    into = np.full((oh, ow), 3, dtype=want.dtype)
                    _split_resize(im, (ow, oh), 3, pool=False, out=into)
                    ok = ok and bool(np.array_equal(want, into))
        _parallel_ok = ok
    return _parallel_ok


def _parallel(size_in: tuple[int, int], size_out: tuple[int, int]) -> int:
    """How many bands to split a resize into (0: one plain Pillow call)."""
    threads = resize_threads()
    pixels = max(size_in[0], size_out[0]) * max(size_in[1], size_out[1])
    if threads > 1 and pixels >= _PARALLEL_MIN_PIXELS and _parallel_exact():
        return threads * 4
    return 0


def lanczos_resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``im.resize(size, LANCZOS)``, bit for bit, on all cores for large images."""
    parts = _parallel(im.size, size)
    if parts:
        return _split_resize(im, size, parts, pool=True)
    return im.resize(size, _LANCZOS)


# The model input is made with Pillow's ``reducing_gap`` at this value: a box reduction by an
# integer factor first, leaving at least this many times the target size for the LANCZOS pass.
# Measured (docs/benchmarks.md): 4.0 gives the exact resize's mean error (alphamatting27 at 4x,
# 27 images: IoU -0.00001, MAE +0.00002 in the mean; gap 2 and 3 moved single images by 0.10
# IoU), and a 64 MP layer's resize to 320² drops from 0.36-0.39 s (exact, 2 cores) to 0.07 s.
REDUCING_GAP = 4.0


def _reduce_factors(size_in: tuple[int, int], size_out: tuple[int, int]) -> tuple[int, int]:
    """Pillow's ``reducing_gap`` factors: ``int(in / out / gap) or 1`` per axis."""
    return (
        int(size_in[0] / size_out[0] / REDUCING_GAP) or 1,
        int(size_in[1] / size_out[1] / REDUCING_GAP) or 1,
    )


def _parallel_reduce(im: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """``im.reduce(factors)`` in bands of rows on all cores (blocks never straddle a band)."""
    iw, ih = im.size
    fx, fy = factors
    out_size = (-(-iw // fx), -(-ih // fy))
    parts = _parallel(im.size, out_size)
    if not parts:
        return im.reduce(factors)
    out_h = out_size[1]
    dst = Image.new(im.mode, out_size)

    def one(span: tuple[int, int]) -> None:
        r0, r1 = span  # in reduced rows
        part = im.reduce(factors, box=(0, r0 * fy, iw, min(ih, r1 * fy)))
        dst.paste(part, (0, r0))

    _map(one, _spans(out_h, parts), pool=True)
    return dst


def model_resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``im.resize(size, LANCZOS, reducing_gap=REDUCING_GAP)``, bit for bit, on all cores.

    An axis is reduced only from 2 × ``REDUCING_GAP`` × ``size`` up (2560 px for a 320 px
    model, 8192 px for 1024 px); below that the result is the plain LANCZOS resize, equal to
    rembg's. Larger layers are box reduced first, which is what makes a 64 MP layer cheap: the
    exact LANCZOS pass reads each source pixel through a kernel about 170 px wide.
    """
    factors = _reduce_factors(im.size, size)
    if factors == (1, 1):
        return lanczos_resize(im, size)
    iw, ih = im.size
    reduced = _parallel_reduce(im, factors)
    if iw % factors[0] == 0 and ih % factors[1] == 0:
        # Whole blocks only: Pillow's box is the reduced image itself, so the split resize
        # (all cores, bit for bit) applies. IS-Net's 64 MP layer reduces only to 32 MP.
        return lanczos_resize(reduced, size)
    # A partial last block: Pillow resamples a fractional box of the reduced image, which the
    # split passes do not model; one call (at most 8 × size a side, unless a side is short).
    box = (0.0, 0.0, iw / factors[0], ih / factors[1])
    return reduced.resize(size, _LANCZOS, box=box)


def lanczos_resize_into(im: Image.Image, out: np.ndarray) -> np.ndarray:
    """``im.resize(..., LANCZOS)`` of an "L" or "F" image written into ``out`` and returned.

    ``out`` is a C-contiguous (height, width) uint8 or float32 array; the result is exactly
    Pillow's, and is never copied out of a Pillow image afterwards (it can be sent as it is).
    """
    size = (out.shape[1], out.shape[0])
    parts = _parallel(im.size, size)
    if parts:
        _split_resize(im, size, parts, pool=True, out=out)
    else:
        sink, _ = _sink_into(im.mode, size, out)
        sink(im.resize(size, _LANCZOS), 0, 0)
    return out
