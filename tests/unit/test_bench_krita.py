"""bench/krita.py's pure parts: the layer it hands Krita, and how runs become the table.

The timing itself needs real Krita and runs in the bench (section 10); here made-up runs check
that the split adds up to the wall time, that rounds are paired for ×rt, and that the targets of
issue #16 are judged on the right rows.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import krita as kbench
import run as brun


def test_krita_pixels_are_bgra_in_the_layers_depth():
    rgba = bytes([10, 20, 30, 40, 255, 0, 128, 1])
    assert kbench.krita_pixels(rgba, "U8") == bytes([30, 20, 10, 40, 128, 0, 255, 1])
    u16 = np.frombuffer(kbench.krita_pixels(rgba, "U16"), "<u2")
    assert u16.tolist() == [30 * 257, 20 * 257, 10 * 257, 40 * 257, 128 * 257, 0, 65535, 257]
    with pytest.raises(ValueError):
        kbench.krita_pixels(rgba, "F32")


def call(who, rnd, wall, **phases):
    return {"id": "U8-16", "who": who, "round": rnd, "wall": wall, "max_gap": 0.02 * (rnd + 1),
            "phases": phases}  # fmt: skip


def test_split_adds_up_to_the_wall_time():
    s = kbench.split(call("krita", 0, 3.0, read=0.5, roundtrip=2.0, write=0.25, attach=0.2,
                          settle=0.125))  # fmt: skip
    assert s["write"] == 0.375 and s["attach"] == 0.2
    assert s["read"] + s["roundtrip"] + s["write"] + s["other"] == pytest.approx(3.0)
    # the baseline's timers know read, roundtrip and write only
    s = kbench.split(call("baseline", 0, 3.0, read=0.5, roundtrip=2.0, write=0.25))
    assert s["other"] == pytest.approx(0.25) and s["attach"] == 0.0


def test_summarise_pairs_rounds_and_skips_the_warmup():
    item = {"id": "U8-16", "megapixels": 16, "width": 4619, "height": 3464, "depth": "U8"}
    calls = [
        call("roundtrip", -1, 9.0),  # warm-up: ignored
        call("krita", -1, 9.0, roundtrip=9.0),
        call("roundtrip", 0, 1.0),
        call("krita", 0, 1.5, read=0.1, roundtrip=1.0, write=0.2),
        call("roundtrip", 1, 2.0),
        call("krita", 1, 2.2, read=0.1, roundtrip=2.0, write=0.05),
        call("roundtrip", 2, 1.0),
        call("krita", 2, 1.1, read=0.1, roundtrip=0.9, write=0.05),
    ]
    row = kbench.summarise(item, calls)
    assert row["median"] == {"roundtrip": 1.0, "krita": 1.5}
    assert row["ratio"] == pytest.approx(1.1)  # median of 1.5, 1.1, 1.1
    assert row["excess"] == pytest.approx(0.2)
    assert row["max_gap"] == pytest.approx(0.06) and row["max_gap_median"] == pytest.approx(0.04)
    assert "baseline_ratio" not in row
    row["megapixels"] = 64
    assert kbench.targets(row) == {"ratio": True, "ui_block": False}
    row["megapixels"] = 1
    assert kbench.targets(row) == {"excess": True}
    lines = kbench.markdown({"krita": "5.2.9", "binding": "PyQt5", "suite": "trixie",
                             "transport": "pyzmq", "rows": [row]})  # fmt: skip
    assert any(line.startswith("| 1 MP (4619×3464) RGBA U8 | 1.000 | 1.500 |") for line in lines)


def test_quick_runs_skip_real_krita():
    assert brun.parse_args(["--quick"]).no_krita
    assert not brun.parse_args([]).no_krita
    assert brun.parse_args(["--no-krita"]).no_krita
