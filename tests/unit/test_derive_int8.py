"""The ``int8`` recipe's steps on tiny graphs (real ONNX, real ONNX Runtime and its quantizer).

The real IS-Net is derived in tests/integration/test_models_derive.py. Here: pruning keeps the
first output and only what it needs; float32 → float32 casts go the way ONNX Runtime's optimiser
removes them; and the QDQ graph the recipe builds from a set of scales gives exactly the outputs
of the file ONNX Runtime's own ``quantize_static`` writes with those scales, Relu folding, float
nodes and per-channel int8 weights and int32 biases included.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx  # the derive extra; the test extra includes it, so a missing onnx fails here
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from offcut.errors import OffcutError
from offcut.models import derive
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import int8  # bench/int8.py: reads the scales out of ONNX Runtime's file


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


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
    derive._first_output_only(model)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["out"]
    assert [n.name for n in model.graph.node] == ["relu"]
    assert list(model.graph.initializer) == []
    np.testing.assert_array_equal(_run(model, np.array([[-1.0, 2.0]], np.float32)), [[0.0, 2.0]])


def test_float_casts_go_and_their_readers_read_the_input() -> None:
    """x → Cast → Relu → Cast → Relu → Cast → y: the inner casts go, the output's stays."""
    nodes = [
        helper.make_node("Cast", ["x"], ["c0"], name="c0", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
        helper.make_node("Cast", ["r0"], ["c1"], name="c1", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Cast", ["r1"], ["y"], name="c2", to=TensorProto.FLOAT),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("x", "y")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [vi[0]], [vi[1]]),
        opset_imports=[helper.make_opsetid("", 15)],
    )
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    before = _run(model, x)
    derive._drop_float_casts(model.graph)
    onnx.checker.check_model(model)
    assert [(n.name, list(n.input)) for n in model.graph.node] == [
        ("r0", ["x"]),
        ("r1", ["r0"]),
        ("c2", ["r1"]),
    ]
    np.testing.assert_array_equal(_run(model, x), before)


def _small_net(seed: int = 0) -> onnx.ModelProto:
    """A U-Net-like block: Conv → Relu → MaxPool → Conv → Relu → Resize back → Concat with
    the first features → Conv → Relu → Add → float Conv (1 channel) → Sigmoid."""
    rng = np.random.default_rng(seed)

    def conv_w(name: str, cout: int, cin: int) -> list[Any]:
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3
        b = rng.standard_normal(cout).astype(np.float32) * 0.1
        return [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]

    inits = [*conv_w("c1", 8, 3), *conv_w("c2", 8, 8), *conv_w("c3", 8, 16)]
    inits += [
        numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "side.w"),
        numpy_helper.from_array(np.array([0.1], np.float32), "side.b"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]

    def conv(name: str, x: str, y: str) -> Any:
        return helper.make_node(
            "Conv", [x, f"{name}.w", f"{name}.b"], [y], name=f"/{name}/Conv", pads=[1, 1, 1, 1]
        )

    nodes = [
        conv("c1", "input", "a"),
        helper.make_node("Relu", ["a"], ["a_r"], name="/c1/Relu"),
        helper.make_node("MaxPool", ["a_r"], ["p"], name="/pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        conv("c2", "p", "b"),
        helper.make_node("Relu", ["b"], ["b_r"], name="/c2/Relu"),
        helper.make_node("Resize", ["b_r", "", "scales"], ["u"], name="/up", mode="linear"),
        helper.make_node("Concat", ["u", "a_r"], ["cat"], name="/cat", axis=1),
        conv("c3", "cat", "c"),
        helper.make_node("Relu", ["c"], ["c_r"], name="/c3/Relu"),
        helper.make_node("Add", ["c_r", "a_r"], ["s"], name="/add"),
        helper.make_node("Conv", ["s", "side.w", "side.b"], ["logit"], name="/side1/Conv"),
        helper.make_node("Sigmoid", ["logit"], ["output"], name="/Sigmoid"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 16, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _ort_quantized(model: onnx.ModelProto, tmp_path: Path, float_nodes: list[str]) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src, dest = tmp_path / "float.onnx", tmp_path / "ort-int8.onnx"
    onnx.save_model(model, str(src))
    rng = np.random.default_rng(1)
    batches = [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.left, None)

    quantize_static(
        str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=float_nodes, calibrate_method=CalibrationMethod.Percentile,
        extra_options={"CalibPercentile": 99.9},
    )  # fmt: skip
    return dest


def test_the_recipe_rebuilds_onnx_runtimes_int8_model_from_its_scales(tmp_path: Path) -> None:
    model = _small_net()
    float_nodes = ["/side1/Conv", "/Sigmoid"]
    theirs = _ort_quantized(model, tmp_path, float_nodes)
    params = int8.qdq_params(theirs)
    acts = {t: (sc, zp) for t, (sc, zp) in params["activations"].items()}
    mine = onnx.ModelProto()
    mine.CopyFrom(model)
    derive._quantize_int8(mine, acts, frozenset(float_nodes))
    onnx.checker.check_model(mine)
    ops = [n.op_type for n in mine.graph.node]
    assert "Relu" not in ops  # folded into the uint8 clamp
    assert ops.count("QuantizeLinear") == len(acts) and ops.count("Conv") == 4
    weights = {t.name: numpy_helper.to_array(t) for t in mine.graph.initializer}
    assert weights["c1.w_quantized"].dtype == np.int8
    assert np.abs(weights["c1.w_quantized"]).max() == 64  # 7-bit, symmetric
    assert weights["c1.b_quantized"].dtype == np.int32
    assert weights["side.w"].dtype == np.float32  # the float node keeps its weights
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ours = _run(mine, x)
    np.testing.assert_array_equal(ours, _run(onnx.load_model(str(theirs)), x))
    # and it is not the float model: 8-bit arithmetic moves the output, a little
    float_out = _run(model, x)
    assert not np.array_equal(ours, float_out)
    assert float(np.abs(ours - float_out).mean()) < 0.02


def test_a_scale_for_a_tensor_the_graph_lacks_is_an_error() -> None:
    model = _small_net()
    with pytest.raises(OffcutError, match="no tensor nowhere"):
        derive._quantize_int8(model, {"input": (0.1, 128), "nowhere": (0.1, 0)}, frozenset())


def test_damaged_parameters_say_reinstall(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "x.qdq.json"
    bad.write_text('{"activations": {"input": [0.1]}}')
    monkeypatch.setattr(derive, "qdq_params_path", lambda name: bad)
    with pytest.raises(OffcutError, match=r"missing or damaged.*reinstall Offcut"):
        derive.load_qdq_params("x")
