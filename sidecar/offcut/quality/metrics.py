"""Mask quality metrics: the salient-object ones (IoU, MAE) and the alphamatting.com ones.

All functions take float arrays in 0..1 of the same (H, W) shape: ``pred`` (what a pipeline
produced) and ``gt`` (the ground truth). Numpy only, so the sidecar's dependency list stays short
and the numbers do not depend on which image library happens to be installed.

Definitions (docs/quality.md repeats them with the reasons):

- IoU: ``pred >= 0.5`` against ``gt >= 0.5``; two empty masks score 1.
- MAE, MSE: mean absolute / squared difference over all pixels.
- SAD: sum of absolute differences over all pixels / 1000, the unit alphamatting.com reports.
- Gradient error (Rhemann et al. 2009, as in the reference MATLAB code of Deep Image Matting,
  ``compute_gradient_loss.m``): squared difference of the gradient magnitudes, gradients from
  first-order Gaussian derivative filters with sigma 1.4, summed, / 1000.
- Connectivity error (same paper and code, ``compute_connectivity_error.m``, step 0.1, 4-connected
  components), summed, / 1000.
- Edge-band MAE: MAE inside the band where errors are visible: pixels within ``k`` px (Euclidean)
  of the ground truth's 0.5 contour, plus every pixel where 0 < gt < 1.

The alphamatting.com benchmark sums over the unknown region of a hand-drawn trimap; the data sets
here have none, so SAD, MSE, gradient and connectivity are taken over the whole image and the
edge band plays the trimap's part.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BAND = 10  # px; see edge_band()


def iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    p = pred >= threshold
    g = gt >= threshold
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


def mae(pred: np.ndarray, gt: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = np.abs(pred.astype(np.float32) - gt.astype(np.float32))
    if where is None:
        return float(diff.mean(dtype=np.float64))
    n = int(np.count_nonzero(where))
    return float(diff[where].sum(dtype=np.float64) / n) if n else 0.0


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    diff = pred.astype(np.float32) - gt.astype(np.float32)
    return float(np.mean(diff * diff, dtype=np.float64))


def sad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Sum of absolute differences, in thousands (alphamatting.com's unit)."""
    diff = np.abs(pred.astype(np.float32) - gt.astype(np.float32))
    return float(diff.sum(dtype=np.float64) / 1000.0)


# --- gradient error ------------------------------------------------------------------------------


def gaussian_derivative_kernels(
    sigma: float = 1.4, epsilon: float = 1e-2
) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D factors of the ``gaussgradient`` filter used by the reference code.

    The 2-D kernel ``h[i, j] = g(i) * dg(j)`` divided by its L2 norm is separable, and its norm is
    the product of the factors' norms, so each factor is normalised on its own. The half size is
    where the Gaussian falls below ``epsilon`` (4 for sigma 1.4, a 9-tap filter).
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -x * g / (sigma * sigma)
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def _convolve_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """True convolution (kernel flipped) along one axis with replicated borders."""
    half = len(kernel) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (half, half)
    padded = np.pad(a, pad, mode="edge")
    out = np.zeros_like(a, dtype=np.float64)
    n = a.shape[axis]
    for t, w in enumerate(kernel[::-1]):
        if w == 0.0:
            continue
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(t, t + n)
        out += w * padded[tuple(sl)]
    return out


