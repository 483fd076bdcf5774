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

``--frontier`` measures the speed/quality frontier of docs/quality.md: every IS-Net variant
this machine can run (the fp16 file, the catalog's derived model, and float32 copies at other
input sizes, derived in memory by the same recipe into a scratch folder) and u2netp, each row
its raw ONNX Runtime time (one fixed tensor, all contenders interleaved in one run, medians,
ratio to the fp16 file), IoU on ecssd200 and SAD on alphamatting27 (the default pipeline).
``--frontier-sizes`` picks the extra float32 input sizes (default 1024,640); ``--timing-only``
skips the quality columns (they take most of an hour on two busy cores). ``--int8-wheel WHEEL``
adds the static int8 (QDQ) experiment, calibrated on photos from that scikit-image wheel
(``bench/int8.py``; not shipped, docs/decisions.md §10).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "sidecar") not in sys.path:
    sys.path.insert(0, str(REPO / "sidecar"))

from offcut.engine.engine import Engine  # noqa: E402
from offcut.models.catalog import load_catalog  # noqa: E402
from offcut.models.store import ModelStore  # noqa: E402
from offcut.quality import evaluate  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"
INT8 = "isnet-int8-qdq"  # the --int8-wheel experiment's row (bench/int8.py)


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


def frontier_engine(
    sizes: list[int], scratch: Path, int8_wheel: Path | None = None
) -> tuple[Engine, list[str]]:
    """An engine whose catalog also holds float32 IS-Net variants at ``sizes``, derived here.

    They are made by the shipped recipe (``offcut.models.derive``) from the verified fp16
    file into ``scratch`` and trusted by the sha256 just computed: experiment rows, not
    catalog models. With ``int8_wheel`` (a scikit-image wheel, the calibration photos) it also
    holds the static int8 experiment of ``bench/int8.py``, quantized from the 1024² copy.
    """
    import dataclasses
    import hashlib

    from offcut.models.catalog import Catalog, Derivation
    from offcut.models.derive import derive_bytes

    cat, real = load_catalog(), ModelStore()
    source = cat.get("isnet-general-use-fp16")
    for spec in cat:
        if real.is_installed(spec) and not (scratch / spec.file).exists():
            (scratch / spec.file).symlink_to(real.path(spec))
    extra = []
    for size in sizes:
        name = f"isnet-fp32-{size}"
        if any(spec.derived is not None and spec.input_size == size for spec in cat):
            continue  # the catalog's own derived model is measured under its own name
        spec = dataclasses.replace(
            source, name=name, file=f"{name}.onnx", input_size=size, sources=(),
            derived=Derivation(source.name, "float32"),
        )  # fmt: skip
        data = derive_bytes(real.path(source), spec, source)
        (scratch / spec.file).write_bytes(data)
        extra.append(
            dataclasses.replace(
                spec, size=len(data), sha256=hashlib.sha256(data).hexdigest(), sha256_verified=True
            )
        )
    if int8_wheel is not None:
        sys.path.insert(0, str(REPO / "bench"))
        import int8

        fp32 = scratch / "isnet-int8-source.onnx"
        fp32.write_bytes(derive_bytes(real.path(source), cat.get("isnet-general-use-fp32"), source))
        int8.quantize(fp32, int8_wheel, scratch / f"{INT8}.onnx")
        fp32.unlink()
        data = (scratch / f"{INT8}.onnx").read_bytes()
        extra.append(
            dataclasses.replace(
                source, name=INT8, file=f"{INT8}.onnx", sources=(), size=len(data),
                sha256=hashlib.sha256(data).hexdigest(), sha256_verified=True,
                derived=Derivation(source.name, "float32"),  # only marks it as an IS-Net variant
            )
        )  # fmt: skip
    full = Catalog(
        models=(*cat.models, *extra), default=cat.default, families=cat.families,
        aliases=cat.aliases,
    )  # fmt: skip
    store = ModelStore(scratch)
    names = ["u2netp", "isnet-general-use-fp16"]
    names += [s.name for s in full if s.family == "isnet" and s.derived is not None]
    return Engine(full, store, max_loaded=len(names)), [
        n for n in names if store.is_installed(full.get(n))
    ]


def cpu_rounds(
    engine: Engine, names: list[str], tensors: dict[str, Any], repeats: int
) -> dict[str, list[float]]:
    """CPU seconds per inference of single-threaded sessions, interleaved rounds.

    CPU time is the work one inference costs, which other processes on a shared machine disturb
    far less than wall time (docs/quality.md: wall-time ratios swung 1.1–2.4× under load).
    """
    from offcut.engine.engine import CancelToken

    sys.path.insert(0, str(REPO / "bench"))
    from common import round_robin

    single = Engine(engine.catalog, engine.store, max_loaded=len(names), threads=1)
    loaded = {n: single.load(n) for n in names}
    out: dict[str, list[float]] = {n: [] for n in names}

    def cpu(n: str) -> Callable[[], None]:
        def run() -> None:
            t = time.process_time()
            single._run(loaded[n], tensors[n], CancelToken())
            out[n].append(time.process_time() - t)

        return run

    round_robin({n: cpu(n) for n in names}, repeats)
    return {n: v[-repeats:] for n, v in out.items()}  # without the warm-up


