"""``offcut eval``: score Offcut's masks (and optionally rembg's) against a data set.

A data set is a folder with ``images/`` and ``gt/`` whose files share stems (``0001.jpg`` and
``0001.png``). Each image runs through the same :class:`~offcut.engine.engine.Engine` pipeline the
sidecar runs, with 8-bit mask output as the plug-ins receive it, so the numbers describe what a
user gets, not an idealised float mask. Metrics are in :mod:`offcut.quality.metrics`.

``--compare-rembg`` runs rembg's own pipeline (``rembg.remove(..., only_mask=True)``) on *the
same model file*: rembg is pointed at a temporary folder of symbolic links to Offcut's verified
files (``U2NET_HOME``), so any difference comes from the pipelines, not from the weights.

``--decontaminate`` adds a colour test, because the data sets have ground-truth alpha but no
ground-truth foreground colours. It builds a composite whose foreground is known: the image
itself is taken as the foreground F, composited with the ground-truth alpha onto another image
of the set (B1). Then, on pixels with 0 < alpha < 1:

- ``fg_err``: the foreground estimated *with the ground-truth alpha* against F, weighted by alpha
  (the colour error a viewer sees after re-compositing), in 8-bit levels; ``fg_err_naive`` is the
  same for the plain cutout, whose colours are the composite's own (F mixed with B1).
- ``comp_err`` / ``comp_err_naive``: the whole pipeline (its own alpha, its own colours)
  re-composited onto mid grey against the true composite F over grey, in 8-bit levels, inside the
  edge band.

``--upscale N`` enlarges each image (bicubic) and its ground truth (bilinear) N times in memory,
to test photos far larger than the model's input; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from offcut.engine import formats
from offcut.engine.engine import Engine, SegmentRequest
from offcut.engine.refine import estimate_foreground
from offcut.models.catalog import load_catalog
from offcut.models.store import ModelStore
from offcut.quality import metrics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
METRICS = ("iou", "mae", "sad", "mse", "grad", "conn", "edge_mae")
COLOUR_METRICS = ("fg_err_naive", "fg_err", "comp_err_naive", "comp_err")
# Offcut model names whose file rembg knows under another name (same bytes, same pipeline).
REMBG_NAMES = {"isnet-general-use-fp16": "isnet-general-use"}
GREY = 0.5  # the new background of the re-composite test


@dataclass
class Sample:
    stem: str
    image: Path
    gt: Path


@dataclass
class Pipeline:
    """One way of producing a mask (and, for the colour test, a cutout) from an RGB image."""

    name: str
    mask: Callable[[Image.Image], np.ndarray]
    cutout: Callable[[Image.Image], tuple[np.ndarray, np.ndarray]] | None = None
    foreground: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    seconds: list[float] = field(default_factory=list)


def find_samples(dataset: Path) -> list[Sample]:
    """Pairs of image and ground truth with the same stem, sorted by stem."""
    images, gts = dataset / "images", dataset / "gt"
    if not images.is_dir() or not gts.is_dir():
        raise FileNotFoundError(f"{dataset} needs images/ and gt/ folders")
    by_stem = {p.stem: p for p in gts.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    out = [
        Sample(p.stem, p, by_stem[p.stem])
        for p in sorted(images.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in by_stem
    ]
    if not out:
        raise FileNotFoundError(f"{dataset}: no image in images/ has a ground truth in gt/")
    return out


def load_image(path: Path, upscale: int = 1) -> Image.Image:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if upscale > 1:
        rgb = rgb.resize((rgb.width * upscale, rgb.height * upscale), Image.Resampling.BICUBIC)
    return rgb


def load_gt(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Ground truth as float32 0..1 (first channel; the matting set stores gray as RGB)."""
    with Image.open(path) as im:
        g = im.getchannel(0) if im.mode in ("RGB", "RGBA") else im.convert("L")
    if g.size != size:
        g = g.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(g, dtype=np.float32) / 255.0


