"""The performance changes measured in bench/ must not change a single output value.

- ``resample.lanczos_resize``/``lanczos_resize_into`` split Pillow's two LANCZOS passes into bands
  over threads: the result must equal ``Image.resize(..., LANCZOS)`` bit for bit, in every pass
  order Pillow may pick (it starts with the vertical pass when the height shrinks most);
- ``engine.upsample_u8``/``upsample_float``/``encode_mask`` write into reused arrays and quantise
  in bands: the bytes must equal the straightforward formulas they replaced;
- ``resample.model_resize`` (the model input) equals Pillow's ``resize(..., LANCZOS,
  reducing_gap=4.0)`` with its box reduction split over threads, and is the plain LANCZOS resize
  (rembg's) for layers under 8 × the model's input a side;
- ``engine.preprocess`` builds exactly the tensor rembg 2.0.86 builds for such layers (its
  normalisation in float64, one rounding to float32);
- ``engine.choose_providers`` picks the accelerator when one is present.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from offcut.engine import engine, formats, resample
from offcut.errors import OffcutError
from offcut.models.catalog import load_catalog

LANCZOS = Image.Resampling.LANCZOS

SHAPES = [
    ((400, 300), (37, 29)),  # both smaller: horizontal pass first
    ((90, 700), (64, 50)),  # height shrinks most: vertical first on Pillow 13
    ((31, 23), (500, 380)),  # both larger: the mask upsample
    ((120, 80), (33, 410)),  # mixed
    ((333, 251), (320, 320)),
    ((700, 90), (320, 320)),
]


@pytest.fixture
def force_split(monkeypatch):
    """Take the threaded path even for these small images."""
    monkeypatch.setattr(resample, "_PARALLEL_MIN_PIXELS", 0)
    monkeypatch.setenv("OFFCUT_RESIZE_THREADS", "3")


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32), "F")
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8).tobytes()
    if mode == "RGBX":  # what formats.to_model_image makes of an RGBA8 layer
        return Image.frombuffer("RGB", size, rgba, "raw", "RGBX", 0, 1)
    return Image.frombytes("RGBA", size, rgba).convert("RGB")


def test_split_resize_self_check_passes():
    assert resample._parallel_exact()


@pytest.mark.parametrize("mode", ["RGB", "RGBX", "L", "F"])
@pytest.mark.parametrize(("src", "dst"), SHAPES)
def test_lanczos_resize_is_pillows_resize(force_split, mode, src, dst):
    im = _image(mode, src, seed=hash((mode, src, dst)) & 0xFFFF)
    want = np.asarray(im.resize(dst, LANCZOS))
    got = np.asarray(resample.lanczos_resize(im, dst))
    assert got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("mode", ["L", "F"])
@pytest.mark.parametrize(("src", "dst"), SHAPES)
@pytest.mark.parametrize("split", [True, False])
def test_lanczos_resize_into_is_pillows_resize(monkeypatch, mode, src, dst, split):
    if split:
        monkeypatch.setattr(resample, "_PARALLEL_MIN_PIXELS", 0)
        monkeypatch.setenv("OFFCUT_RESIZE_THREADS", "2")
    else:
        monkeypatch.setenv("OFFCUT_RESIZE_THREADS", "1")
    im = _image(mode, src, seed=7)
    want = np.asarray(im.resize(dst, LANCZOS))
    out = np.full((dst[1], dst[0]), 9, dtype=want.dtype)
    assert resample.lanczos_resize_into(im, out) is out
    assert np.array_equal(out, want)


def test_to_model_image_then_resize_matches_rembgs_order(force_split):
    """RGBA8 wrapped as RGBX and split-resized equals rembg's convert("RGB").resize()."""
    rng = np.random.default_rng(3)
    w, h = 517, 389
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = formats.to_model_image(
        rgba.tobytes(), formats.FORMATS["RGBA8"], w, h, (0, 0, w, h), "srgb"
    )
    ours = np.asarray(resample.lanczos_resize(img, (320, 320)))[..., :3]
    theirs = np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB").resize((320, 320), LANCZOS))
    assert np.array_equal(ours, theirs)


REDUCE_SHAPES = [
    ((2559, 2559), (320, 320)),  # the largest layer with no reduction: plain LANCZOS
    ((2700, 1300), (320, 320)),  # reduced along x only
    ((1300, 2703), (320, 320)),  # along y only, a partial last block
    ((3001, 2999), (320, 320)),  # both, partial blocks on both axes
    ((900, 700), (64, 50)),  # another target size
    ((2560, 3840), (320, 320)),  # whole blocks on both axes: the split resize of the reduced image
]


@pytest.mark.parametrize("mode", ["RGB", "RGBX", "L"])
@pytest.mark.parametrize(("src", "dst"), REDUCE_SHAPES)
def test_model_resize_is_pillows_reducing_gap_resize(force_split, mode, src, dst):
    im = _image(mode, src, seed=hash((mode, src)) & 0xFFFF)
    want = np.asarray(im.resize(dst, LANCZOS, reducing_gap=resample.REDUCING_GAP))
    got = np.asarray(resample.model_resize(im, dst))
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    if resample._reduce_factors(src, dst) == (1, 1):
        assert np.array_equal(got, np.asarray(im.resize(dst, LANCZOS)))  # rembg's resize