def frontier(
    sizes: list[int],
    limit: int | None,
    repeats: int,
    out: Path,
    quality: bool = True,
    int8_wheel: Path | None = None,
) -> str:
    """The speed/quality frontier table (see the module docstring)."""
    import tempfile

    import numpy as np

    from offcut.engine.engine import CancelToken

    sys.path.insert(0, str(REPO / "bench"))
    from common import loadavg, median, round_robin

    with tempfile.TemporaryDirectory(prefix="offcut-frontier-") as tmp:
        engine, names = frontier_engine(sizes, Path(tmp), int8_wheel)
        loaded = {n: engine.load(n) for n in names}
        rng = np.random.default_rng(0)
        tensors = {
            n: rng.standard_normal((1, 3, m.spec.input_size, m.spec.input_size), np.float32) * 0.3
            for n, m in loaded.items()
        }
        load_before = loadavg()
        times = round_robin(
            {n: (lambda n=n: engine._run(loaded[n], tensors[n], CancelToken())) for n in names},
            repeats,
        )
        load_after = loadavg()
        cpu_times = cpu_rounds(engine, names, tensors, repeats)
        evaluate.share_inference(engine)
        scores: dict[str, dict[str, float]] = {n: {"iou": 0.0, "sad": 1.0} for n in names}
        for n in names if quality else []:
            for dataset, metric in (("ecssd200", "iou"), ("alphamatting27", "sad")):
                pipe = evaluate.offcut_pipeline(engine, n, refine=False)
                report = evaluate.evaluate(EVAL / dataset, [pipe], limit=limit)
                scores[n][metric] = report["mean"]["offcut"][metric]
                print(n, dataset, metric, scores[n][metric], flush=True)
    base = median(times["isnet-general-use-fp16"])
    base_cpu = median(cpu_times["isnet-general-use-fp16"])
    ref = scores["isnet-general-use-fp16"]
    rows = [
        f"Raw inference, {repeats} interleaved rounds, medians; load average {load_before} → "
        f"{load_after}. Quality: default pipeline (8-bit mask), "
        f"{'all' if limit is None else f'first {limit}'} images.",
        "",
        "| model | input | weights | CPU s, 1 thread | speed vs fp16 (CPU) | raw wall s | "
        "speed vs fp16 (wall) | ecssd200 IoU ↑ | Δ IoU | alphamatting27 SAD ↓ | Δ SAD |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        spec = loaded[n].spec
        recipe = spec.derived.recipe if spec.derived is not None else None
        weights = {"isnet-general-use-fp16": "float16", INT8: "int8 QDQ (ONNX Runtime)"}.get(
            n, "int8 QDQ" if recipe == "int8" else "float32"
        )
        t, c, sc = median(times[n]), median(cpu_times[n]), scores[n]
        rows.append(
            f"| {n} | {spec.input_size} | {weights} | {c:.3f} | {base_cpu / c:.2f}× | "
            f"{t:.3f} | {base / t:.2f}× | "
            f"{sc['iou']:.4f} | {sc['iou'] - ref['iou']:+.4f} | {sc['sad']:.2f} | "
            f"{100 * (sc['sad'] / ref['sad'] - 1):+.1f} % |"
        )
    table = "\n".join(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(table + "\n")
    (out / "frontier.json").write_text(
        json.dumps({"times": times, "cpu_times": cpu_times, "scores": scores}, indent=1)
    )
    return table


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
    p.add_argument("--frontier", action="store_true", help="speed/quality of every variant")
    p.add_argument("--frontier-sizes", default="1024,640", help="float32 IS-Net input sizes")
    p.add_argument("--repeats", type=int, default=7, help="timing rounds for --frontier")
    p.add_argument("--timing-only", action="store_true", help="--frontier without quality")
    p.add_argument(
        "--int8-wheel", type=Path, default=None, metavar="WHEEL",
        help="--frontier also quantizes IS-Net to int8, calibrated on this scikit-image wheel",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.frontier:
        sizes = [int(v) for v in args.frontier_sizes.split(",") if v]
        print(
            frontier(
                sizes, args.limit, args.repeats, args.out, not args.timing_only, args.int8_wheel
            )
        )
        return 0
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
