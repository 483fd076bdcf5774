"""Edge refinement and foreground estimation on synthetic photos whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from offcut.engine import refine
from offcut.quality import metrics

FG = np.array([0.85, 0.30, 0.15], np.float32)  # orange "hair"
BG = np.array([0.20, 0.45, 0.80], np.float32)  # blue sky


def hairy(size: int = 240, seed: int = 0) -> np.ndarray:
    """True alpha: a solid disc with thin, partly transparent strands sticking out of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    r = np.hypot(yy - c, xx - c)
    alpha = np.clip((size * 0.25 - r) / 1.5 + 0.5, 0, 1)
    for angle in rng.uniform(0, 2 * np.pi, 40):
        # a 1 px strand from the disc's rim outwards, 60 % opaque
        t = np.arange(size * 0.25, size * 0.45, 0.5)
        ys = np.clip((c + t * np.sin(angle)).astype(int), 0, size - 1)
        xs = np.clip((c + t * np.cos(angle)).astype(int), 0, size - 1)
        alpha[ys, xs] = np.maximum(alpha[ys, xs], 0.6)
    return alpha.astype(np.float32)


def composite(alpha: np.ndarray) -> Image.Image:
    img = alpha[..., None] * FG + (1 - alpha[..., None]) * BG
    return Image.fromarray((img * 255 + 0.5).astype(np.uint8), "RGB")


def model_like(alpha: np.ndarray, input_size: int = 40) -> np.ndarray:
    """What an upsampled low-resolution model output looks like: the truth seen at 40² px."""
    h, w = alpha.shape
    small = Image.fromarray(alpha, "F").resize((input_size, input_size), Image.Resampling.BOX)
    return np.clip(np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), np.float32), 0, 1)


def test_refine_lowers_edge_error_on_hair() -> None:
    alpha = hairy()
    image = composite(alpha)
    blurry = model_like(alpha)
    refined = refine.refine_mask(blurry, image)
    band = metrics.edge_band(alpha, 6)
    assert refined.dtype == np.float32 and refined.shape == alpha.shape
    before, after = metrics.mae(blurry, alpha, band), metrics.mae(refined, alpha, band)
    assert after < 0.9 * before, (before, after)
    assert metrics.sad(refined, alpha) < metrics.sad(blurry, alpha)


def test_refine_leaves_sure_pixels_alone() -> None:
    alpha = hairy()
    blurry = model_like(alpha)
    refined = refine.refine_mask(blurry, composite(alpha))
    sure = (blurry >= 0.999) | (blurry <= 0.001)
    assert np.array_equal(refined[sure], blurry[sure])
    # and a mask with nothing uncertain comes back as it was
    hard = (alpha > 0.5).astype(np.float32)
    assert np.array_equal(refine.refine_mask(hard, composite(alpha)), hard)


def test_refine_does_not_punch_holes_where_colours_match() -> None:
    """A foreground whose colour is the background's must keep the model's (confident) mask."""
    alpha = hairy()
    same = Image.fromarray(np.full((*alpha.shape, 3), 128, np.uint8), "RGB")
    blurry = model_like(alpha)
    refined = refine.refine_mask(blurry, same)
    assert np.allclose(refined, blurry, atol=1e-6)


def test_refine_accepts_a_gray_guide() -> None:
    alpha = hairy(120)
    gray = composite(alpha).convert("L")
    out = refine.refine_mask(model_like(alpha, 20), gray)
    assert out.shape == alpha.shape and np.isfinite(out).all()


def test_dilate_square_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    m = rng.random((30, 41)) < 0.03
    k = 2
    brute = np.zeros_like(m)
    for y, x in zip(*np.nonzero(m), strict=True):
        brute[max(0, y - k) : y + k + 1, max(0, x - k) : x + k + 1] = True
    assert np.array_equal(refine.dilate_square(m, k), brute)


def smooth_scene(size: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothly varying F and B with a soft alpha ramp between them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    f = np.stack([0.8 + 0.1 * yy, 0.3 + 0.2 * xx, 0.1 + 0.0 * xx], axis=2)
    b = np.stack([0.1 + 0.1 * xx, 0.5 + 0.0 * yy, 0.9 - 0.2 * yy], axis=2)
    alpha = np.clip((xx - 0.35) / 0.3, 0, 1)
    return f.astype(np.float32), b.astype(np.float32), alpha.astype(np.float32)


@pytest.mark.parametrize("work_pixels", [None, 4000])
def test_foreground_removes_the_old_background(
    monkeypatch: pytest.MonkeyPatch, work_pixels: int | None
) -> None:
    if work_pixels:
        monkeypatch.setattr(refine, "FG_WORK_PIXELS", work_pixels)  # the large-image path
    f, b, alpha = smooth_scene()
    a = alpha[..., None]
    image = a * f + (1 - a) * b
    est = refine.estimate_foreground(image, alpha)
    soft = (alpha > 0) & (alpha < 1)
    naive = (a * np.abs(image - f)).mean(axis=2)[soft].mean()
    ours = (a * np.abs(est - f)).mean(axis=2)[soft].mean()
    assert est.dtype == np.float32
    assert ours < 0.25 * naive, (naive, ours)
    sure = ~soft
    assert np.array_equal(est[sure], image[sure])


def test_foreground_of_an_opaque_mask_is_the_image() -> None:
    f, _, _ = smooth_scene(32)
    alpha = np.ones((32, 32), np.float32)
    assert np.array_equal(refine.estimate_foreground(f, alpha), f)
