"""Edge refinement and colour decontamination on full-resolution pixels.

The models see at most 1024² pixels, so an upsampled mask is blurry exactly where users look:
hair, fur, leaves. Both functions here work on the full-resolution image, in row bands, so their
memory is a few float32 rows plus byte masks whatever the photo's size (docs/architecture.md
§5: no float64 full-resolution copies).

``refine_mask`` — *local colour-line refinement in the uncertain band* (chosen by measurement,
docs/quality.md). The mask gives a trimap: pixels where the model is sure (>= 0.9 or <= 0.1, eroded
by a couple of pixels) stay as they are. In the rest, the local mean colours of nearby sure
foreground (F) and sure background (B) are taken, and each pixel's alpha is the position of its
colour on the segment B→F, as in sampling-based matting. That alpha replaces the model's only as far
as (a) F and B are distinguishable (``sep / (sep + 0.02)``, sep = |F − B|²) and (b) the model
itself is unsure (weight ``1 − |2m − 1|``, 1 at m = 0.5, 0 at m = 0 or 1). Weight (b) is what
keeps solid objects solid: without it, a grey bird on grey water got holes (ECSSD IoU −0.02).
Tried and measured worse or slower: guided filters (gray or colour guide, several radii and eps),
a weighted guided filter fitted on sure pixels only, the large-kernel matting Laplacian solved by
conjugate gradients (He et al. 2010; as good, 40× slower), per-pixel choice among several sample
radii. The local means are smooth at the sampling radius, so they are computed on a grid pooled by
``radius // 4`` and interpolated, which is what makes the method cheap on large photos.

``estimate_foreground`` — the multi-level foreground estimator of Germer et al. 2020 (what rembg
calls through pymatting, there compiled with numba) written with numpy: a red-black Gauss-Seidel
sweep solves each pixel's 2×2 system for F and B from its neighbours, coarse to fine. It measured
better than the blur-fusion estimator of Forte & Pitié 2021 on the synthetic test of
docs/quality.md. Above ``FG_WORK_PIXELS`` the solve runs on a reduced copy and the full-resolution
colours come from one blur-fusion style correction with the solved F and B as the local estimates.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Trimap thresholds on the model's mask: outside [LO, HI] (after erosion) the model is trusted.
HI, LO = 0.9, 0.1
SEPARATION = 0.02  # squared colour distance (0..1 units) at which F and B count half-distinct
PROJ_EPS = 1e-3
TRUST_POWER = 1.0  # model-trust weight 1 - |2m - 1| ** TRUST_POWER
BAND_ROWS = 256  # rows processed at a time at full resolution
FG_WORK_PIXELS = 1_000_000  # the foreground estimator solves on at most this many pixels


def refine_params(width: int, height: int) -> tuple[int, int]:
    """(sampling radius, trimap erosion) in pixels for an image of this size.

    Measured best at 12 and 2 px on the 800 px alphamatting photos; both scale with the image,
    because the blur of an upsampled mask scales with the image (not with the model input).
    """
    side = max(width, height)
    return max(3, round(side * 0.015)), max(1, round(side / 400))


# --- small building blocks -------------------------------------------------------------------


def dilate_square(mask: np.ndarray, k: int) -> np.ndarray:
    """Dilation of a boolean mask by a (2k+1)² square, separably (window counts by cumsum)."""
    if k <= 0:
        return mask.copy()
    out = mask
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (k + 1, k)
        c = np.cumsum(np.pad(out, pad), axis=axis, dtype=np.int32)
        if axis == 0:
            out = (c[2 * k + 1 :] - c[: -2 * k - 1]) > 0
        else:
            out = (c[:, 2 * k + 1 :] - c[:, : -2 * k - 1]) > 0
    return out


def box_sum(x: np.ndarray, r: int) -> np.ndarray:
    """Sums over (2r+1)² windows, zero outside the array; float64 accumulation, float32 out.

    Used on pooled (small) grids only, where a float64 temporary is cheap.
    """
    if r <= 0:
        return x.astype(np.float32)
    pad = ((r + 1, r), (r + 1, r)) + ((0, 0),) * (x.ndim - 2)
    c = np.cumsum(np.pad(x, pad), axis=0, dtype=np.float64)
    c = c[2 * r + 1 :] - c[: -2 * r - 1]
    c = np.cumsum(c, axis=1)
    return (c[:, 2 * r + 1 :] - c[:, : -2 * r - 1]).astype(np.float32)


def _pool_sum(x: np.ndarray, f: int) -> np.ndarray:
    """Sums over f×f blocks (the last, partial blocks included), float32."""
    if f == 1:
        return x.astype(np.float32)
    rows = np.add.reduceat(x, np.arange(0, x.shape[0], f), axis=0, dtype=np.float32)
    return np.add.reduceat(rows, np.arange(0, x.shape[1], f), axis=1, dtype=np.float32)


def _gather_bilinear(low: np.ndarray, f: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``low`` (a grid pooled by ``f``) interpolated bilinearly at full-resolution pixels."""
    hl, wl = low.shape[:2]
    sy = np.clip((ys.astype(np.float32) + 0.5) / f - 0.5, 0.0, hl - 1)
    sx = np.clip((xs.astype(np.float32) + 0.5) / f - 0.5, 0.0, wl - 1)
    y0 = sy.astype(np.intp)
    x0 = sx.astype(np.intp)
    y1 = np.minimum(y0 + 1, hl - 1)
    x1 = np.minimum(x0 + 1, wl - 1)
    ty, tx = sy - y0, sx - x0
    if low.ndim == 3:
        ty, tx = ty[:, None], tx[:, None]
    top = low[y0, x0] * (1.0 - tx) + low[y0, x1] * tx
    bottom = low[y1, x0] * (1.0 - tx) + low[y1, x1] * tx
    return top * (1.0 - ty) + bottom * ty


