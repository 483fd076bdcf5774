#!/usr/bin/env python3
"""Offcut's benchmark: everything side by side in one run, medians after a warm-up.

    .venv/bin/python bench/run.py          # full run; rewrites the tables in docs/benchmarks.md
    .venv/bin/python bench/run.py --quick  # a short run (small sizes, few repeats), to stdout

Sections (each can be skipped):

1. raw ONNX Runtime inference of the model on a prepared input tensor (default session options,
   the same execution provider Offcut picks);
2. Offcut end to end: a real ``offcut serve`` and the plug-in client (``offcut.client``) over both
   transports (builtin ZMTP, pyzmq), RGBA8 layers of 1, 4, 16 and 64 megapixels;
3. rembg ``remove(..., only_mask=True)`` in-process on the same image and the same model file;
   the masks are compared with Offcut's (equal for layers under 8 × the model input a side;
   larger layers are box-reduced before the LANCZOS pass, and the difference is reported);
4. cold start: ``offcut serve`` spawn to readiness line, and spawn to the first mask (1 MP);
5. the sidecar's peak RSS (VmHWM) per size, one fresh sidecar per size;
6. batch throughput: ``offcut remove`` on a folder against ``rembg p``;
7. deep layers: the same photo as 16-bit, half and float layers, sRGB and linear, each with the
   mask format the editors ask for at that depth (GRAY16, GRAYF32), against RGBA8 → GRAY8, end
   to end through one sidecar (u2netp, 16 and 64 MP);
8. batch on a Ray cluster: ``offcut remove`` locally against ``--cluster`` with 1 and 2 model
   workers on a two-node Ray cluster started on this machine (tests/ray_cluster.py), the same
   photos; the fixed start-up and the per-image cost of each (from a 1-photo run), the cluster
   path's per-image overhead, a fitted model of N workers, and a run with a worker killed
   mid-way; every cluster output is compared byte for byte with the local command's.
9. in the editor: Offcut's procedure in real GIMP (the e2e rootfs), split into process start,
   imports, read, round trip, write and the rest, against the sidecar round trip of the same
   pixels and a no-op plug-in (bench/gimp.py; needs root and the rootfs).
10. in the editor: the docker's job in real Krita (the e2e rootfs, Xvfb), split into read, round
    trip, write and the rest, against the sidecar round trip of the same pixels, with the
    longest block of Krita's UI thread while it runs (bench/krita.py; needs root and the rootfs).

Timings from 2. and 1./3. are interleaved round by round, so load from elsewhere on the machine
hits all of them alike. See docs/benchmarks.md for the results and what was tuned.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import gimp
import krita
import report
from common import (
    REPO,
    Sidecar,
    loadavg,
    make_layer,
    median,
    model_file,
    models_dir,
    proc_status_bytes,
    round_robin,
    scratch_dir,
)

TRANSPORTS = ("builtin", "pyzmq")
DEFAULT_MODELS = ("u2netp", "isnet-general-use-fp16")
STAGES = ("preprocess", "inference", "postprocess", "encode")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: 1 MP, 2 repeats, small batch")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names")
    p.add_argument("--sizes", default=None, help="megapixels, comma-separated (default 1,4,16,64)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per item (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--cold", type=int, default=None, help="cold starts per model (default 5)")
    p.add_argument("--batch", type=int, default=None, help="images in the batch folder (30)")
    p.add_argument("--batch-repeats", type=int, default=None, help="batch runs per tool (5)")
    p.add_argument("--no-rembg", action="store_true", help="skip everything that needs rembg")
    p.add_argument("--no-e2e", action="store_true", help="skip sections 1-3 and 5")
    p.add_argument("--no-cold", action="store_true", help="skip the cold start section")
    p.add_argument("--no-batch", action="store_true", help="skip the batch section")
    p.add_argument("--no-deep", action="store_true", help="skip the deep-layer section")
    p.add_argument(
        "--cluster-batch",
        type=int,
        default=None,
        help="photos for the Ray cluster section (default 200; 0 skips it, as --quick does)",
    )
    p.add_argument(
        "--no-gimp", action="store_true", help="skip the real-GIMP section (--quick skips it too)"
    )
    p.add_argument("--gimp-rootfs", default="trixie", help="rootfs whose GIMP section 9 runs")
    p.add_argument(
        "--no-krita", action="store_true", help="skip the real-Krita section (--quick skips it too)"
    )
    p.add_argument("--krita-rootfs", default="trixie", help="rootfs whose Krita section 10 runs")
    p.add_argument(
        "--baseline",
        default=None,
        help="git ref: its editor plug-ins take turns with the checkout's in sections 9 and 10",
    )
    p.add_argument("--threads", type=int, default=None, help="pass --threads to offcut serve")
    p.add_argument(
        "--provider",
        default=None,
        help="force an execution provider (sets OFFCUT_PROVIDER for the sidecar and raw runs)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="Markdown destination: a file whose generated section is replaced, or - for stdout "
        "only (default: docs/benchmarks.md, or stdout with --quick)",
    )
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="measure nothing: render the tables from an earlier run's --json file",
    )
    args = p.parse_args(argv)
    q = args.quick
    args.models = [m for m in args.models.split(",") if m]
    args.sizes = [float(s) for s in (args.sizes or ("1" if q else "1,4,16,64")).split(",")]
    args.repeats = args.repeats or (2 if q else 5)
    args.cold = args.cold if args.cold is not None else (2 if q else 5)
    args.batch = args.batch or (3 if q else 30)
    args.batch_repeats = args.batch_repeats or (1 if q else 5)
    if args.cluster_batch is None:
        args.cluster_batch = 0 if q else 200
    args.transports = [t for t in args.transports.split(",") if t]
    args.no_gimp = args.no_gimp or q  # minutes of real GIMP are not a quick run
    args.no_krita = args.no_krita or q  # nor of real Krita
    if args.out is None:
        args.out = "-" if q else str(REPO / "docs" / "benchmarks.md")
    if args.provider:
        os.environ["OFFCUT_PROVIDER"] = args.provider
    return args


# ----------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    import numpy
    import onnxruntime as ort
    import PIL
    import zmq

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    env: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "pyzmq": zmq.__version__,
        "load_before": loadavg(),
    }
    gpu = _gpu_name()
    if gpu:
        env["gpu"] = gpu
    if os.environ.get("OFFCUT_PROVIDER"):
        env["forced_provider"] = os.environ["OFFCUT_PROVIDER"]
    if common.rembg_available():
        from importlib.metadata import version

        env["rembg"] = version("rembg")
    return env


def _gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def chosen_providers() -> list[str]:
    import onnxruntime as ort

    from offcut.engine.engine import choose_providers

    return choose_providers(
        list(ort.get_available_providers()), os.environ.get("OFFCUT_PROVIDER") or None
    )


def raw_session(name: str, providers: list[str]) -> Any:
    """The floor: a plain InferenceSession with default options, as any caller would make."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(
        str(models_dir() / model_file(name)), sess_options=opts, providers=providers
    )