def test_model_resize_of_a_big_layer_stays_close_to_the_exact_resize():
    """The box pre-reduction is an approximation: bounded, and far below a mask's resolution."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    im = Image.fromarray(base, "RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    exact = np.asarray(im.resize((320, 320), LANCZOS)).astype(int)
    ours = np.asarray(resample.model_resize(im, (320, 320))).astype(int)
    diff = np.abs(ours - exact)
    assert resample._reduce_factors(im.size, (320, 320)) == (3, 2)
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("size", [(50, 40), (700, 530), (1300, 90)])
def test_upsample_and_encode_match_the_plain_formulas(force_split, size):
    rng = np.random.default_rng(11)
    small = rng.random((320, 320), dtype=np.float32)
    small[:3] = 0.0
    small[-3:] = 1.0
    plain_u8 = Image.fromarray((small * 255.0 + 0.5).astype(np.uint8), "L").resize(size, LANCZOS)
    mask_u8 = engine.upsample_u8(small, size)
    assert np.array_equal(np.asarray(mask_u8), np.asarray(plain_u8))
    assert bytes(engine.encode_mask(mask_u8, None, "GRAY8")) == plain_u8.tobytes()
    # after a threshold (a new image) the bytes come from that image, not the original array
    cut = mask_u8.point(lambda v: 255 if v >= 128 else 0)
    assert bytes(engine.encode_mask(cut, None, "GRAY8")) == cut.tobytes()

    plain_f = np.asarray(Image.fromarray(small, "F").resize(size, LANCZOS), dtype=np.float32).copy()
    np.clip(plain_f, 0.0, 1.0, out=plain_f)
    mask_f = engine.upsample_float(small, size)
    assert mask_f.dtype == np.float32 and np.array_equal(mask_f, plain_f)
    assert (
        bytes(engine.encode_mask(None, mask_f, "GRAY8"))
        == (plain_f * 255.0 + 0.5).astype(np.uint8).tobytes()
    )
    assert (
        bytes(engine.encode_mask(None, mask_f, "GRAY16"))
        == (plain_f * 65535.0 + 0.5).astype("<u2").tobytes()
    )
    assert bytes(engine.encode_mask(None, mask_f, "GRAYF32")) == plain_f.astype("<f4").tobytes()


def test_encode_mask_gray8_from_float_in_bands_over_many_rows():
    mask_f = np.random.default_rng(5).random((engine._ENCODE_ROWS * 2 + 7, 13), dtype=np.float32)
    want = (mask_f * 255.0 + 0.5).astype(np.uint8).tobytes()
    assert bytes(engine.encode_mask(None, mask_f, "GRAY8")) == want


@pytest.mark.parametrize("model", ["u2netp", "isnet-general-use-fp16"])
def test_preprocess_builds_rembgs_tensor(force_split, model):
    """rembg 2.0.86 BaseSession.normalize, written out (rembg itself is optional here)."""
    spec = load_catalog().get(model)
    rng = np.random.default_rng(1)
    w, h = 431, 297
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = formats.to_model_image(
        rgba.tobytes(), formats.FORMATS["RGBA8"], w, h, (0, 0, w, h), "srgb"
    )
    ours = engine.preprocess(img, spec)

    size = (spec.input_size, spec.input_size)
    im = Image.fromarray(rgba, "RGBA").convert("RGB").resize(size, LANCZOS)
    im_ary = np.array(im)
    im_ary = im_ary / max(np.max(im_ary), 1e-6)
    tmp = np.zeros((im_ary.shape[0], im_ary.shape[1], 3))
    for c in range(3):
        tmp[:, :, c] = (im_ary[:, :, c] - spec.mean[c]) / spec.std[c]
    theirs = np.expand_dims(tmp.transpose((2, 0, 1)), 0).astype(np.float32)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert np.array_equal(ours, theirs)


CPU = "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("available", "chosen"),
    [
        ([CPU], [CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),
        (["CUDAExecutionProvider", CPU], ["CUDAExecutionProvider", CPU]),
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU],
            ["CUDAExecutionProvider", CPU],
        ),
        (["DmlExecutionProvider", CPU], ["DmlExecutionProvider", CPU]),
        (["CoreMLExecutionProvider", CPU], ["CoreMLExecutionProvider", CPU]),
        (
            ["CoreMLExecutionProvider", "CUDAExecutionProvider", CPU],
            ["CUDAExecutionProvider", CPU],
        ),
    ],
)
def test_choose_providers_prefers_an_accelerator(available, chosen):
    assert engine.choose_providers(available) == chosen


def test_choose_providers_forced():
    both = ["CUDAExecutionProvider", CPU]
    assert engine.choose_providers(both, CPU) == [CPU]
    assert engine.choose_providers(both, "CUDAExecutionProvider") == both
    with pytest.raises(OffcutError) as err:
        engine.choose_providers([CPU], "CUDAExecutionProvider")
    assert "OFFCUT_PROVIDER" in err.value.message
