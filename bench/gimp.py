"""Section 9, "In the editor: GIMP": Offcut's procedure in real GIMP, split into its phases.

Real GIMP comes from the e2e rootfs of the editor matrix (tests/e2e/rootfs.py) and runs as the
end-to-end tests run it (tests/e2e/gimp_driver.py's ``GimpHarness``: a fresh profile, the plug-in
installed by ``offcut install gimp --profile``), against a bench sidecar on the host. Inside
GIMP, bench/gimp_batch_timing.py takes turns between the sidecar round trip of the very pixels
the plug-in reads, the plug-in's PDB call, and a no-op plug-in's PDB call (the floor).

The split of a call comes from the plug-in's ``OFFCUT_DEBUG`` line (``run.Phases``): wall-clock
marks of when its process started running Python, finished its imports and entered the
procedure body, and per-phase totals (connect, read, round trip, write, finish). It needs root
and the rootfs, like the end-to-end tests; without them the section says why and measures
nothing. ``python bench/gimp.py`` runs this section alone.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from common import make_layer, median
from offcut_gimp.run import DEBUG_PREFIX

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "offcut-remove-background"
BATCH_SCRIPT = Path(__file__).with_name("gimp_batch_timing.py")
NOOP_PLUGIN = Path(__file__).with_name("gimp_noop_plugin.py")
BENCH_RE = re.compile(r"^OFFCUT-BENCH (BEGIN|END|ALL-DONE)\s*(.*)$")
# Deep layers are 16 bytes a pixel in GIMP, in the plug-in and on the wire: 64 MP of them is
# 1 GB three times over, more than the reference VM can hold next to its other jobs.
DEEP_MAX_MP = 16
# Phases of a call, in order; "start" runs from the PDB call to the procedure body.
PHASES = ("start", "connect", "read", "roundtrip", "write", "other")


def install_baseline(harness: Any, ref: str) -> None:
    """The plug-in as it was at git ``ref``, as a second procedure (…-baseline) in the profile.

    Old and new code then take turns in the same GIMP, round after round, so a change is
    measured against load that hits both alike rather than against another run's numbers.
    """
    import subprocess

    def at_ref(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{ref}:plugin_gimp/{path}"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    folder = harness.plugins / f"{PLUGIN}-baseline"
    (folder / "offcut_gimp").mkdir(parents=True, exist_ok=True)
    for name in ("offcut_gimp/__init__.py", "offcut_gimp/pixels.py", "offcut_gimp/run.py"):
        (folder / name).write_text(at_ref(name))
    main = at_ref(f"{PLUGIN}.py")
    script = folder / f"{PLUGIN}-baseline.py"
    script.write_text(main.replace(f'"plug-in-{PLUGIN}"', f'"plug-in-{PLUGIN}-baseline"'))
    script.chmod(0o755)
    shutil.copytree(harness.plugin_dir / "offcut_client", folder / "offcut_client")
    shutil.copyfile(harness.plugin_dir / "offcut_sidecar.json", folder / "offcut_sidecar.json")


def install_noop(harness: Any) -> None:
    folder = harness.plugins / "offcut-bench-noop"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "offcut-bench-noop.py"
    shutil.copyfile(NOOP_PLUGIN, target)
    target.chmod(0o755)


def split(call: dict[str, Any], debug: dict[str, Any]) -> dict[str, float]:
    """One PDB call's wall time cut into PHASES by the plug-in's marks and totals."""
    marks, totals = debug["marks"], debug["totals"]
    out = {
        "process": marks["process"] - call["t_call"],  # exec, Python, until line 1 of the plug-in
        "imports": marks["imported"] - marks["process"],
        "create_procedure": totals.get("create_procedure", 0.0),
        "start": marks["body"] - call["t_call"],
        "finish": totals.get("finish", 0.0),
        "exit": call["t_return"] - marks["end"],
    }
    for key in ("connect", "read", "roundtrip", "write"):
        out[key] = totals.get(key, 0.0)
    out["other"] = call["wall"] - sum(out[k] for k in PHASES[:-1])
    return out


def parse(output: str) -> list[dict[str, Any]]:
    calls, debug = [], None
    for line in output.splitlines():
        if line.startswith(DEBUG_PREFIX):
            debug = json.loads(line[len(DEBUG_PREFIX) :])
            continue
        m = BENCH_RE.match(line.strip())
        if not m:
            continue
        kind, rest = m.groups()
        if kind == "BEGIN":
            debug = None
        elif kind == "END":
            call = json.loads(rest)
            if call["who"] in ("gimp", "baseline"):
                if call["status"] != "success" or not debug or "phases" not in debug:
                    raise RuntimeError(f"GIMP run failed ({call['status']}): {output[-3000:]}")
                call["split"] = split(call, debug["phases"])
                call["transport"] = debug.get("transport")
            calls.append(call)
    return calls


def bench_gimp(args: Any, work: Path, sidecar_cls: Any, model: str = "u2netp") -> dict[str, Any]:
    from tests.e2e.gimp_driver import GimpHarness  # pytest and the rootfs helpers: only here
    from tests.e2e.rootfs import MATRIX

    suite = getattr(args, "gimp_rootfs", None) or "trixie"
    rootfs = MATRIX[suite]
    problems = rootfs.problems(rootfs.gimp_console)
    if problems:
        return {"skipped": "; ".join(problems)}
    sizes = list(args.sizes)
    items, files = [], {}
    for mp in sizes:
        buf, w, h = make_layer(mp)
        files[f"layer-{mp:g}.raw"] = buf
        for sample in ("u8", "float"):
            if sample == "float" and mp > DEEP_MAX_MP:
                continue
            items.append(
                {
                    "id": f"{sample}-{mp:g}",
                    "sample": sample,
                    "megapixels": mp,
                    "width": w,
                    "height": h,
                    "pixels": f"layer-{mp:g}.raw",
                }
            )
    runtime = work / "gimp-runtime"
    sc = sidecar_cls.start(runtime, threads=args.threads)
    try:
        harness = GimpHarness(rootfs, work / "gimp", runtime)
        install_noop(harness)
        baseline = getattr(args, "baseline", None)
        if baseline:
            install_baseline(harness, baseline)
        run_dir = harness.work / "bench"
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (run_dir / name).write_bytes(data)
        files.clear()
        spec = run_dir / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "items": items,
                    "model": model,
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "plugin_dir": str(harness.plugin_dir),
                    "baseline": bool(baseline),
                }
            )
        )
        script = run_dir / "gimp_batch_timing.py"
        script.write_text(BATCH_SCRIPT.read_text())
        started = time.perf_counter()
        proc = harness.console(
            f"exec(open({str(script)!r}).read())",
            timeout=3600,
            OFFCUT_BENCH_SPEC=str(spec),
        )
        elapsed = time.perf_counter() - started
    finally:
        sc.stop()
    calls = parse(proc.stdout)
    if "OFFCUT-BENCH ALL-DONE" not in proc.stdout:
        raise RuntimeError(f"the GIMP bench did not finish: {proc.stdout[-3000:]}")
    rows = [summarise(item, calls) for item in items]
    out = {"gimp": rootfs.gimp, "suite": suite, "rows": rows, "elapsed": elapsed}
    if baseline:
        out["baseline"] = baseline
    return out


def summarise(item: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [c for c in calls if c["id"] == item["id"] and c["round"] >= 0]
    whos = sorted({c["who"] for c in mine})
    by = {who: [c for c in mine if c["who"] == who] for who in whos}
    rounds: dict[int, dict[str, float]] = {}
    for c in mine:
        rounds.setdefault(c["round"], {})[c["who"]] = c["wall"]
    out = {
        **item,
        "transport": by["gimp"][0].get("transport"),
        "times": {who: [c["wall"] for c in cs] for who, cs in by.items()},
        "median": {who: median([c["wall"] for c in cs]) for who, cs in by.items()},
    }
    for who in ("gimp", "baseline"):
        if who not in by:
            continue
        paired = [r for r in rounds.values() if who in r and "roundtrip" in r]
        key = "" if who == "gimp" else "baseline_"
        out[key + "ratio"] = median([r[who] / r["roundtrip"] for r in paired])
        out[key + "excess"] = median([r[who] - r["roundtrip"] for r in paired])
        out[key + "split"] = {
            k: median([c["split"][k] for c in by[who]]) for k in by[who][0]["split"]
        }
    return out


def markdown(res: dict[str, Any]) -> list[str]:
    """The section's table (report.py calls it)."""
    if "skipped" in res:
        return ["### In the editor: GIMP", "", f"Not measured: {res['skipped']}.", ""]
    out = [
        f"### In the editor: GIMP {res['gimp']}",
        "",
        f"`plug-in-offcut-remove-background` (u2netp, *new-layer*) in real GIMP {res['gimp']} "
        f"(Debian {res['suite']} rootfs, `gimp-console`), against *round trip*: the plug-in's "
        "own client sending the very pixels it reads (same format, mask format and transport) "
        "from GIMP's Python, and *no-op*: a Python plug-in that does nothing (the floor of any "
        "Python plug-in call). Seconds, medians, taken in turns; ×rt = median over rounds of "
        "GIMP ÷ round trip. The split of GIMP's time comes from the plug-in's OFFCUT_DEBUG marks: "
        "*start* = PDB call → procedure body (process start, Python, imports, registration; "
        "*of which imports*, *create proc.*), *connect* = client connect + hello, *read* = "
        "GEGL get, *rt in plug-in* = the request, *write* = new layer, mask and its pixels, "
        "*other* = the rest (undo group end, display flush, return and process exit).",
        "",
        "| layer | read as | round trip | GIMP | ×rt | GIMP − rt | no-op | start | of which imports"
        " | create proc. | connect | read | rt in plug-in | write | other |",
        "|" + " --- |" * 15,
    ]
    for r in res["rows"]:
        for key, label in (("baseline_", f" — {res.get('baseline')}"), ("", "")):
            if key + "split" not in r:
                continue
            s, m = r[key + "split"], r["median"]
            w, h = r["width"], r["height"]
            fmt = "R'G'B'A u8" if r["sample"] == "u8" else "R'G'B'A float (32-bit float linear)"
            wall = m["baseline" if key else "gimp"]
            out.append(
                f"| {r['megapixels']:g} MP ({w}×{h}){label} | {fmt} | {m['roundtrip']:.3f}"
                f" | {wall:.3f} | {r[key + 'ratio']:.2f} | {r[key + 'excess']:.3f}"
                f" | {m['noop']:.3f} | {s['start']:.3f} | {s['imports']:.3f}"
                f" | {s['create_procedure']:.3f} | {s['connect']:.3f} | {s['read']:.3f}"
                f" | {s['roundtrip']:.3f} | {s['write']:.3f} | {s['other']:.3f} |"
            )
    out.append("")
    return out


if __name__ == "__main__":  # a standalone run: python bench/gimp.py [--sizes 1,4] [--repeats N]
    import sys

    from common import editor_bench_main

    sys.exit(
        editor_bench_main(
            __doc__,
            "gimp",
            bench_gimp,
            markdown,
        )
    )
