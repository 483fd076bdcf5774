"""Edge quality, Offcut against rembg on the same model file: the tables in docs/quality.md.

    OFFCUT_MODELS_DIR=/var/cache/offcut/models PYTHONPATH=sidecar \\
        .venv/bin/python bench/quality.py [--models u2netp,isnet-general-use-fp16] \\
        [--parts masks,colour,upscale] [--sets ecssd200,alphamatting27] [--limit N] [--out DIR]

Parts:
- ``masks``: each data set; Offcut plain (the default path), Offcut ``refine``, rembg 2.0.86's
  ``remove(only_mask=True)``, and on alphamatting27 also rembg's ``alpha_matting=True``. -
  ``colour``: alphamatting27, the decontamination test of ``offcut.quality.evaluate`` (known
  foreground composited onto another photo), Offcut ``decontaminate`` (plain and refined alpha)
  against rembg's ``decontaminate=True`` (pymatting's multi-level estimator).
- ``upscale``: alphamatting27 enlarged ×4 in memory (2.5–3.2k px photos); Offcut plain and
  refine (whose radius and trimap erosion scale with the photo).
- ``tiles``: the high-resolution mode that was tried and not shipped: the model run again on an
  overlapping crop grid (tiles of ~5 model inputs, 25 % overlap, raw sigmoid output), fused into
  the whole-image mask where that one is unsure, with and without refine; same ×4 photos.

``--timing WHEEL`` times plain / refine / refine+decontaminate on scikit-image's ``chelsea``
photo read from a scikit-image wheel you downloaded (``pip download scikit-image --no-deps -d
/tmp/whl``), enlarged in memory to 0.1, 2.2 and 12.2 MP, with the peak of traced (numpy) memory.

``--figures`` writes the before/after crops of docs/img/quality-*.png (from alphamatting GT04,
u2netp) and exits.

Data are read from ../shared/eval and never copied; per-part JSON and a Markdown summary go to
``--out`` (default /tmp/offcut-quality), outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "sidecar") not in sys.path:
    sys.path.insert(0, str(REPO / "sidecar"))

from offcut import evaluate  # noqa: E402
from offcut.engine.engine import Engine  # noqa: E402
from offcut.models.catalog import load_catalog  # noqa: E402
from offcut.models.store import ModelStore  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"


def tile_pipelines(engine: Engine, model: str) -> list[evaluate.Pipeline]:
    """The crop-grid experiment (see the module docstring); engine internals, eval only."""
    import math

    import numpy as np
    from PIL import Image

    from offcut.engine.engine import CancelToken, activate, preprocess, upsample_float
    from offcut.engine.refine import refine_mask

    loaded = engine.load(model)
    size = loaded.spec.input_size

    def infer(im: Image.Image) -> np.ndarray:
        raw = engine._run(loaded, preprocess(im, loaded.spec), CancelToken())
        return raw.reshape(raw.shape[-2], raw.shape[-1]).astype(np.float32)

    def fused(image: Image.Image, refine: bool) -> np.ndarray:
        w, h = image.size
        whole = upsample_float(activate(infer(image), loaded.spec), (w, h))
        n = max(1, math.ceil(max(w, h) / (size * 5)))
        t = math.ceil(max(w, h) / n * 1.25)
        acc = np.zeros((h, w), np.float32)
        wsum = np.zeros((h, w), np.float32)
        xs = np.linspace(0, max(0, w - t), max(1, math.ceil(max(0, w - t) / (0.75 * t)) + 1))
        ys = np.linspace(0, max(0, h - t), max(1, math.ceil(max(0, h - t) / (0.75 * t)) + 1))
        for y in ys.round().astype(int):
            for x in xs.round().astype(int):
                tw, th = min(t, w - x), min(t, h - y)
                p = np.clip(infer(image.crop((x, y, x + tw, y + th))), 0.0, 1.0)
                pm = upsample_float(p, (tw, th))
                ramp_y = np.minimum(np.arange(th) + 1, np.arange(th)[::-1] + 1)
                ramp_x = np.minimum(np.arange(tw) + 1, np.arange(tw)[::-1] + 1)
                wt = np.minimum.outer(np.minimum(ramp_y, t / 8), np.minimum(ramp_x, t / 8))
                acc[y : y + th, x : x + tw] += wt * pm
                wsum[y : y + th, x : x + tw] += wt
        tiles = acc / wsum
        out = whole + (1.0 - np.abs(2.0 * whole - 1.0)) * (tiles - whole)
        if refine:
            out = refine_mask(out, image)
        return np.floor(np.clip(out, 0.0, 1.0) * 255.0 + 0.5) / 255.0

    return [
        evaluate.Pipeline("offcut tiles", lambda im: fused(im, False)),
        evaluate.Pipeline("offcut tiles +refine", lambda im: fused(im, True)),
    ]


def figures(engine: Engine, out_dir: Path, stem: str = "GT04") -> list[Path]:
    """Before/after crops for the docs: masks (plain, refined, truth) and cutouts on a new
    background (plain colours vs decontaminated), from one alphamatting photo."""
    import numpy as np
    from PIL import Image

    from offcut.engine import formats
    from offcut.engine.engine import SegmentRequest

    image = evaluate.load_image(EVAL / "alphamatting27" / "images" / f"{stem}.png")
    gt = evaluate.load_gt(EVAL / "alphamatting27" / "gt" / f"{stem}.png", image.size)
    box = (130, 20, 370, 260)

    def seg(refine: bool, cutout: bool) -> tuple[np.ndarray, np.ndarray | None]:
        res = engine.segment(
            SegmentRequest(
                pixels=image.tobytes(),
                width=image.width,
                height=image.height,
                fmt=formats.FORMATS["RGB8"],
                model="u2netp",
                refine=refine,
                decontaminate=cutout,
                cutout=cutout,
            )
        )
        mask = np.frombuffer(res.mask, np.uint8).reshape(image.height, image.width)
        cut = None
        if res.cutout is not None:
            cut = np.frombuffer(res.cutout, np.uint8).reshape(image.height, image.width, 4)
        return mask, cut

    plain, _ = seg(False, False)
    refined, cut = seg(True, True)
    assert cut is not None

    def crop(a: np.ndarray) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(a)).crop(box)

    def strip(tiles: list[Image.Image]) -> Image.Image:
        w, h = tiles[0].size
        out = Image.new("RGB", (w * len(tiles) + 4 * (len(tiles) - 1), h), "white")
        for i, t in enumerate(tiles):
            out.paste(t.convert("RGB"), (i * (w + 4), 0))
        return out

    gt8 = (gt * 255 + 0.5).astype(np.uint8)
    paths = [out_dir / "quality-refine.png", out_dir / "quality-decontaminate.png"]
    masks = strip([image.crop(box), crop(plain), crop(refined), crop(gt8)])
    masks.quantize(256).save(paths[0], optimize=True)  # < 200 KB for the repository
    rgb = np.asarray(image, np.float32)
    new_bg = np.array([40, 20, 70], np.float32)  # a dark purple the old background never had
    a = refined.astype(np.float32)[..., None] / 255
    naive = rgb * a + new_bg * (1 - a)
    clean = cut[..., :3].astype(np.float32) * a + new_bg * (1 - a)
    tiles = [crop((x + 0.5).astype(np.uint8)) for x in (naive, clean)]
    strip(tiles).save(paths[1], optimize=True)
    return paths


def timing(engine: Engine, wheel: Path, model: str = "u2netp") -> str:
    """Seconds per stage and peak traced memory on one real photo at three sizes."""
    import io
    import tracemalloc
    import zipfile

    from PIL import Image

    from offcut.engine import formats
    from offcut.engine.engine import SegmentRequest

    with zipfile.ZipFile(wheel) as z:
        cat = Image.open(io.BytesIO(z.read("skimage/data/chelsea.png"))).convert("RGB")
    engine.load(model)
    rows = [
        "| photo | options | total s | refine s | decontaminate s | peak MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scale in (1, 4, 9.5):
        im = cat.resize(
            (round(cat.width * scale), round(cat.height * scale)), Image.Resampling.BICUBIC
        )
        px = im.tobytes()
        for refine, dec in ((False, False), (True, False), (True, True)):
            req = SegmentRequest(
                pixels=px,
                width=im.width,
                height=im.height,
                fmt=formats.FORMATS["RGB8"],
                model=model,
                refine=refine,
                decontaminate=dec,
                cutout=dec,
            )
            tracemalloc.start()
            t = time.perf_counter()
            res = engine.segment(req)
            total = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            opts = "+".join(n for n, on in (("refine", refine), ("decontaminate", dec)) if on)
            rows.append(
                f"| {im.width}×{im.height} ({im.width * im.height / 1e6:.1f} MP) | "
                f"{opts or 'plain'} | {total:.2f} | {res.timings.get('refine', 0):.2f} | "
                f"{res.timings.get('decontaminate', 0):.2f} | {peak:.0f} |"
            )
    return "\n".join(rows)


def run_part(
    engine: Engine, model: str, part: str, dataset: str, limit: int | None
) -> dict[str, Any]:
    plain = evaluate.offcut_pipeline(engine, model, refine=False)
    refined = evaluate.offcut_pipeline(engine, model, refine=True)
    if part == "masks":
        rembg, version = evaluate.rembg_pipelines(
            engine, model, alpha_matting=dataset == "alphamatting27"
        )
        pipes, kw = [plain, refined, *rembg], {}
    elif part == "colour":
        rembg, version = evaluate.rembg_pipelines(engine, model, alpha_matting=False)
        pipes, kw = [plain, refined, *rembg], {"colour": True}
    elif part == "upscale":
        pipes, kw, version = [plain, refined], {"upscale": 4}, None
    else:
        pipes = [plain, refined, *tile_pipelines(engine, model)]
        kw, version = {"upscale": 4}, None
    t = time.perf_counter()
    report = evaluate.evaluate(EVAL / dataset, pipes, limit=limit, **kw)
    report |= {
        "model": model,
        "part": part,
        "rembg_version": version,
        "wall_seconds": time.perf_counter() - t,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="u2netp,isnet-general-use-fp16")
    p.add_argument("--parts", default="masks,colour,upscale,tiles")
    p.add_argument("--sets", default="ecssd200,alphamatting27", help="data sets for 'masks'")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/offcut-quality"))
    p.add_argument("--figures", action="store_true", help="write docs/img/quality-*.png only")
    p.add_argument("--timing", type=Path, default=None, metavar="WHEEL", help="time big photos")
    args = p.parse_args(argv)
    engine = Engine(load_catalog(), ModelStore())
    if args.timing:
        print(timing(engine, args.timing))
        return 0
    if args.figures:
        for path in figures(engine, REPO / "docs" / "img"):
            print(path, path.stat().st_size, "bytes")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    evaluate.share_inference(engine)
    summary: list[str] = []
    for model in args.models.split(","):
        engine.load(model)
        for part in args.parts.split(","):
            sets = args.sets.split(",") if part == "masks" else ["alphamatting27"]
            for dataset in sets:
                report = run_part(engine, model, part, dataset, args.limit)
                name = f"{part}-{model}-{dataset}"
                (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
                md = f"### {part}: {model} on {dataset}\n\n" + evaluate.to_markdown(report)
                (args.out / f"{name}.md").write_text(md)
                summary.append(md)
                print(md, flush=True)
    (args.out / "summary.md").write_text("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
