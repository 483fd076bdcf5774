"""Quality metrics against values worked out by hand (or by a second, naive implementation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offcut.quality import metrics


def test_iou_counts_pixels_at_half() -> None:
    pred = np.array([[1.0, 0.0], [0.5, 0.49]], np.float32)
    gt = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)
    # pred >= 0.5: (0,0), (1,0); gt >= 0.5: (0,0), (0,1) -> 1 shared of 3
    assert metrics.iou(pred, gt) == pytest.approx(1 / 3)
    assert metrics.iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert metrics.iou(np.ones((2, 2)), np.zeros((2, 2))) == 0.0


def test_mae_sad_mse() -> None:
    pred = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    gt = np.array([[0.0, 1.0], [0.0, 0.25]], np.float32)
    # |d| = 0, 0.5, 1, 0
    assert metrics.mae(pred, gt) == pytest.approx(1.5 / 4)
    assert metrics.sad(pred, gt) == pytest.approx(1.5 / 1000)
    assert metrics.mse(pred, gt) == pytest.approx((0.25 + 1.0) / 4)
    where = np.array([[False, True], [False, True]])
    assert metrics.mae(pred, gt, where) == pytest.approx(0.25)
    assert metrics.mae(pred, gt, np.zeros((2, 2), bool)) == 0.0


def test_gaussian_derivative_kernel_is_the_reference_size_and_normalised() -> None:
    g, dg = metrics.gaussian_derivative_kernels(1.4)
    # ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) * 1.4 * 0.01))) = ceil(3.62) = 4 -> 9 taps
    assert len(g) == len(dg) == 9
    assert np.allclose(g, g[::-1]) and np.allclose(dg, -dg[::-1])
    assert np.linalg.norm(np.outer(g, dg)) == pytest.approx(1.0)
    assert dg[0] > 0 > dg[-1]  # dgauss(x) = -x g(x) / sigma^2


def _naive_gradient(a: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """gaussgradient.m done literally: a 2-D kernel, replicate borders, true convolution."""
    half = 4
    x = np.arange(-half, half + 1)
    gauss = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -x * gauss / sigma**2
    hx = np.outer(gauss, dgauss)  # rows: Gaussian, columns: derivative
    hx /= math.sqrt((hx**2).sum())
    hy = hx.T
    p = np.pad(a.astype(np.float64), half, mode="edge")
    gx = np.zeros_like(a, dtype=np.float64)
    gy = np.zeros_like(a, dtype=np.float64)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            win = p[i : i + 2 * half + 1, j : j + 2 * half + 1][::-1, ::-1]
            gx[i, j] = (win * hx).sum()
            gy[i, j] = (win * hy).sum()
    return np.sqrt(gx**2 + gy**2)


def test_gradient_error_matches_the_literal_reference() -> None:
    rng = np.random.default_rng(3)
    pred = rng.random((12, 15)).astype(np.float32)
    gt = (rng.random((12, 15)) > 0.5).astype(np.float32)
    expected = ((_naive_gradient(pred) - _naive_gradient(gt)) ** 2).sum() / 1000
    assert metrics.gradient_error(pred, gt) == pytest.approx(expected, rel=1e-9)


def test_gradient_error_ignores_a_constant_offset_but_not_an_edge() -> None:
    gt = np.zeros((10, 10), np.float32)
    gt[:, 5:] = 0.8
    assert metrics.gradient_error(gt + 0.1, gt) == pytest.approx(0.0, abs=1e-12)
    assert metrics.gradient_error(np.full_like(gt, 0.4), gt) > 0.0


def test_largest_component_is_four_connected() -> None:
    m = np.array(
        [
            [1, 1, 0, 0, 1],
            [0, 1, 0, 1, 0],  # (1,3) touches (0,4) only diagonally
            [0, 0, 0, 1, 0],
            [1, 0, 0, 1, 0],
        ],
        bool,
    )
    big = metrics.largest_component(m)
    # components: {(0,0),(0,1),(1,1)}, {(0,4)}, {(1,3),(2,3),(3,3)}, {(3,0)}: a tie of 3 and 3
    assert big.sum() == 3
    assert big[0, 0] or big[1, 3]
    assert not metrics.largest_component(np.zeros((3, 3), bool)).any()
    u = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1]], bool)  # a U: one component of 7
    assert metrics.largest_component(u).sum() == 7


def test_connectivity_error_by_hand() -> None:
    gt = np.zeros((5, 7), np.float32)
    gt[1:4, 1:4] = 1.0
    assert metrics.connectivity_error(gt.copy(), gt) == 0.0
    pred = gt.copy()
    pred[2, 6] = 1.0  # an island the ground truth does not have
    # the island's level is 0 (not in the largest region even at 0.1): phi_pred = 1 - 1 = 0,
    # phi_gt = 1 - 0 = 1 -> one unit of error, / 1000
    assert metrics.connectivity_error(pred, gt) == pytest.approx(0.001)
    pred[2, 6] = 0.5  # phi_pred = 1 - 0.5
    assert metrics.connectivity_error(pred, gt) == pytest.approx(0.0005)
    pred[2, 6] = 0.1  # below the 0.15 floor: phi_pred = 1
    assert metrics.connectivity_error(pred, gt) == 0.0


def test_dilate_disk_is_euclidean() -> None:
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = metrics.dilate_disk(m, 2)
    assert d.sum() == 13  # 1 + 3 + 5 + 3 + 1
    assert d[4, 2] and d[2, 4] and not d[2, 2] and d[3, 3]


def test_edge_band_by_hand() -> None:
    gt = np.zeros((4, 10), np.float32)
    gt[:, :5] = 1.0
    band = metrics.edge_band(gt, 1)
    # contour: columns 4 and 5 (both sides of the step), widened by 1 px -> columns 3..6
    assert band.all(axis=0).tolist() == [False] * 3 + [True] * 4 + [False] * 3
    assert not band[:, [0, 1, 2, 7, 8, 9]].any()
    gt[0, 9] = 0.3  # soft pixels are always in the band
    assert metrics.edge_band(gt, 1)[0, 9]


def test_score_has_every_metric() -> None:
    gt = np.zeros((20, 20), np.float32)
    gt[5:15, 5:15] = 1.0
    s = metrics.score(gt, gt)
    assert set(s) == {"iou", "mae", "sad", "mse", "grad", "conn", "edge_mae"}
    assert s["iou"] == 1.0 and s["sad"] == 0.0 and s["edge_mae"] == 0.0
    worse = metrics.score(np.clip(gt + 0.2, 0, 1), gt)
    assert worse["mae"] == pytest.approx(0.2 * 300 / 400, rel=1e-6)
