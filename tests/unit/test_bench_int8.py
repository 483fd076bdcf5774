"""bench/int8.py, the int8 experiment's two pieces that are not ONNX Runtime's own code.

Pruning to the first output must keep that output's values and drop only what the other
outputs needed (IS-Net's side maps); the calibration photos must come from the wheel with the
recorded bytes, or the script must stop and say so, never calibrate on something else.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx  # the derive extra; the test extra includes it, so a missing onnx fails here
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import int8


def _two_outputs() -> onnx.ModelProto:
    """x → Relu → out (first); x → Mul(w) → Sigmoid → side (second, with its own weight)."""
    w = numpy_helper.from_array(np.full((1, 2), 3.0, np.float32), "w")
    nodes = [
        helper.make_node("Relu", ["x"], ["out"], name="relu"),
        helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
        helper.make_node("Sigmoid", ["m"], ["side"], name="sig"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("x", "out", "side")]
    graph = helper.make_graph(nodes, "g", [vi[0]], vi[1:], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_first_output_only_keeps_its_values_and_drops_the_rest() -> None:
    model = _two_outputs()
    int8.first_output_only(model)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["out"]
    assert [n.name for n in model.graph.node] == ["relu"]
    assert list(model.graph.initializer) == []
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[-1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], [[0.0, 2.0]])


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_calibration_stops_without_the_wheel(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="pip download scikit-image"):
        int8.calibration_images(tmp_path / "missing.whl")


def test_calibration_stops_on_other_photos(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for member, _sha256, _licence in int8.CALIBRATION:
            z.writestr(member, _png())  # the right names, other bytes
    with pytest.raises(SystemExit, match="not the photo calibrated on"):
        int8.calibration_images(wheel)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("skimage/data/moon.png", _png())  # a wheel without the photos
    with pytest.raises(SystemExit, match=r"has no skimage/data/astronaut\.png"):
        int8.calibration_images(wheel)
