"""The Krita plug-in's pixel conversions (``plugin_krita/offcut_krita/pixels.py``), without Krita.

Krita's Python has no numpy, so the plug-in converts with ``memoryview`` strides and ``struct``;
here every layout Krita hands out is checked against the same conversion written with numpy.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from offcut_krita import pixels as kpixels

DEPTHS = [
    ("RGBA", "U8"),
    ("RGBA", "U16"),
    ("RGBA", "F16"),
    ("RGBA", "F32"),
    ("GRAYA", "U8"),
    ("GRAYA", "U16"),
    ("GRAYA", "F16"),
    ("GRAYA", "F32"),
]
WIRE = {
    ("RGBA", "U8"): "BGRA8",
    ("RGBA", "U16"): "BGRA16",
    ("RGBA", "F16"): "RGBAF16",
    ("RGBA", "F32"): "RGBAF32",
    ("GRAYA", "U8"): "GRAYA8",
    ("GRAYA", "U16"): "GRAYA16",
    ("GRAYA", "F16"): "GRAYAF16",
    ("GRAYA", "F32"): "GRAYAF32",
}
DTYPE = {
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}


def test_the_package_imports_outside_krita_without_registering():
    import offcut_krita

    assert offcut_krita.Krita is None


@pytest.mark.parametrize(("model", "depth"), DEPTHS)
def test_layout_table_matches_krita_byte_order(model, depth):
    fmt, bpp, size = kpixels.layout(model, depth)
    assert fmt == WIRE[(model, depth)]
    assert bpp == (4 if model == "RGBA" else 2) * size


@pytest.mark.parametrize(("model", "depth"), DEPTHS)
def test_gray_layer_pixels_match_numpy(model, depth):
    rng = np.random.default_rng(3)
    mask_format = {"U8": "GRAY8", "U16": "GRAY16"}.get(depth, "GRAYF32")
    m = {
        "GRAY8": rng.integers(0, 256, 300).astype("u1"),
        "GRAY16": rng.integers(0, 65536, 300).astype("<u2"),
        "GRAYF32": rng.random(300).astype("<f4"),
    }[mask_format]
    got = kpixels.gray_layer_pixels(m.tobytes(), mask_format, model, depth)
    ch = 4 if model == "RGBA" else 2
    want = np.empty((300, ch), DTYPE[depth])
    want[:, :-1] = m.astype(DTYPE[depth])[:, None]
    want[:, -1] = {"U8": 255, "U16": 65535}.get(depth, 1.0)
    assert bytes(got) == want.tobytes()


@pytest.mark.parametrize(("model", "depth"), DEPTHS)
def test_cutout_conversion_matches_numpy(model, depth):
    rng = np.random.default_rng(4)
    fmt = {"U8": "RGBA8", "U16": "RGBA16"}.get(depth, "RGBAF32")
    cut = {
        "RGBA8": rng.integers(0, 256, (50, 4)).astype("u1"),
        "RGBA16": rng.integers(0, 65536, (50, 4)).astype("<u2"),
        "RGBAF32": (rng.random((50, 4)) * 2).astype("<f4"),
    }[fmt]
    got = kpixels.cutout_to_layout(cut.tobytes(), fmt, model, depth)
    if model == "GRAYA":
        want = cut[:, [0, 3]].astype(DTYPE[depth])
    elif depth in ("U8", "U16"):
        want = cut[:, [2, 1, 0, 3]]
    else:
        want = cut.astype(DTYPE[depth])
    assert bytes(got) == want.tobytes()


def test_half_packing_rounds_like_numpy():
    values = np.array([0.0, 1.0, 0.1, 1 / 3, 65504.0, 1e-8, 2.5e-5, 0.99951171875], "<f4")
    got = kpixels._half_from_f32(values.tobytes())
    assert bytes(got) == values.astype("<f2").tobytes()
    assert struct.unpack("<e", bytes(got[2:4]))[0] == 1.0


def test_linear_profiles_are_recognised():
    assert kpixels.is_linear_profile("sRGB-elle-V2-g10.icc")
    assert kpixels.is_linear_profile("Gray-D50-elle-V2-g10.icc")
    assert not kpixels.is_linear_profile("sRGB-elle-V2-srgbtrc.icc")
    assert not kpixels.is_linear_profile("")