# --- pipelines -----------------------------------------------------------------------------------


def offcut_pipeline(engine: Engine, model: str | None, refine: bool) -> Pipeline:
    def request(image: Image.Image, cutout: bool) -> SegmentRequest:
        return SegmentRequest(
            pixels=image.tobytes(),
            width=image.width,
            height=image.height,
            fmt=formats.FORMATS["RGB8"],
            model=model,
            refine=refine,
            decontaminate=cutout,
            cutout=cutout,
        )

    def mask(image: Image.Image) -> np.ndarray:
        res = engine.segment(request(image, cutout=False))
        m = np.frombuffer(res.mask, dtype=np.uint8).reshape(image.height, image.width)
        return m.astype(np.float32) / 255.0

    def cutout(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        res = engine.segment(request(image, cutout=True))
        assert res.cutout is not None
        rgba = np.frombuffer(res.cutout, dtype=np.uint8).reshape(image.height, image.width, 4)
        return rgba[..., :3].astype(np.float32) / 255.0, rgba[..., 3].astype(np.float32) / 255.0

    label = "offcut" + (" +refine" if refine else "")
    return Pipeline(label, mask, cutout, estimate_foreground)


@contextlib.contextmanager
def rembg_home(model_file: Path, rembg_name: str) -> Iterator[Path]:
    """A temporary ``U2NET_HOME`` where rembg finds Offcut's own model file under its name."""
    old = os.environ.get("U2NET_HOME")
    with tempfile.TemporaryDirectory(prefix="offcut-rembg-") as tmp:
        os.symlink(model_file.resolve(), Path(tmp) / f"{rembg_name}.onnx")
        os.environ["U2NET_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("U2NET_HOME", None)
            else:
                os.environ["U2NET_HOME"] = old


def rembg_pipelines(
    engine: Engine, model: str | None, alpha_matting: bool
) -> tuple[list[Pipeline], str]:
    """rembg's pipeline (and optionally its alpha matting) on Offcut's model file."""
    import rembg  # optional: only for the comparison
    import rembg.bg

    spec = engine.catalog.resolve(model or engine.catalog.default, engine.store.is_installed)
    path, _ = engine.store.open_verified(spec)
    name = REMBG_NAMES.get(spec.name, spec.name)
    with rembg_home(path, name) as home:
        session = rembg.new_session(name, providers=list(engine.providers))
        used = type(session).download_models()
        if Path(used).resolve() != path.resolve():
            raise RuntimeError(f"rembg loaded {used}, not {path} under {home}")
    version = getattr(rembg, "__version__", "?")

    def mask(image: Image.Image) -> np.ndarray:
        m = rembg.remove(image, session=session, only_mask=True)
        return np.asarray(m, dtype=np.float32) / 255.0

    def cutout(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        rgba = np.asarray(rembg.remove(image, session=session, decontaminate=True))
        return rgba[..., :3].astype(np.float32) / 255.0, rgba[..., 3].astype(np.float32) / 255.0

    def foreground(img: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return rembg.bg.estimate_foreground_ml(img.astype(np.float64), alpha.astype(np.float64))

    out = [Pipeline(f"rembg {version}", mask, cutout, foreground)]
    if alpha_matting:

        def matted(image: Image.Image) -> np.ndarray:
            rgba = np.asarray(rembg.remove(image, session=session, alpha_matting=True))
            return rgba[..., 3].astype(np.float32) / 255.0

        out.append(Pipeline(f"rembg {version} alpha_matting", matted))
    return out, version


# --- scoring -------------------------------------------------------------------------------------


def timed(p: Pipeline, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    out = fn()
    p.seconds.append(time.perf_counter() - t)
    return out


def colour_scores(
    p: Pipeline, image: Image.Image, gt: np.ndarray, b1: Image.Image, band: np.ndarray
) -> dict[str, float]:
    """The decontamination test described in the module docstring, for one pipeline."""
    f = np.asarray(image, dtype=np.float32) / 255.0
    bg = np.asarray(b1.resize(image.size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    a = gt[..., None]
    comp = f * a + bg * (1.0 - a)
    comp_u8 = np.clip(comp * 255.0 + 0.5, 0, 255).astype(np.uint8)
    comp8 = comp_u8.astype(np.float32) / 255.0
    soft = (gt > 0.0) & (gt < 1.0)
    out: dict[str, float] = {}

    def fg_err(est: np.ndarray) -> float:
        if not soft.any():
            return 0.0
        return float((a * np.abs(est - f)).mean(axis=2)[soft].mean() * 255.0)

    out["fg_err_naive"] = fg_err(comp8)
    if p.foreground is not None:
        out["fg_err"] = fg_err(np.clip(p.foreground(comp8, gt), 0.0, 1.0))
    if p.cutout is not None:
        colour, alpha = p.cutout(Image.fromarray(comp_u8, "RGB"))
        truth = f * a + GREY * (1.0 - a)
        al = alpha[..., None]

        def comp_err(col: np.ndarray) -> float:
            shown = col * al + GREY * (1.0 - al)
            return float(np.abs(shown - truth).mean(axis=2)[band].mean() * 255.0)

        out["comp_err_naive"] = comp_err(comp8)
        out["comp_err"] = comp_err(colour)
    return out


def evaluate(
    dataset: Path,
    pipelines: list[Pipeline],
    limit: int | None = None,
    band: int | None = None,
    upscale: int = 1,
    colour: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per-image and mean metrics of each pipeline on the data set."""
    samples = find_samples(dataset)
    if limit:
        samples = samples[:limit]
    k = band if band is not None else metrics.DEFAULT_BAND * upscale
    per_image: list[dict[str, Any]] = []
    for n, s in enumerate(samples):
        image = load_image(s.image, upscale)
        gt = load_gt(s.gt, image.size)
        region = metrics.edge_band(gt, k)
        row: dict[str, Any] = {"stem": s.stem, "width": image.width, "height": image.height}
        for p in pipelines:
            pred = timed(p, lambda p=p, image=image: p.mask(image))
            row[p.name] = metrics.score(pred, gt, k)
            if colour:
                b1 = load_image(samples[(n + 1) % len(samples)].image)
                row[p.name] |= colour_scores(p, image, gt, b1, region)
        per_image.append(row)
        if log:
            log(f"{n + 1}/{len(samples)} {s.stem}")
    mean: dict[str, dict[str, float]] = {}
    for p in pipelines:
        keys = [key for key in (*METRICS, *COLOUR_METRICS) if key in per_image[0][p.name]]
        mean[p.name] = {key: float(np.mean([r[p.name][key] for r in per_image])) for key in keys}
        mean[p.name]["seconds"] = float(np.mean(p.seconds)) if p.seconds else 0.0
    return {
        "dataset": str(dataset),
        "images": len(per_image),
        "band_px": k,
        "upscale": upscale,
        "pipelines": [p.name for p in pipelines],
        "mean": mean,
        "per_image": per_image,
    }


# --- output --------------------------------------------------------------------------------------

_HEAD = {
    "iou": "IoU ↑",
    "mae": "MAE ↓",
    "sad": "SAD ↓",
    "mse": "MSE ↓",
    "grad": "Grad ↓",
    "conn": "Conn ↓",
    "edge_mae": "edge MAE ↓",
    "fg_err_naive": "fg err naive",
    "fg_err": "fg err ↓",
    "comp_err_naive": "recomp err naive",
    "comp_err": "recomp err ↓",
    "seconds": "s/image",
}


def _fmt(key: str, v: float) -> str:
    if key in ("mse",):
        return f"{v:.5f}"
    if key in ("sad", "grad", "conn", "fg_err_naive", "fg_err", "comp_err_naive", "comp_err"):
        return f"{v:.2f}"
    if key == "seconds":
        return f"{v:.2f}"
    return f"{v:.4f}"


def mean_table(report: dict[str, Any], label: str = "pipeline") -> str:
    names = report["pipelines"]
    keys = [k for k in (*METRICS, *COLOUR_METRICS, "seconds") if k in report["mean"][names[0]]]
    lines = [
        f"| {label} | " + " | ".join(_HEAD[k] for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name in names:
        m = report["mean"][name]
        lines.append(f"| {name} | " + " | ".join(_fmt(k, m[k]) for k in keys) + " |")
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    names = report["pipelines"]
    out = [
        f"**{Path(report['dataset']).name}**, {report['images']} images, model "
        f"`{report.get('model', '?')}`"
        + (f", upscaled ×{report['upscale']}" if report["upscale"] > 1 else "")
        + f"; edge band {report['band_px']} px; means:",
        "",
        mean_table(report),
        "",
        "<details><summary>per image (SAD / edge MAE)</summary>",
        "",
        "| image | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for row in report["per_image"]:
        cells = [f"{row[n]['sad']:.2f} / {row[n]['edge_mae']:.4f}" for n in names]
        out.append(f"| {row['stem']} | " + " | ".join(cells) + " |")
    out += ["", "</details>", ""]
    return "\n".join(out)


def share_inference(engine: Engine) -> None:
    """Let pipelines that differ only after inference run the model once per image.

    Offcut's plain and refined pipelines feed the model the same tensor; remembering the last
    few outputs by the tensor's bytes changes no result and halves a comparison's run time
    (IS-Net takes seconds per image on a CPU).
    """
    import hashlib

    run = engine._run
    memo: dict[tuple[str, bytes], np.ndarray] = {}

    def cached(model: Any, tensor: np.ndarray, cancel: Any) -> np.ndarray:
        key = (model.spec.name, hashlib.sha256(tensor.tobytes()).digest())
        if key not in memo:
            if len(memo) >= 8:
                memo.pop(next(iter(memo)))
            memo[key] = run(model, tensor, cancel)
        return memo[key]

    engine._run = cached  # type: ignore[method-assign]


def main(args: argparse.Namespace) -> int:
    try:
        find_samples(args.dataset)
    except FileNotFoundError as exc:
        print(f"offcut eval: {exc}.", file=sys.stderr)
        return 2
    engine = Engine(load_catalog(), ModelStore(), threads=getattr(args, "threads", None))
    share_inference(engine)
    loaded = engine.load(args.model)
    pipelines = []
    if getattr(args, "with_plain", False) and args.refine:
        pipelines.append(offcut_pipeline(engine, args.model, False))
    pipelines.append(offcut_pipeline(engine, args.model, args.refine))
    version = None
    if args.compare_rembg:
        try:
            extra, version = rembg_pipelines(
                engine, args.model, bool(getattr(args, "rembg_alpha_matting", False))
            )
        except ImportError:
            print("offcut eval: --compare-rembg needs rembg installed.", file=sys.stderr)
            return 2
        pipelines += extra
    quiet = getattr(args, "quiet", False) or not sys.stderr.isatty()
    report = evaluate(
        args.dataset,
        pipelines,
        limit=args.limit,
        band=getattr(args, "band", None),
        upscale=getattr(args, "upscale", 1) or 1,
        colour=args.decontaminate,
        log=None if quiet else lambda s: print(f"\r{s}   ", end="", file=sys.stderr),
    )
    if not quiet:
        print(file=sys.stderr)
    report |= {
        "model": loaded.spec.name,
        "sha256": loaded.sha256,
        "provider": loaded.provider,
        "options": {"refine": args.refine, "decontaminate": args.decontaminate},
        "rembg_version": version,
    }
    md = to_markdown(report)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if args.markdown:
        args.markdown.write_text(md)
    return 0