def gradient_magnitude(alpha: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    g, dg = gaussian_derivative_kernels(sigma)
    a = alpha.astype(np.float64)
    gx = _convolve_axis(_convolve_axis(a, g, 0), dg, 1)
    gy = _convolve_axis(_convolve_axis(a, dg, 0), g, 1)
    return np.sqrt(gx * gx + gy * gy)


def gradient_error(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4) -> float:
    d = gradient_magnitude(pred, sigma) - gradient_magnitude(gt, sigma)
    return float(np.sum(d * d) / 1000.0)


# --- connectivity error --------------------------------------------------------------------------


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (all False when it is empty).

    Numpy has no labelling, so this labels horizontal runs, joins runs that touch vertically and
    merges the join graph with vectorised union-find (hook to the smaller root, then pointer
    jumping): a few passes over the runs, not a Python loop over pixels.
    """
    m = np.ascontiguousarray(mask, dtype=bool)
    if not m.any():
        return np.zeros_like(m)
    starts = m.copy()
    starts[:, 1:] &= ~m[:, :-1]
    run_id = np.cumsum(starts.ravel(), dtype=np.int64).reshape(m.shape) - 1
    n = int(starts.sum())
    both = m[:-1] & m[1:]
    a = run_id[:-1][both]
    b = run_id[1:][both]
    if a.size:
        key = np.unique(a * n + b)
        a, b = key // n, key % n
    parent = np.arange(n, dtype=np.int64)
    while a.size:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        lo = np.minimum(pa, pb)[differ]
        hi = np.maximum(pa, pb)[differ]
        np.minimum.at(parent, hi, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    labels = parent[run_id[m]]
    sizes = np.bincount(labels, minlength=n)
    out = np.zeros_like(m)
    out[m] = labels == int(np.argmax(sizes))
    return out


def connectivity_error(pred: np.ndarray, gt: np.ndarray, step: float = 0.1) -> float:
    """Rhemann et al.'s connectivity error, following ``compute_connectivity_error.m``.

    For each threshold t, the largest 4-connected region where both mattes are >= t is the part
    "connected to the source"; a pixel's level l is the last threshold at which it still was. The
    error compares phi = 1 - (alpha - l) (where alpha - l >= 0.15, else 1) between the mattes.
    """
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    steps = np.round(np.arange(0.0, 1.0 + step / 2, step), 10)
    level = np.full(p.shape, -1.0)
    for i in range(1, len(steps)):
        omega = largest_component((p >= steps[i]) & (g >= steps[i]))
        level[(level == -1.0) & ~omega] = steps[i - 1]
    level[level == -1.0] = 1.0
    pd = p - level
    gd = g - level
    p_phi = 1.0 - pd * (pd >= 0.15)
    g_phi = 1.0 - gd * (gd >= 0.15)
    return float(np.sum(np.abs(p_phi - g_phi)) / 1000.0)


# --- edge band -----------------------------------------------------------------------------------


def _dilate_rows(m: np.ndarray, w: int) -> np.ndarray:
    """Horizontal dilation by ``w`` px on each side (window counts from a cumulative sum)."""
    if w <= 0:
        return m.copy()
    c = np.cumsum(np.pad(m, ((0, 0), (w + 1, w))).astype(np.int32), axis=1)
    return (c[:, 2 * w + 1 :] - c[:, : -2 * w - 1]) > 0


def dilate_disk(m: np.ndarray, k: int) -> np.ndarray:
    """Dilation of a boolean mask by a Euclidean disc of radius ``k`` (row spans of the disc)."""
    if k <= 0:
        return m.copy()
    h = m.shape[0]
    out = np.zeros_like(m)
    cache: dict[int, np.ndarray] = {}
    for dy in range(-k, k + 1):
        w = math.isqrt(k * k - dy * dy)
        if w not in cache:
            cache[w] = _dilate_rows(m, w)
        rows = cache[w]
        if dy >= 0:
            out[dy:] |= rows[: h - dy]
        else:
            out[: h + dy] |= rows[-dy:]
    return out


def edge_band(gt: np.ndarray, k: int = DEFAULT_BAND) -> np.ndarray:
    """Pixels within ``k`` px of the ground truth's 0.5 contour, or where 0 < gt < 1.

    The contour is both sides of the boundary: every pixel whose ``gt >= 0.5`` differs from one of
    its 4-neighbours. ``k`` defaults to 10 px: on these 400–800 px data sets that covers the
    smeared rim an upsampled 320² or 1024² mask leaves (2.5 px per model pixel for u2netp on an
    800 px photo) plus the transition a user sees, and little of the easy interior.
    """
    b = gt >= 0.5
    contour = np.zeros_like(b)
    dy = b[1:] != b[:-1]
    dx = b[:, 1:] != b[:, :-1]
    contour[1:] |= dy
    contour[:-1] |= dy
    contour[:, 1:] |= dx
    contour[:, :-1] |= dx
    return dilate_disk(contour, k) | ((gt > 0.0) & (gt < 1.0))


def score(pred: np.ndarray, gt: np.ndarray, band: int = DEFAULT_BAND) -> dict[str, float]:
    """Every metric for one image, keyed as in the JSON and Markdown output of ``offcut eval``."""
    pred = np.clip(pred.astype(np.float32), 0.0, 1.0)
    gt = gt.astype(np.float32)
    region = edge_band(gt, band)
    return {
        "iou": iou(pred, gt),
        "mae": mae(pred, gt),
        "sad": sad(pred, gt),
        "mse": mse(pred, gt),
        "grad": gradient_error(pred, gt),
        "conn": connectivity_error(pred, gt),
        "edge_mae": mae(pred, gt, region),
    }