# ----------------------------------------------------------------------------- sections 1-3, 5


def stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    """The median of each sidecar stage over runs (0.0 for a stage a run did not report)."""
    return {s: median([t.get(s, 0.0) for t in timings]) for s in STAGES}


def bench_model(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from offcut.engine.engine import Engine
    from offcut.models.catalog import load_catalog
    from offcut.models.store import ModelStore

    catalog = load_catalog()
    spec = catalog.get(name)
    providers = chosen_providers()
    raw = raw_session(name, providers)
    raw_input = raw.get_inputs()[0].name
    # The same model in the session Offcut itself creates (its options, first output only):
    # inference alone, without anything else Offcut does.
    tuned = Engine(catalog, ModelStore(models_dir())).load(name).session
    tuned_input, tuned_output = tuned.get_inputs()[0].name, tuned.get_outputs()[0].name
    tiny, tw, th = make_layer(0.003)
    rembg = None
    if not args.no_rembg and common.rembg_available() and name in common.REMBG_NAMES:
        home = common.rembg_home(work, [name])
        rembg = common.rembg_session(name, home, providers)
    ctx = {
        "spec": spec,
        "raw": raw,
        "raw_input": raw_input,
        "tuned": tuned,
        "tuned_input": tuned_input,
        "tuned_output": tuned_output,
        "tiny": (tiny, tw, th),
        "rembg": rembg,
        "model_bytes": (models_dir() / model_file(name)).stat().st_size,
    }
    return [bench_size(name, mp, args, work, ctx) for mp in args.sizes]


def bench_size(
    name: str, mp: float, args: argparse.Namespace, work: Path, ctx: dict[str, Any]
) -> dict[str, Any]:
    """One layer size: a fresh sidecar, then raw / Offcut (each transport) / rembg in turn."""
    import numpy as np
    from PIL import Image

    from offcut.engine import formats
    from offcut.engine.engine import preprocess

    spec, raw, raw_input = ctx["spec"], ctx["raw"], ctx["raw_input"]
    tuned, tuned_input, tuned_output = ctx["tuned"], ctx["tuned_input"], ctx["tuned_output"]
    tiny, tw, th = ctx["tiny"]
    rembg, model_bytes = ctx["rembg"], ctx["model_bytes"]
    buf, w, h = make_layer(mp)
    image = formats.to_model_image(buf, formats.FORMATS["RGBA8"], w, h, (0, 0, w, h), "srgb")
    tensor = preprocess(image, spec)
    del image
    log(f"{name} {mp:g} MP ({w}x{h}): starting a fresh sidecar")
    sc = Sidecar.start(work / f"run-{name}-{mp:g}", threads=args.threads)
    rss_ready = proc_status_bytes(sc.pid, "VmRSS")
    clients = {t: sc.client(t) for t in args.transports}
    # The model's own working set first (a 64×48 image), so the layer's share of the peak
    # can be told apart from what the model needs at any size.
    if args.transports:
        clients[args.transports[0]].segment(tiny, tw, th, "RGBA8", model=name)
    rss_model = proc_status_bytes(sc.pid, "VmHWM")
    last: dict[str, Any] = {}
    stage_log: list[dict[str, float]] = []
    other_log: dict[str, list[float]] = {t: [] for t in args.transports}
    provider_used: set[str] = set()

    def noop(stage: str, fraction: float) -> None:
        pass

    def offcut_call(transport: str) -> Any:
        def call() -> None:
            t0 = time.perf_counter()
            res = clients[transport].segment(buf, w, h, "RGBA8", model=name, on_progress=noop)
            dt = time.perf_counter() - t0
            last[transport] = res
            stages = dict(res.meta.get("timings") or {})
            stage_log.append(stages)
            other_log[transport].append(dt - sum(stages.get(s, 0.0) for s in STAGES))
            provider_used.add(str(res.meta.get("provider")))

        return call

    funcs: dict[str, Any] = {
        "raw": lambda: raw.run(None, {raw_input: tensor}),
        "raw_offcut": lambda: tuned.run([tuned_output], {tuned_input: tensor}),
    }
    for t in args.transports:
        funcs[t] = offcut_call(t)
    if rembg is not None:
        from rembg import remove

        pil = Image.frombuffer("RGBA", (w, h), buf, "raw", "RGBA", 0, 1)

        def rembg_call() -> None:
            last["rembg"] = remove(pil, session=rembg, only_mask=True)

        funcs["rembg"] = rembg_call
    try:
        times = round_robin(funcs, args.repeats, args.warmup)
        peak = proc_status_bytes(sc.pid, "VmHWM")
        status = clients[args.transports[0]].status() if args.transports else {}
    finally:
        for c in clients.values():
            c.close()
        sc.stop()
    stage_log = stage_log[len(args.transports) * args.warmup :]
    other = {t: median(v[args.warmup :]) for t, v in other_log.items()}
    row: dict[str, Any] = {
        "model": name,
        "megapixels": mp,
        "width": w,
        "height": h,
        "layer_bytes": len(buf),
        "model_bytes": model_bytes,
        "raw_provider": raw.get_providers()[0],
        "provider": sorted(provider_used),
        "times": times,
        "median": {k: median(v) for k, v in times.items()},
        "stages": stage_medians(stage_log),
        "other": other,
        "peak_rss": peak,
        "rss_ready": rss_ready,
        "rss_model": rss_model,
        "status_rss": status.get("rss_bytes"),
    }
    if "rembg" in last and args.transports:
        ours = np.frombuffer(last[args.transports[0]].mask, np.uint8).reshape(h, w)
        theirs = np.asarray(last["rembg"], dtype=np.uint8)
        diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
        row["vs_rembg"] = {
            "max_abs": int(diff.max()),
            "frac_over_1": float(np.mean(diff > 1)),
            "frac_differ": float(np.mean(diff > 0)),
            "mean_abs": float(diff.mean()),
        }
    if len(args.transports) == 2:
        a, b = (bytes(last[t].mask) for t in args.transports)
        row["transports_agree"] = a == b
    log(report.one_line(row))
    return row


# ----------------------------------------------------------------------------- section 4


def bench_cold(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    buf, w, h = make_layer(1.0)
    ready, first, hello = [], [], []
    for i in range(args.cold):
        sc = Sidecar.start(work / f"cold-{name}-{i}", threads=args.threads)
        try:
            c = sc.client("builtin")
            c.hello()
            hello.append(time.perf_counter() - sc.started)
            c.segment(buf, w, h, "RGBA8", model=name)
            first.append(time.perf_counter() - sc.started)
            ready.append(sc.ready_s)
            c.close()
        finally:
            sc.stop()
    out = {
        "model": name,
        "ready": ready,
        "hello": hello,
        "first_mask": first,
        "median": {"ready": median(ready), "hello": median(hello), "first_mask": median(first)},
    }
    log(
        f"cold {name}: ready {out['median']['ready']:.3f} s, first mask "
        f"{out['median']['first_mask']:.3f} s"
    )
    return out


# ----------------------------------------------------------------------------- section 6


def bench_batch(args: argparse.Namespace, work: Path, model: str = "u2netp") -> dict[str, Any]:
    src = work / "batch-in"
    src.mkdir()
    photos = sorted(common.EVAL_DIR.glob("*.jpg")) if common.EVAL_DIR.is_dir() else []
    for i in range(args.batch):
        if photos:
            shutil.copy(photos[i % len(photos)], src / f"{i:04d}.jpg")
        else:
            common.synthetic_photo(400, 300, seed=i).save(src / f"{i:04d}.png")
    env = common.sidecar_env(work / "batch-run")
    tools: dict[str, list[str]] = {
        "offcut remove": [
            sys.executable,
            "-m",
            "offcut",
            "remove",
            str(src),
            "--model",
            model,
            "-q",
            "--out-dir",
        ],
    }
    notes: list[str] = []
    if not args.no_rembg and common.rembg_available() and model in common.REMBG_NAMES:
        missing = common.rembg_p_missing()
        if missing:
            notes.append(
                "`rembg p` skipped: rembg's CLI needs " + ", ".join(missing) + " (pip install "
                "click filetype watchdog)."
            )
        else:
            home = common.rembg_home(work, [model])
            env["U2NET_HOME"] = str(home)
            name = common.REMBG_NAMES[model][0]
            tools[f"rembg p -m {name}"] = [
                sys.executable,
                "-c",
                common.REMBG_GUARD + common.REMBG_P_MAIN,
                "-m",
                name,
                str(src),
            ]
    times: dict[str, list[float]] = {k: [] for k in tools}
    for r in range(args.warmup + args.batch_repeats):
        for tool, cmd in tools.items():
            out = work / f"batch-out-{len(times[tool])}-{r}-{tool.split()[0]}"
            out.mkdir()
            t = time.perf_counter()
            subprocess.run([*cmd, str(out)], env=env, check=True, capture_output=True)
            dt = time.perf_counter() - t
            made = len(list(out.glob("*.png")))
            if made != args.batch:
                raise RuntimeError(f"{tool} wrote {made} of {args.batch} images")
            shutil.rmtree(out)
            if r >= args.warmup:
                times[tool].append(dt)
    res = {"model": model, "images": args.batch, "times": times, "notes": notes}
    res["median"] = {k: median(v) for k, v in times.items()}
    log("batch: " + ", ".join(f"{k} {v:.2f} s" for k, v in res["median"].items()))
    return res


# ----------------------------------------------------------------------------- section 7

# (wire format, colorspace, mask format, who sends it): what the plug-ins ask for at each depth.
DEEP_LAYERS = (
    ("RGBA8", "srgb", "GRAY8", "8-bit (reference)"),
    ("RGBA16", "srgb", "GRAY16", "GIMP 16-bit"),
    ("RGBAF32", "srgb", "GRAYF32", "GIMP 32-bit float"),
    ("BGRA16", "linear", "GRAY16", "Krita 16-bit, linear profile"),
    ("RGBAF16", "linear", "GRAYF32", "Krita 16-bit float, scRGB"),
)


def deep_layer(buf: bytes, w: int, h: int, fmt: str, colorspace: str) -> Any:
    """The RGBA8 photo in another wire format (same picture; linear ones decoded from sRGB)."""
    import numpy as np

    from offcut.engine import formats

    rgba = np.frombuffer(buf, np.uint8).reshape(h, w, 4)
    f = np.empty((h, w, 4), np.float32)
    np.divide(rgba, np.float32(255.0), out=f)
    if colorspace == "linear":
        c = f[..., :3]
        c[...] = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    spec = formats.FORMATS[fmt]
    if spec.depth == "16":
        out = (f * 65535.0 + 0.5).astype("<u2")
    elif spec.depth == "float":
        out = f.astype(spec.dtype)
    else:
        out = rgba
    if spec.channels == "BGRA":
        out = out[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(out)


def bench_deep(args: argparse.Namespace, work: Path, model: str = "u2netp") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for mp in [s for s in args.sizes if s >= 16] or args.sizes[-1:]:
        rows += bench_deep_size(mp, args, work, model)
    return rows


def bench_deep_size(
    mp: float, args: argparse.Namespace, work: Path, model: str
) -> list[dict[str, Any]]:
    """Every deep layer of one size through one fresh sidecar, taking turns."""
    buf, w, h = make_layer(mp)
    layers = {d[3]: (deep_layer(buf, w, h, d[0], d[1]), d) for d in DEEP_LAYERS}
    del buf
    log(f"deep layers {mp:g} MP ({w}x{h}): starting a fresh sidecar")
    sc = Sidecar.start(work / f"deep-{mp:g}", threads=args.threads)
    client = sc.client(args.transports[0] if args.transports else "builtin")
    stages: dict[str, list[dict[str, float]]] = {k: [] for k in layers}

    def call(key: str) -> Any:
        arr, (fmt, cs, mask_format, _) = layers[key]

        def go() -> None:
            res = client.segment(
                arr, w, h, fmt, colorspace=cs, model=model, mask_format=mask_format
            )
            stages[key].append(dict(res.meta.get("timings") or {}))

        return go

    try:
        times = round_robin({k: call(k) for k in layers}, args.repeats, args.warmup)
        peak = proc_status_bytes(sc.pid, "VmHWM")
    finally:
        client.close()
        sc.stop()
    rows = []
    for key, (arr, (fmt, cs, mask_format, who)) in layers.items():
        st = stages[key][args.warmup :]
        rows.append(
            {
                "megapixels": mp,
                "width": w,
                "height": h,
                "layer": who,
                "format": fmt,
                "colorspace": cs,
                "mask_format": mask_format,
                "layer_bytes": arr.nbytes,
                "times": times[key],
                "median": median(times[key]),
                "stages": stage_medians(st),
                "peak_rss": peak,
            }
        )
    log(f"deep layers {mp:g} MP: " + ", ".join(f"{r['format']} {r['median']:.3f} s" for r in rows))
    return rows


# ----------------------------------------------------------------------------- section 8


def photo_folder(folder: Path, n: int) -> Path:
    """``n`` photos in ``folder``: ecssd200's JPEGs (cycled), or synthetic PNGs without them."""
    folder.mkdir()
    photos = sorted(common.EVAL_DIR.glob("*.jpg")) if common.EVAL_DIR.is_dir() else []
    for i in range(n):
        if photos:
            shutil.copy(photos[i % len(photos)], folder / f"{i:04d}.jpg")
        else:
            common.synthetic_photo(400, 300, seed=i).save(folder / f"{i:04d}.png")
    return folder


def bench_cluster(args: argparse.Namespace, work: Path, model: str = "u2netp") -> dict[str, Any]:
    """Local ``offcut remove`` against ``--cluster`` with 1 and 2 workers, taking turns.

    Each is timed on the whole folder and on one photo: the one-photo run is the fixed start-up
    (Python, joining the cluster, starting actors and loading the model), and
    (T(N) - T(1)) / (N - 1) the steady per-image time. With per-image times p1 and p2 on 1 and 2
    workers, p(w) = a + b / w gives a (the per-image part that does not spread: this machine
    reading, shipping and writing) and b (the model's part, which does), so w workers would reach
    1 / (a + b / w) images per second, never more than 1 / a.
    """
    from tests.ray_cluster import RayCluster

    n = args.cluster_batch
    src = photo_folder(work / "cluster-in", n)
    one = photo_folder(work / "cluster-one", 1)
    env = common.sidecar_env(work / "cluster-run")
    base = [sys.executable, "-m", "offcut", "remove", "--model", model, "-q"]
    cluster = RayCluster(2, env)
    try:
        tools = {
            "local": [],
            "cluster, 1 worker": ["--cluster", cluster.address, "--workers", "1"],
            "cluster, 2 workers": ["--cluster", cluster.address, "--workers", "2"],
        }
        times: dict[str, dict[str, list[float]]] = {k: {"all": [], "one": []} for k in tools}
        # CPU seconds of the command's own process (Ray's workers are the raylets' children,
        # not its): for the cluster, what this machine spends per photo to read, ship, write.
        cpu: dict[str, list[float]] = {k: [] for k in tools}
        reference: dict[str, bytes] = {}
        identical: dict[str, bool] = {}
        for r in range(args.warmup + args.batch_repeats):
            for tool, extra in tools.items():
                for kind, folder in (("all", src), ("one", one)):
                    out = work / f"cluster-out-{r}-{kind}-{tool.split()[-1]}"
                    t, ru = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                    subprocess.run(
                        [*base, str(folder), "--out-dir", str(out), *extra],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                    dt = time.perf_counter() - t
                    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    used = ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime
                    made = {p.name: p.read_bytes() for p in out.glob("*.png")}
                    if len(made) != (n if kind == "all" else 1):
                        raise RuntimeError(f"{tool} wrote {len(made)} images")
                    if kind == "all":
                        if tool == "local":
                            reference = reference or made
                        identical[tool] = identical.get(tool, True) and made == reference
                    shutil.rmtree(out)
                    if r >= args.warmup:
                        times[tool][kind].append(dt)
                        if kind == "all":
                            cpu[tool].append(used)
            log(f"cluster round {r + 1}: {times}")
        killed = cluster_with_a_killed_worker(cluster, base, src, env, work, reference)
    finally:
        cluster.stop()
    med = {k: {kind: median(v) for kind, v in t.items()} for k, t in times.items()}
    per_image = {k: (m["all"] - m["one"]) / max(n - 1, 1) for k, m in med.items()}
    p1, p2 = per_image["cluster, 1 worker"], per_image["cluster, 2 workers"]
    b = 2 * (p1 - p2)
    a = p1 - b
    res = {
        "model": model,
        "images": n,
        "times": times,
        "median": med,
        "per_image": per_image,
        "driver_cpu_per_image": {k: median(v) / n for k, v in cpu.items()},
        "overhead_per_image": p1 - per_image["local"],
        "fit": {"a": a, "b": b},
        "identical": identical,
        "killed_worker": killed,
    }
    log(f"cluster: per image {per_image}, fit a={a:.4f} b={b:.4f}, killed {killed}")
    return res


def cluster_with_a_killed_worker(
    cluster: Any, base: list[str], src: Path, env: dict[str, str], work: Path,
    reference: dict[str, bytes],
) -> dict[str, Any]:  # fmt: skip
    """Two workers, one SIGKILLed once the first output is written: all outputs, identical."""
    import signal

    out = work / "cluster-out-killed"
    t = time.perf_counter()
    proc = subprocess.Popen(
        [*base, str(src), "--out-dir", str(out), "--cluster", cluster.address, "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victims: list[int] = []
        while proc.poll() is None and not victims:
            if out.is_dir() and any(out.glob("*.png")):
                victims = cluster.worker_pids("MapWorker(Map(Segmenter))")
            time.sleep(0.05)
        written_before = len(list(out.glob("*.png")))
        if victims:
            os.kill(victims[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=3600)
    finally:
        proc.kill()
    made = {p.name: p.read_bytes() for p in out.glob("*.png")}
    shutil.rmtree(out)
    return {
        "seconds": time.perf_counter() - t,
        "killed": bool(victims),
        "written_before_kill": written_before,
        "outputs": len(made),
        "identical": made == reference,
        "exit": proc.returncode,
        "stderr_tail": stderr[-500:],
    }


# ----------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "env": environment(),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
    }
    missing = [m for m in args.models if not (models_dir() / model_file(m)).is_file()]
    if missing:
        log(f"models not installed in {models_dir()}, skipped: {', '.join(missing)}")
    models = [m for m in args.models if m not in missing]
    results["skipped_models"] = missing
    with scratch_dir() as work:
        if not args.no_e2e:
            results["sizes"] = []
            for m in models:
                results["sizes"] += bench_model(m, args, work)
        if not args.no_cold:
            results["cold"] = [bench_cold(m, args, work) for m in models]
        if not args.no_batch and "u2netp" in models:
            results["batch"] = bench_batch(args, work)
        if not args.no_deep and "u2netp" in models:
            results["deep"] = bench_deep(args, work)
        if args.cluster_batch > 0 and "u2netp" in models:
            results["cluster"] = bench_cluster(args, work)
        if not args.no_gimp and "u2netp" in models:
            results["gimp"] = gimp.bench_gimp(args, work, Sidecar)
        if not args.no_krita and "u2netp" in models:
            results["krita"] = krita.bench_krita(args, work, Sidecar)
    results["env"]["load_after"] = loadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    md = report.markdown(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.out == "-":
        print(md)
    else:
        report.write_section(Path(args.out), md)
        print(md)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
