"""The ``float32`` recipe on a tiny graph shaped like the traced IS-Net (real ONNX, real ORT).

The real model is derived in tests/integration/test_models_derive.py; this checks the recipe's
two steps in a second: float16 → float32 (same outputs, no float16 left) and a new input size
(the Resize size constants rescaled exactly, or a clear error when they would not stay integers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx  # the derive extra; the test extra includes it, so a missing onnx fails here
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from offcut.errors import OffcutError
from offcut.models.catalog import Derivation, load_catalog
from offcut.models.derive import derive_bytes


def _traced_like(path: Path, size: int = 8) -> None:
    """X → Cast(f16) → MaxPool/2 → Conv(f16 weight) → Resize to [size]² and to [size/2]² →
    Add → Cast(f32): the upsample sizes are Concat(Slice(Shape(t)), Constant), as traced."""
    half = size // 2
    w = numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float16), "w")
    consts = [
        helper.make_node("Constant", [], ["s0"], value=numpy_helper.from_array(np.array([0]))),
        helper.make_node("Constant", [], ["s2"], value=numpy_helper.from_array(np.array([2]))),
        helper.make_node(
            "Constant", [], ["big"], value=numpy_helper.from_array(np.array([size, size]))
        ),
        helper.make_node(
            "Constant", [], ["small"], value=numpy_helper.from_array(np.array([half, half]))
        ),
    ]
    nodes = [
        *consts,
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("MaxPool", ["x16"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w"], ["c"]),
        helper.make_node("Shape", ["c"], ["shape"]),
        helper.make_node("Slice", ["shape", "s0", "s2"], ["nc"]),
        helper.make_node("Concat", ["nc", "big"], ["sz_big"], axis=0),
        helper.make_node("Concat", ["nc", "small"], ["sz_small"], axis=0),
        helper.make_node("Resize", ["c", "", "", "sz_big"], ["up"], mode="linear"),
        helper.make_node("Resize", ["c", "", "", "sz_small"], ["same"], mode="linear"),
        helper.make_node("Resize", ["same", "", "", "sz_big"], ["up2"], mode="linear"),
        helper.make_node("Add", ["up", "up2"], ["sum"]),
        helper.make_node("Cast", ["sum"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "traced",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, size, size])],
        [w],
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT16, [1, 1, half, half])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _specs(input_size: int):  # type: ignore[no-untyped-def]
    cat = load_catalog()
    source = dataclasses.replace(cat.get("isnet-general-use-fp16"), input_size=8)
    spec = dataclasses.replace(
        source,
        name="tiny",
        file="tiny.onnx",
        input_size=input_size,
        derived=Derivation(source.name, "float32"),
    )
    return spec, source


def _run(data: bytes | str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["y"], {"x": x})[0])


def test_float32_gives_the_same_outputs_and_no_float16(tmp_path: Path) -> None:
    src = tmp_path / "src.onnx"
    _traced_like(src)
    spec, source = _specs(8)
    data = derive_bytes(src, spec, source)
    assert data == derive_bytes(src, spec, source)  # deterministic
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    g = model.graph
    assert all(t.data_type == TensorProto.FLOAT for t in g.initializer)
    assert all(a.i != TensorProto.FLOAT16 for n in g.node for a in n.attribute if a.name == "to")
    assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in g.value_info)
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    want = _run(str(src), x)
    np.testing.assert_allclose(_run(data, x), want, rtol=2e-3, atol=2e-3)  # float16 rounding


def test_a_new_input_size_rescales_the_traced_sizes(tmp_path: Path) -> None:
    src = tmp_path / "src.onnx"
    _traced_like(src, 8)
    ref = tmp_path / "ref.onnx"
    _traced_like(ref, 12)  # the same graph traced at 12²: what the rescaled one must equal
    spec, source = _specs(12)
    data = derive_bytes(src, spec, source)
    x = np.random.default_rng(1).random((1, 1, 12, 12), dtype=np.float32)
    out = _run(data, x)
    assert out.shape == (1, 1, 12, 12)
    np.testing.assert_allclose(out, _run(str(ref), x), rtol=2e-3, atol=2e-3)


def test_a_size_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.onnx"
    _traced_like(src, 8)
    spec, source = _specs(6)  # 8 → 6 keeps 8² integral but makes the 4² upsample 3²...
    derive_bytes(src, spec, source)
    spec, source = _specs(7)  # ...and 7 would make it 3.5²
    with pytest.raises(OffcutError, match=r"Input size 7 does not divide"):
        derive_bytes(src, spec, source)
