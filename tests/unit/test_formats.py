"""Pixel-format decoding: sizes, channel orders, depths, colorspaces, ROI."""

from __future__ import annotations

import numpy as np
import pytest

from offcut.client import wire
from offcut.engine import formats
from offcut.errors import OffcutError


def _img(fmt: str, arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr.astype(formats.FORMATS[fmt].dtype)).tobytes()


def test_bytes_per_pixel() -> None:
    assert formats.FORMATS["RGBA8"].bytes_per_pixel == 4
    assert formats.FORMATS["RGB8"].bytes_per_pixel == 3
    assert formats.FORMATS["GRAYAF32"].bytes_per_pixel == 8
    # Every format's size is the wire's and agrees with its channels and sample type here.
    assert {k: v.bytes_per_pixel for k, v in formats.FORMATS.items()} == wire.FORMATS
    for fmt in formats.FORMATS.values():
        assert fmt.bytes_per_pixel == fmt.n_channels * np.dtype(fmt.dtype).itemsize, fmt.name


def test_size_mismatch_is_bad_request() -> None:
    with pytest.raises(OffcutError) as e:
        formats.view(bytes(15), formats.FORMATS["RGBA8"], 2, 2)
    assert e.value.code == "bad_request" and "16" in e.value.message


def test_unknown_format() -> None:
    with pytest.raises(OffcutError) as e:
        formats.get_format("CMYK8")
    assert e.value.code == "bad_request" and "RGBA8" in e.value.message


RED = (200, 10, 30, 255)


@pytest.mark.parametrize(
    ("fmt", "pixel"),
    [
        ("RGBA8", RED),
        ("BGRA8", (30, 10, 200, 255)),
        ("RGB8", RED[:3]),
        ("RGBA16", tuple(v * 257 for v in RED)),
        ("BGRA16", (30 * 257, 10 * 257, 200 * 257, 65535)),
        ("RGBAF16", tuple(v / 255 for v in RED)),
        ("RGBAF32", tuple(v / 255 for v in RED)),
    ],
)
def test_colour_formats_decode_to_rgb(fmt: str, pixel: tuple) -> None:
    arr = np.array([[pixel, pixel], [pixel, pixel]])
    img = formats.to_model_image(_img(fmt, arr), formats.FORMATS[fmt], 2, 2, (0, 0, 2, 2), "srgb")
    assert img.mode in ("RGB", "RGBX")  # RGBX: Pillow's zero-copy view of a 4-byte buffer
    got = np.asarray(img)[0, 0, :3].tolist()
    assert all(abs(a - b) <= 1 for a, b in zip(got, RED[:3], strict=True)), (fmt, got)


@pytest.mark.parametrize("fmt", ["GRAY8", "GRAYA8", "GRAYA16", "GRAYAF16", "GRAYAF32"])
def test_gray_formats(fmt: str) -> None:
    f = formats.FORMATS[fmt]
    top = {"8": 255, "16": 65535, "float": 1.0}[f.depth]
    v = 100 / 255 * top
    arr = np.full((3, 4, f.n_channels), v)
    if f.has_alpha:
        arr[..., 1] = top
    img = formats.to_model_image(_img(fmt, arr), f, 4, 3, (0, 0, 4, 3), "srgb")
    assert img.mode == "L" and abs(int(np.asarray(img)[1, 1]) - 100) <= 1


def test_linear_is_encoded_to_srgb() -> None:
    # linear 0.2140 is sRGB 0.5 (128/255)
    arr = np.full((1, 1, 4), 0.2140)
    arr[..., 3] = 1.0
    img = formats.to_model_image(
        _img("RGBAF32", arr), formats.FORMATS["RGBAF32"], 1, 1, (0, 0, 1, 1), "linear"
    )
    assert abs(int(np.asarray(img)[0, 0, 0]) - 128) <= 1
    arr16 = (arr * 65535).round()
    img16 = formats.to_model_image(
        _img("RGBA16", arr16), formats.FORMATS["RGBA16"], 1, 1, (0, 0, 1, 1), "linear"
    )
    assert abs(int(np.asarray(img16)[0, 0, 0]) - 128) <= 1


def test_nan_inf_are_clipped() -> None:
    arr = np.array([[[np.nan, np.inf, -np.inf, 1.0], [2.0, -1.0, 0.5, 1.0]]])
    img = formats.to_model_image(
        _img("RGBAF32", arr), formats.FORMATS["RGBAF32"], 2, 1, (0, 0, 2, 1), "srgb"
    )
    assert np.asarray(img.convert("RGB")).tolist() == [[[0, 255, 0], [255, 0, 128]]]


