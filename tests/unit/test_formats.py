"""Pixel-format decoding: sizes, channel orders, depths, colorspaces, ROI."""

from __future__ import annotations

import numpy as np
import pytest

from offcut import formats
from offcut.errors import OffcutError


def _img(fmt: str, arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr.astype(formats.FORMATS[fmt].dtype)).tobytes()


def test_bytes_per_pixel() -> None:
    expected = {
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
    assert {k: v.bytes_per_pixel for k, v in formats.FORMATS.items()} == expected


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
    assert np.asarray(img).tolist() == [[[0, 255, 0], [255, 0, 128]]]


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
