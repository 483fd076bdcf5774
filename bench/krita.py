"""Section 10, "In the editor: Krita": the docker's job in real Krita, split into its phases.

Real Krita comes from the e2e rootfs of the editor matrix (tests/e2e/rootfs.py) and runs as the
end-to-end tests run it (tests/e2e/krita_support.py's ``KritaProcess``: Xvfb, a fresh profile,
the plug-in installed by ``offcut install krita --profile``), against a bench sidecar on the
host. Inside Krita, bench/krita_timing.py takes turns between the sidecar round trip of the
very pixels the job reads (the plug-in's own client copy, on Krita's UI thread) and the
docker's job (``controller.run``, as the button and the action start it), optionally with the
plug-in of another commit (``--baseline``) as a third contender in the same Krita.

The split of a job comes from the plug-in's own marks (``Outcome.phases``: read, round trip,
write, settle and the rest); for the baseline, from timers around its three steps. While a job
runs, a 10 ms timer on Krita's UI thread records the longest gap between its ticks. It needs
root and the rootfs, like the end-to-end tests; without them the section says why and measures
nothing. ``python bench/krita.py`` runs this section alone.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from common import make_layer, median

REPO = Path(__file__).resolve().parents[1]
TIMING_SCRIPT = Path(__file__).with_name("krita_timing.py")
# The deep format: 16-bit integer RGBA, the depth Krita users pick for photos. Krita holds
# 8 bytes a pixel for it, in the layer, in the job's buffer and in the round trip's copy.
DEEP = "U16"
# Phases of a job, in order, as the table shows them.
PHASES = ("read", "roundtrip", "write", "other")


def krita_pixels(rgba8: bytes, depth: str) -> bytes:
    """RGBA8 pixels in the layout Krita stores an RGBA layer of ``depth`` in (B, G, R, A)."""
    import numpy as np

    px = np.frombuffer(rgba8, np.uint8).reshape(-1, 4)[:, [2, 1, 0, 3]]
    if depth == "U8":
        return px.tobytes()
    if depth == "U16":
        return (px.astype("<u2") * 257).tobytes()
    raise ValueError(depth)


def install_baseline(pykrita: Path, ref: str) -> None:
    """The plug-in as it was at git ``ref``, as the package ``offcut_krita_baseline``.

    Its ``__init__`` is left empty so that it registers no docker and no action next to the
    real one; the timing script drives its controller directly, with its own worker thread.
    """

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout

    folder = pykrita / "offcut_krita_baseline"
    folder.mkdir(parents=True, exist_ok=True)
    for path in git("ls-tree", "--name-only", f"{ref}:plugin_krita/offcut_krita").split():
        if path.endswith(".py") and path != "__init__.py":
            (folder / path).write_text(git("show", f"{ref}:plugin_krita/offcut_krita/{path}"))
    (folder / "__init__.py").write_text(f'"""Offcut at {ref}, for bench/krita.py only."""\n')
    shutil.copytree(pykrita / "offcut_krita" / "offcut_client", folder / "offcut_client")


def split(call: dict[str, Any]) -> dict[str, float]:
    """A job's wall time cut into PHASES; write includes Krita's settling after the write."""
    p = call["phases"]
    out = {
        "read": p.get("read", 0.0),
        "roundtrip": p.get("roundtrip", 0.0),
        "write": p.get("write", 0.0) + p.get("settle", 0.0),
        "attach": p.get("attach", 0.0),
        "settle": p.get("settle", 0.0),
    }
    out["other"] = call["wall"] - out["read"] - out["roundtrip"] - out["write"]
    return out


def summarise(item: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [c for c in calls if c["id"] == item["id"] and c["round"] >= 0]
    by: dict[str, list[dict[str, Any]]] = {}
    rounds: dict[int, dict[str, float]] = {}
    for c in mine:
        by.setdefault(c["who"], []).append(c)
        rounds.setdefault(c["round"], {})[c["who"]] = c["wall"]
    out: dict[str, Any] = {
        **item,
        "times": {who: [c["wall"] for c in cs] for who, cs in by.items()},
        "median": {who: median([c["wall"] for c in cs]) for who, cs in by.items()},
    }
    for who in ("krita", "baseline"):
        if who not in by:
            continue
        paired = [r for r in rounds.values() if who in r and "roundtrip" in r]
        key = "" if who == "krita" else "baseline_"
        out[key + "ratio"] = median([r[who] / r["roundtrip"] for r in paired])
        out[key + "excess"] = median([r[who] - r["roundtrip"] for r in paired])
        splits = [split(c) for c in by[who]]
        out[key + "split"] = {k: median([s[k] for s in splits]) for k in splits[0]}
        out[key + "max_gap"] = max(c["max_gap"] for c in by[who])
        out[key + "max_gap_median"] = median([c["max_gap"] for c in by[who]])
    return out


def targets(row: dict[str, Any]) -> dict[str, bool]:
    """Issue #16's goals for one row: wall ≤ 1.25 × round trip from 16 MP, ≤ + 0.3 s at 1 MP,
    and a UI thread never blocked for more than 50 ms at 64 MP."""
    out = {}
    if row["megapixels"] >= 16:
        out["ratio"] = row["ratio"] <= 1.25
    elif row["megapixels"] <= 1:
        out["excess"] = row["excess"] <= 0.3
    if row["megapixels"] >= 64:
        out["ui_block"] = row["max_gap"] <= 0.05
    return out


def bench_krita(args: Any, work: Path, sidecar_cls: Any, model: str = "u2netp") -> dict[str, Any]:
    from tests.e2e.krita_support import KritaProcess  # the rootfs helpers: only here
    from tests.e2e.rootfs import MATRIX

    suite = getattr(args, "krita_rootfs", None) or "trixie"
    rootfs = MATRIX[suite]
    problems = rootfs.problems("/usr/bin/krita")
    if problems:
        return {"skipped": "; ".join(problems)}
    base = work / "krita"
    run_dir = base / "bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    items = []
    deep_max = getattr(args, "krita_deep_max", None) or max(args.sizes)
    for mp in args.sizes:
        rgba, w, h = make_layer(mp)
        for depth in ("U8", DEEP):
            if depth != "U8" and mp > deep_max:
                continue
            path = run_dir / f"layer-{depth}-{mp:g}.raw"
            path.write_bytes(krita_pixels(rgba, depth))
            items.append(
                {
                    "id": f"{depth}-{mp:g}",
                    "depth": depth,
                    "megapixels": mp,
                    "width": w,
                    "height": h,
                    "pixels": str(path),
                }
            )
        del rgba
    runtime = base / "runtime"
    sc = sidecar_cls.start(runtime, threads=args.threads)
    krita = None
    try:
        krita = KritaProcess(rootfs, base / "profile", runtime, mount=base)
        baseline = getattr(args, "baseline", None)
        if baseline:
            install_baseline(krita.paths["pykrita"], baseline)
        hello = krita.start()
        script = run_dir / "krita_timing.py"
        script.write_text(TIMING_SCRIPT.read_text())
        spec = {
            "items": items,
            "model": model,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "baseline": bool(baseline),
        }
        started = time.perf_counter()
        res = krita.call("run_file", timeout=3600, path=str(script), args=spec)
        elapsed = time.perf_counter() - started
    finally:
        if krita is not None:
            krita.stop()
        sc.stop()
    rows = [summarise(item, res["calls"]) for item in items]
    for row in rows:
        row["targets"] = targets(row)
    out = {
        "krita": res["krita"],
        "qt": hello.get("qt"),
        "binding": hello.get("binding"),
        "suite": suite,
        "transport": res["transport"],
        "rows": rows,
        "calls": res["calls"],
        "elapsed": elapsed,
    }
    if baseline:
        out["baseline"] = baseline
    return out


def markdown(res: dict[str, Any]) -> list[str]:
    """The section's table (report.py calls it)."""
    if "skipped" in res:
        return ["### In the editor: Krita", "", f"Not measured: {res['skipped']}.", ""]
    out = [
        f"### In the editor: Krita {res['krita']}",
        "",
        f"The docker's job (u2netp, *transparency mask*) in real Krita {res['krita']} "
        f"({res['binding']}, Debian {res['suite']} rootfs, Xvfb, the document in a view), "
        "against *round trip*: the plug-in's own client sending the very pixels the job reads "
        f"(same format, GRAY8 mask, {res['transport']} transport) from Krita's Python. Seconds, "
        "medians, taken in turns; ×rt = median over rounds of Krita ÷ round trip. The split "
        "comes from the job's own marks: *read* = start → last band read, *rt in job* = the "
        "worker's request, *write* = reply on the UI thread → mask in the document and Krita "
        "done with it (*of which attach* = Krita's `addChildNode`, an undoable stroke it waits "
        "for, new projection included; the baseline's write is one span), *other* = the rest. "
        "*UI block* = the longest gap of a 10 ms timer on Krita's UI thread while the job runs: "
        "the median over runs, and the longest of all runs.",
        "",
        "| layer | round trip | Krita | ×rt | Krita − rt | read | rt in job | write"
        " | of which attach | other | UI block (median / max) |",
        "|" + " --- |" * 11,
    ]
    for r in res["rows"]:
        for key, label in (("baseline_", f" — {res.get('baseline')}"), ("", "")):
            if key + "split" not in r:
                continue
            s, m = r[key + "split"], r["median"]
            w, h = r["width"], r["height"]
            wall = m["baseline" if key else "krita"]
            out.append(
                f"| {r['megapixels']:g} MP ({w}×{h}) RGBA {r['depth']}{label}"
                f" | {m['roundtrip']:.3f} | {wall:.3f} | {r[key + 'ratio']:.2f}"
                f" | {r[key + 'excess']:.3f} | {s['read']:.3f} | {s['roundtrip']:.3f}"
                f" | {s['write']:.3f} | {s['attach']:.3f} | {s['other']:.3f}"
                f" | {r[key + 'max_gap_median'] * 1000:.0f} / {r[key + 'max_gap'] * 1000:.0f} ms |"
            )
    out.append("")
    return out


if __name__ == "__main__":  # a standalone run: python bench/krita.py [--sizes 1,4] [--repeats N]
    import sys

    from common import editor_bench_main

    sys.exit(
        editor_bench_main(
            __doc__,
            "krita",
            bench_krita,
            markdown,
            lambda p: p.add_argument(
                "--krita-deep-max", type=float, default=None, help="largest deep layer, MP"
            ),
        )
    )
