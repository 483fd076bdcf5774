"""bench/ runs end to end in --quick mode on a tiny layer (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, ROOT, need

sys.path.insert(0, str(ROOT / "bench"))

import report


@pytest.mark.slow
def test_quick_run_on_a_tiny_layer(tmp_path: Path) -> None:
    need((MODELS_DIR / "u2netp.onnx").is_file(), f"u2netp is not installed in {MODELS_DIR}")
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "benchmarks.md"
    out_md.write_text("# Benchmarks\n\nHand-written notes stay.\n")
    env = dict(os.environ, OFFCUT_MODELS_DIR=str(MODELS_DIR))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--models",
            "u2netp",
            "--sizes",
            "0.02",
            "--repeats",
            "1",
            "--cold",
            "1",
            "--batch",
            "2",
            "--batch-repeats",
            "1",
            "--out",
            str(out_md),
            "--json",
            str(out_json),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out_json.read_text())
    (row,) = res["sizes"]
    assert row["model"] == "u2netp" and row["width"] * row["height"] > 0
    assert {"raw", "raw_offcut", "builtin", "pyzmq"} <= set(row["median"])
    assert row["provider"] == ["CPUExecutionProvider"]
    assert row["transports_agree"] is True
    assert row["peak_rss"] >= row["rss_model"] > 0
    if "vs_rembg" in row:  # rembg installed: rembg's mask but for rounding instead of truncation
        assert row["vs_rembg"]["max_abs"] <= 2 and row["vs_rembg"]["mean_abs"] < 1.0
    (cold,) = res["cold"]
    assert len(cold["ready"]) == 1 and cold["first_mask"][0] >= cold["ready"][0]
    assert res["batch"]["images"] == 2 and res["batch"]["median"]["offcut remove"] > 0
    deep = res["deep"]
    assert [(r["format"], r["mask_format"]) for r in deep] == [
        ("RGBA8", "GRAY8"),
        ("RGBA16", "GRAY16"),
        ("RGBAF32", "GRAYF32"),
        ("BGRA16", "GRAY16"),
        ("RGBAF16", "GRAYF32"),
    ]
    assert all(r["median"] > 0 and r["stages"]["inference"] > 0 for r in deep)
    text = out_md.read_text()
    assert "### Deep layers" in text
    assert "Hand-written notes stay." in text
    assert text.count(report.END) == 1
    assert "### Offcut end to end vs raw inference vs rembg" in text
    assert "### Cold start" in text and "### Batch" in text


def test_write_section_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# Title\n\nintro\n")
    report.write_section(doc, "first table\n")
    report.write_section(doc, "second table\n")
    text = doc.read_text()
    assert text.startswith("# Title\n\nintro\n")
    assert "second table" in text and "first table" not in text
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