# --- edge refinement -------------------------------------------------------------------------


def _local_means(
    img: np.ndarray, sure: np.ndarray, f: int, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour (0..1) of the sure pixels near each cell of a grid pooled by ``f``, and
    whether there were any: within ``radius``, else within four times it."""
    h = sure.shape[0]
    count = _pool_sum(sure, f)
    colour = np.empty((*count.shape, img.shape[2]), np.float32)
    for y0 in range(0, h, BAND_ROWS * f):
        y1 = min(h, y0 + BAND_ROWS * f)
        band = img[y0:y1] * sure[y0:y1, :, None].astype(np.float32)
        colour[y0 // f : -(-y1 // f)] = _pool_sum(band, f)
    rl = max(1, round(radius / f))
    near_n, near_c = box_sum(count, rl), box_sum(colour, rl)
    far_n, far_c = box_sum(count, 4 * rl), box_sum(colour, 4 * rl)
    near = near_n > 0.5
    mean = np.where(
        near[..., None],
        near_c / np.maximum(near_n, 1e-6)[..., None],
        far_c / np.maximum(far_n, 1e-6)[..., None],
    ) * np.float32(1.0 / 255.0)
    return mean.astype(np.float32), (near | (far_n > 0.5)).astype(np.float32)


def refine_mask(
    mask: np.ndarray,
    guide: Image.Image,
    radius: int | None = None,
    erode: int | None = None,
) -> np.ndarray:
    """Colour-line refinement of a float32 mask (H, W, 0..1) with the full-resolution image.

    ``guide`` is the 8-bit ROI image the model saw before resizing (RGB or L). Pixels where the
    model is sure are returned unchanged; see the module docstring for the method and why.
    Work is proportional to the number of uncertain pixels, done in chunks: memory stays small.
    """
    h, w = mask.shape
    r_def, k_def = refine_params(w, h)
    radius = radius or r_def
    erode = k_def if erode is None else erode
    img = np.asarray(guide.convert("RGB") if guide.mode not in ("RGB", "L") else guide)
    if img.ndim == 2:
        img = img[..., None]
    m = mask.astype(np.float32, copy=False)
    fg = ~dilate_square(m < HI, erode)
    bg = ~dilate_square(m > LO, erode)
    out = m.copy()
    if not fg.any() or not bg.any():
        return out
    unknown = ~(fg | bg)
    f = max(1, radius // 4)
    f_mean, f_ok = _local_means(img, fg, f, radius)
    b_mean, b_ok = _local_means(img, bg, f, radius)
    del fg, bg
    rows = max(1, (1 << 20) // w)  # about a million pixels at a time
    for r0 in range(0, h, rows):
        ys, xs = np.nonzero(unknown[r0 : r0 + rows])
        if ys.size == 0:
            continue
        ys += r0
        fm = _gather_bilinear(f_mean, f, ys, xs)
        bm = _gather_bilinear(b_mean, f, ys, xs)
        ok = _gather_bilinear(f_ok, f, ys, xs) * _gather_bilinear(b_ok, f, ys, xs)
        colour = img[ys, xs].astype(np.float32) * np.float32(1.0 / 255.0)
        d = fm - bm
        sep = np.einsum("nc,nc->n", d, d)
        proj = np.einsum("nc,nc->n", colour - bm, d) / (sep + PROJ_EPS)
        np.clip(proj, 0.0, 1.0, out=proj)
        mv = m[ys, xs]
        trust = 1.0 - np.abs(2.0 * mv - 1.0) ** TRUST_POWER
        weight = sep / (sep + SEPARATION) * trust * ok
        out[ys, xs] = mv + weight * (proj - mv)
    np.clip(out, 0.0, 1.0, out=out)
    return out


# --- colour decontamination ------------------------------------------------------------------


def _nearest(src: np.ndarray, h: int, w: int) -> np.ndarray:
    hs, ws = src.shape[:2]
    yi = np.minimum(np.arange(h) * hs // h, hs - 1)
    xi = np.minimum(np.arange(w) * ws // w, ws - 1)
    return src[yi][:, xi]


def _ml_foreground(
    image: np.ndarray,
    alpha: np.ndarray,
    regularization: float = 1e-5,
    small_iterations: int = 10,
    big_iterations: int = 3,
    small_size: int = 32,
    gradient_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Germer et al.'s multi-level F/B estimate (float32), red-black Gauss-Seidel sweeps.

    Each pixel minimises (αF + (1−α)B − I)² plus smoothness (ε + |∇α|)·(ΔF² + ΔB²) towards its four
    neighbours: a 2×2 linear system per colour channel. Sweeping the two checkerboard colours in
    turn is exactly Gauss-Seidel (a pixel's neighbours all have the other colour) and vectorises.
    Three full-resolution sweeps instead of pymatting's two measured lower error.
    """
    h0, w0, depth = image.shape
    sure_f, sure_b = alpha > 0.9, alpha < 0.1
    f_mean = image[sure_f].mean(axis=0) if sure_f.any() else np.zeros(depth, np.float32)
    b_mean = image[sure_b].mean(axis=0) if sure_b.any() else np.zeros(depth, np.float32)
    fg = np.broadcast_to(f_mean.astype(np.float32), (1, 1, depth))
    bg = np.broadcast_to(b_mean.astype(np.float32), (1, 1, depth))
    levels = max(1, math.ceil(math.log2(max(w0, h0))))
    for level in range(levels + 1):
        w = max(1, round(w0 ** (level / levels)))
        h = max(1, round(h0 ** (level / levels)))
        img = _nearest(image, h, w)
        a = _nearest(alpha, h, w)
        fg = _nearest(fg, h, w).astype(np.float32)
        bg = _nearest(bg, h, w).astype(np.float32)
        iters = small_iterations if (w <= small_size and h <= small_size) else big_iterations
        ap = np.pad(a, 1, mode="edge")
        weights = [
            regularization + gradient_weight * np.abs(a - ap[1:-1, :-2]),
            regularization + gradient_weight * np.abs(a - ap[1:-1, 2:]),
            regularization + gradient_weight * np.abs(a - ap[:-2, 1:-1]),
            regularization + gradient_weight * np.abs(a - ap[2:, 1:-1]),
        ]
        total = weights[0] + weights[1] + weights[2] + weights[3]
        a1 = 1.0 - a
        a00, a11, a01 = a * a + total, a1 * a1 + total, a * a1
        inv = 1.0 / (a00 * a11 - a01 * a01)
        b00, b01, b11 = (inv * a11)[..., None], (-inv * a01)[..., None], (inv * a00)[..., None]
        ia, ib = a[..., None] * img, a1[..., None] * img
        wts = [x[..., None] for x in weights]
        checker = ((np.arange(h)[:, None] + np.arange(w)[None, :]) & 1).astype(bool)
        # F and B live inside edge-replicated padded buffers, refreshed in place each sweep.
        fp = np.pad(fg, ((1, 1), (1, 1), (0, 0)), mode="edge")
        bp = np.pad(bg, ((1, 1), (1, 1), (0, 0)), mode="edge")
        for _ in range(iters):
            for colour in (False, True):
                for buf in (fp, bp):
                    buf[0], buf[-1] = buf[1], buf[-2]
                    buf[:, 0], buf[:, -1] = buf[:, 1], buf[:, -2]
                sf = (
                    wts[0] * fp[1:-1, :-2]
                    + wts[1] * fp[1:-1, 2:]
                    + wts[2] * fp[:-2, 1:-1]
                    + wts[3] * fp[2:, 1:-1]
                )
                sb = (
                    wts[0] * bp[1:-1, :-2]
                    + wts[1] * bp[1:-1, 2:]
                    + wts[2] * bp[:-2, 1:-1]
                    + wts[3] * bp[2:, 1:-1]
                )
                sf += ia
                sb += ib
                sel = (checker == colour)[..., None]
                np.copyto(fp[1:-1, 1:-1], np.clip(b00 * sf + b01 * sb, 0.0, 1.0), where=sel)
                np.copyto(bp[1:-1, 1:-1], np.clip(b01 * sf + b11 * sb, 0.0, 1.0), where=sel)
        fg, bg = fp[1:-1, 1:-1], bp[1:-1, 1:-1]
    return fg, bg


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours for a cutout: float32 (H, W, 3) in 0..1 from the image and alpha.

    ``image`` is float32 (H, W, 3) in 0..1 and ``alpha`` float32 (H, W). Pixels whose alpha is 0
    or 1 (to 8 bits) keep their colour exactly: only semi-transparent pixels carry a mix to undo.
    """
    h, w = alpha.shape
    # Alpha within half an 8-bit step of 0 or 1 is solid in any 8-bit output: no mix to undo.
    soft = (alpha > 0.5 / 255) & (alpha < 1.0 - 0.5 / 255)
    out = image.astype(np.float32, copy=True)
    if not soft.any():
        return out
    # Work on the rows/columns that hold soft pixels, with a margin for the neighbour terms.
    rows = np.nonzero(soft.any(axis=1))[0]
    cols = np.nonzero(soft.any(axis=0))[0]
    margin = 16
    y0, y1 = max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin)
    x0, x1 = max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin)
    img = out[y0:y1, x0:x1]
    a = alpha[y0:y1, x0:x1].astype(np.float32)
    ch, cw = a.shape
    depth = img.shape[2]
    scale = min(1.0, math.sqrt(FG_WORK_PIXELS / (ch * cw)))
    sw, sh = max(1, round(cw * scale)), max(1, round(ch * scale))
    if (sw, sh) == (cw, ch):
        f_small, b_small = _ml_foreground(img, a)
    else:
        small_img = np.stack([_resize(img[..., c], sw, sh) for c in range(img.shape[2])], axis=2)
        f_small, b_small = _ml_foreground(small_img, _resize(a, sw, sh))
    f_planes = [Image.fromarray(np.ascontiguousarray(f_small[..., c]), "F") for c in range(depth)]
    b_planes = [Image.fromarray(np.ascontiguousarray(b_small[..., c]), "F") for c in range(depth)]
    for by in range(0, ch, BAND_ROWS):
        by1 = min(ch, by + BAND_ROWS)
        fb = _band_resize(f_planes, cw, ch, by, by1)
        bb = _band_resize(b_planes, cw, ch, by, by1)
        ab = a[by:by1, :, None]
        # Blur-fusion's final step (Forte & Pitié 2021) with the solved F and B as the local
        # estimates: puts the pixel's own detail back, at full resolution.
        # ``img`` is a view of ``out``: each band reads its own rows before they are written.
        fg = np.clip(fb + ab * (img[by:by1] - ab * fb - (1.0 - ab) * bb), 0.0, 1.0)
        np.copyto(img[by:by1], fg, where=soft[y0 + by : y0 + by1, x0:x1, None])
    return out


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), "F").resize(
            (w, h), Image.Resampling.BOX
        ),
        dtype=np.float32,
    )


def _band_resize(planes: list[Image.Image], w: int, h: int, y0: int, y1: int) -> np.ndarray:
    """Rows y0..y1 of the small planes resized bilinearly to (w, h), stacked as (rows, w, C)."""
    sw, sh = planes[0].size
    box = (0.0, y0 * sh / h, float(sw), y1 * sh / h)
    return np.stack(
        [
            np.asarray(p.resize((w, y1 - y0), Image.Resampling.BILINEAR, box=box), np.float32)
            for p in planes
        ],
        axis=2,
    )
