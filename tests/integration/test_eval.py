"""``offcut eval`` end to end on real photos with real ground truth (../shared/eval).

Refinement has to earn its place on data no one here made: on the first alphamatting images
(dolls' hair, a flower, a plant) the refined masks must have a lower SAD and edge-band error than
the plain ones, as docs/quality.md reports for the whole set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SIDECAR_SRC, need

EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "eval"
MATTING = EVAL / "alphamatting27"


def run_eval(models_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["OFFCUT_MODELS_DIR"] = str(models_dir)
    env["PYTHONPATH"] = str(SIDECAR_SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "offcut", "eval", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_refine_lowers_sad_on_alphamatting(models_dir: Path, tmp_path: Path) -> None:
    need((MATTING / "images").is_dir(), f"evaluation data missing: {MATTING}")
    out_json, out_md = tmp_path / "eval.json", tmp_path / "eval.md"
    proc = run_eval(
        models_dir,
        str(MATTING),
        "--limit",
        "4",
        "--refine",
        "--with-plain",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    assert report["images"] == 4 and report["model"] == "u2netp"
    assert report["pipelines"] == ["offcut", "offcut +refine"]
    plain, refined = report["mean"]["offcut"], report["mean"]["offcut +refine"]
    assert refined["sad"] < plain["sad"], (plain, refined)
    assert refined["edge_mae"] < plain["edge_mae"], (plain, refined)
    for row in report["per_image"]:
        assert set(row["offcut"]) >= {"iou", "mae", "sad", "mse", "grad", "conn", "edge_mae"}
    md = out_md.read_text()
    assert "| offcut +refine |" in md and "SAD" in md
    assert proc.stdout.strip() == md.strip()


def test_eval_rejects_a_folder_without_ground_truth(models_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    proc = run_eval(models_dir, str(tmp_path))
    assert proc.returncode != 0
    assert "gt/" in proc.stderr