@pytest.mark.parametrize("fmt", ["RGBA8", "BGRA8", "RGBA16", "RGBAF32", "GRAYA8"])
def test_roi_crops(fmt: str) -> None:
    f = formats.FORMATS[fmt]
    rng = np.random.default_rng(1)
    top = {"8": 255, "16": 65535, "float": 1.0}[f.depth]
    arr = rng.random((10, 12, f.n_channels)) * top
    buf = _img(fmt, arr)
    full = np.asarray(formats.to_model_image(buf, f, 12, 10, (0, 0, 12, 10), "srgb").convert("RGB"))
    part = np.asarray(formats.to_model_image(buf, f, 12, 10, (3, 2, 5, 4), "srgb").convert("RGB"))
    assert np.array_equal(part, full[2:6, 3:8])


def test_alpha_and_colour_of() -> None:
    arr = np.array([[[10, 20, 30, 255], [40, 50, 60, 0]]], dtype=np.uint8)
    f = formats.FORMATS["BGRA8"]
    assert formats.alpha_of(arr.tobytes(), f, 2, 1, (0, 0, 2, 1)).tolist() == [[1.0, 0.0]]
    assert formats.colour_of(arr.tobytes(), f, 2, 1, (1, 0, 1, 1)).tolist() == [[[60, 50, 40]]]
    assert formats.alpha_of(bytes(6), formats.FORMATS["RGB8"], 2, 1, (0, 0, 2, 1)) is None


def test_u16_to_u8_is_exact_rounding_for_every_value() -> None:
    v = np.arange(65536, dtype=np.uint16)
    want = (v.astype(np.uint64) * 255 + 32767) // 65535  # round(v * 255 / 65535), ties never occur
    assert np.array_equal(formats._u16_to_u8(v), want.astype(np.uint8))


def _plain_u8(arr: np.ndarray, fmt: formats.PixelFormat, linear: bool) -> np.ndarray:
    """The per-sample definitions, written out without tables, bands or threads."""
    if fmt.depth == "8":
        return formats._srgb_lut16()[arr.astype(np.uint16) * 257]
    if fmt.depth == "16":
        if linear:
            return formats._srgb_lut16()[arr]
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    f = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(f, 0.0, 1.0, out=f)
    if linear:
        f = formats._srgb_encode(f)
    return (f * 255.0 + 0.5).astype(np.uint8)


# Every (format, colorspace) that is converted: 8-bit sRGB is wrapped by Pillow instead.
CONVERTED = [(n, "linear") for n in ("RGBA8", "BGRA8", "RGB8", "GRAYA8")] + [
    (n, cs)
    for n in ("RGBA16", "BGRA16", "GRAYA16", "RGBAF16", "RGBAF32", "GRAYAF16", "GRAYAF32")
    for cs in ("srgb", "linear")
]


@pytest.mark.parametrize(("fmt", "colorspace"), CONVERTED)
def test_deep_and_linear_layers_decode_exactly_in_parallel_bands(
    fmt: str, colorspace: str, monkeypatch
) -> None:
    """Tables, the shift formula, bands and threads give the plain per-sample result exactly.

    Random samples over the whole range of each type (every half float bit pattern occurs,
    NaN and infinities included), an ROI that is not a whole row, several bands on the pool.
    """
    f = formats.FORMATS[fmt]
    monkeypatch.setattr(formats, "_DECODE_ROWS", 7)
    rng = np.random.default_rng(3)
    w, h = 97, 61
    if f.depth == "float":
        raw = rng.integers(0, 1 << (8 * np.dtype(f.dtype).itemsize), (h, w, f.n_channels))
        raw = raw.astype(np.uint16 if f.dtype == "<f2" else np.uint32)
        arr = raw.view(f.dtype)
        if f.dtype == "<f4":  # random bit patterns are mostly huge: add ordinary values too
            arr[::2] = rng.random((len(arr[::2]), w, f.n_channels)) * 1.2 - 0.1
    else:
        top = 255 if f.depth == "8" else 65535
        arr = rng.integers(0, top + 1, (h, w, f.n_channels)).astype(f.dtype)
    buf = np.ascontiguousarray(arr).tobytes()
    roi = (5, 3, 83, 50)
    img = formats.to_model_image(buf, f, w, h, roi, colorspace)
    x, y, rw, rh = roi
    part = arr[y : y + rh, x : x + rw]
    idx = [0] if f.is_gray else [f.channels.index(c) for c in "RGB"]
    want = _plain_u8(part[..., idx], f, colorspace == "linear")
    got = np.asarray(img)
    if f.is_gray:
        assert img.mode == "L" and np.array_equal(got, want[..., 0])
    else:
        assert img.mode in ("RGB", "RGBX") and np.array_equal(got[..., :3], want)
