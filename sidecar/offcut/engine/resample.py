"""Exact LANCZOS resampling on all cores, and the band threads it shares with decoding.

LANCZOS resizes of large layers (to the model input, and the mask back to the layer) are the
biggest cost after inference. Pillow runs each one on one core. Both of its passes are
independent along one axis (the horizontal pass row by row, the vertical pass column by
column), so each pass can be split into bands and run on all cores with Pillow's own code, which
releases the GIL. Done in Pillow's pass order with Pillow's coefficients, the result is the
same image bit for bit, so masks still equal rembg's (which resizes with Pillow too).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

_LANCZOS = Image.Resampling.LANCZOS
# Below this many pixels (the larger of source and output, per axis) one call is a few ms.
_PARALLEL_MIN_PIXELS = 1 << 20
# Modes whose band results are exact with a ``box``-limited call (8-bit samples: Pillow's
# fixed-point identity pass is exact). Float images are cut with ``crop`` instead.
_BOX_EXACT_MODES = ("L", "RGB", "RGBX", "RGBA", "LA", "La", "RGBa", "CMYK")


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


class BandThreads:
    """The worker threads that bands of a split resize or of a decode run on.

    Started on first use, sized then by :func:`resize_threads`, kept for the process: one pool
    serves every request, and each job waits for all of its bands before it returns.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    resize_threads(), thread_name_prefix="offcut-resize"
                )
            return self._pool


BAND_THREADS = BandThreads()


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


def band_spans(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` consecutive ``(start, end)`` spans."""
    step = -(-n // max(1, min(parts, n)))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def run_bands(
    fn: Callable[[tuple[int, int]], None], spans: list[tuple[int, int]], pool: bool
) -> None:
    """``fn`` on every span: on the band threads when ``pool`` (and there is more than one)."""
    if pool and len(spans) > 1:
        for _ in BAND_THREADS.executor().map(fn, spans):
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

    run_bands(one, band_spans(ih, parts), pool)
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

    run_bands(one, band_spans(iw, parts), pool)
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


@functools.cache
def _parallel_exact() -> bool:
    """Once per process: do split resizes reproduce this Pillow's single call bit for bit?"""
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
    return ok


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
# Measured (docs/benchmarks.md): 4.0 keeps the exact resize's mean error on alphamatting27 (gaps
# 2 and 3 moved single images noticeably) and makes a big layer's resize several times faster.
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

    run_bands(one, band_spans(out_h, parts), pool=True)
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
