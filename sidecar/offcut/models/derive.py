"""Derived models: made on the user's machine from a verified model by a fixed recipe.

A derived model is never downloaded. Its catalog entry names a verified *source* model and a
*recipe* (``catalog.RECIPES``); :func:`derive` turns the source file's bytes into the derived
file's bytes. Every step is exact (float16 → float32 widening is lossless, integer sizes are
rescaled by an exact ratio, int8 values are rounded from fixed scales with IEEE arithmetic),
nothing depends on the machine, the clock or randomness, and the
protobuf encoding of an ONNX model is deterministic, so the result has one sha256, which the
catalog records and :meth:`offcut.models.store.ModelStore.derive` checks like any download.

The ``onnx`` package (the format's own reference library) reads and writes the graph; it is
imported only here, only when a model is derived, so serving never needs it (the ``derive``
extra in pyproject.toml).

Why the ``float32`` recipe exists (docs/decisions.md, docs/quality.md): ONNX Runtime's CPU
provider runs most float16 operators of this graph by casting to float32 and back, so a
float32 copy of the same weights gives the same masks faster; and the IS-Net graph, traced at
1024², carries its upsampling sizes as constants, so a smaller input needs those constants
rescaled, not just a different tensor fed.

Why the ``int8`` recipe exists: on a CPU the convolutions are nearly all of IS-Net's time, and
ONNX Runtime's 8-bit convolutions take about half as long as float32 ones; with activation
ranges that clip the rarest 0.01 % of values the masks keep their fine hair (docs/quality.md).
Its scales are data, not calibration run here, so that every machine makes the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from offcut.client.wire import INTERNAL
from offcut.errors import OffcutError
from offcut.models.catalog import ModelSpec

# ONNX TensorProto.DataType values (the stable wire enum; named here to avoid importing onnx).
_FLOAT = 1
_FLOAT16 = 10


def require_onnx() -> Any:
    """The ``onnx`` module, or an error that says how to get it."""
    try:
        import onnx
    except ImportError:
        raise OffcutError(
            INTERNAL,
            "Deriving a model needs the 'onnx' package, which is not installed: run "
            "`pip install 'offcut[derive]'` (or `pip install onnx`) in Offcut's environment.",
        ) from None
    return onnx


def derive_bytes(source_path: Path, spec: ModelSpec, source: ModelSpec) -> bytes:
    """The derived model's file content, from the source model's file.

    The caller has verified the source file; this function only transforms it. The result is
    checked by the caller against ``spec.sha256``.
    """
    assert spec.derived is not None and spec.derived.source == source.name
    onnx = require_onnx()
    model = onnx.load_model(os.fspath(source_path), load_external_data=False)
    if spec.derived.recipe == "float32":
        _to_float32(onnx, model)
        if spec.input_size != source.input_size:
            _resize_input(onnx, model, source.input_size, spec.input_size)
    elif spec.derived.recipe == "int8":
        _to_float32(onnx, model)
        _first_output_only(model)
        _drop_float_casts(model.graph)
        _quantize_int8(model, *load_qdq_params(spec.name))
    else:  # the catalog refuses unknown recipes; this is a programming error
        raise AssertionError(spec.derived.recipe)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def _to_float32(onnx: Any, model: Any) -> None:
    """Widen every float16 tensor, constant, cast target and declared type to float32.

    The Casts the float16 export wrapped around its inputs, outputs and float32-only operators
    become float32 → float32 casts, which ONNX Runtime's graph optimiser removes.
    """
    from onnx import numpy_helper

    g = model.graph

    def widened(t: Any) -> Any:
        arr = numpy_helper.to_array(t).astype("float32")
        return numpy_helper.from_array(arr, t.name)

    for t in g.initializer:
        if t.data_type == _FLOAT16:
            t.CopyFrom(widened(t))
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == _FLOAT16:
                attr.t.CopyFrom(widened(attr.t))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT16:
                attr.i = _FLOAT
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == _FLOAT16:
            vi.type.tensor_type.elem_type = _FLOAT


def qdq_params_path(name: str) -> Path:
    """Where the int8 recipe's quantization parameters for model ``name`` ship: by the catalog."""
    from offcut.models.catalog import default_catalog_path

    return default_catalog_path().parent / f"{name}.qdq.json"


def load_qdq_params(name: str) -> tuple[dict[str, tuple[float, int]], frozenset[str]]:
    """An int8 model's activation scales and zero points, and the nodes that stay float32.

    The first maps a tensor name to (scale, zero point). They were measured once, by ONNX
    Runtime's calibrator on public-domain photos (``bench/int8.py``), and ship as data, because
    calibration sums floats on the machine it runs on and could give another scale elsewhere;
    with the ranges fixed, the recipe is exact.
    """
    import json

    where = qdq_params_path(name)
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
        acts = {t: (float(sc), int(zp)) for t, (sc, zp) in raw["activations"].items()}
        return acts, frozenset(str(n) for n in raw["float_nodes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OffcutError(
            INTERNAL,
            f"The int8 parameters of {name} are missing or damaged ({exc}): reinstall Offcut.",
        ) from None


def _drop_float_casts(g: Any) -> None:
    """Remove float32 → float32 Casts (what the float16 export's casts became), as ONNX
    Runtime's optimiser does: their readers read the Cast's input. One that writes a graph
    output stays, so the output keeps its name.
    """
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == _FLOAT and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for k, i in enumerate(node.input):
            while i in rename:
                i = rename[i]
            node.input[k] = i
    del g.node[:]
    g.node.extend(keep)


def _first_output_only(model: Any) -> None:
    """Drop every graph output but the first, and the nodes and weights only they needed.

    IS-Net's side outputs are never read; without them their branches are not computed.
    """
    g = model.graph
    del g.output[1:]
    producer = {out: node for node in g.node for out in node.output}
    live: set[str] = set()  # node names (unique in this graph)
    stack = [g.output[0].name]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in live:
            continue
        live.add(node.name)
        stack.extend(i for i in node.input if i)
    keep = [n for n in g.node if n.name in live]
    used = {i for n in keep for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]


def _quantize_int8(
    model: Any, params: dict[str, tuple[float, int]], float_nodes: frozenset[str]
) -> None:
    """Static int8 in QDQ form: the graph ONNX Runtime's ``quantize_static`` makes, by hand.

    Every activation tensor in ``params`` gets a QuantizeLinear → DequantizeLinear pair (uint8);
    each Conv whose input is such a tensor gets per-channel int8 weights (symmetric, |q| ≤ 64,
    the 7-bit range that AVX2 without VNNI needs) and int32 biases at input scale × weight
    scale, each read through a DequantizeLinear; a Relu right after such a Conv is dropped,
    because the uint8 clamp at zero point 0 is the Relu. ONNX Runtime fuses the pairs into
    integer kernels. The arithmetic is ONNX Runtime's (checked output for output against its
    quantizer), done in numpy, so the bytes depend only on this code and the parameters.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    init = {t.name: t for t in g.initializer}
    producer = {out: node for node in g.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    # 1. Relu folding: Conv → Relu becomes a Conv that writes the Relu's output.
    drop = set()
    for node in g.node:
        if node.op_type != "Relu" or node.output[0] not in params:
            continue
        src = producer.get(node.input[0])
        if src is None or src.op_type != "Conv" or len(consumers[node.input[0]]) != 1:
            continue
        if params[node.output[0]][1] != 0:
            raise OffcutError(INTERNAL, f"int8: {node.name} has a non-zero zero point.")
        src.output[0] = node.output[0]
        drop.add(node.name)
    nodes = [n for n in g.node if n.name not in drop]
    written = {out for n in nodes for out in n.output} | {i.name for i in g.input}
    missing = sorted(set(params) - written)
    if missing:
        raise OffcutError(INTERNAL, f"int8: no tensor {missing[0]} in the graph.")
    new_inits: list[Any] = []

    def const(name: str, arr: Any) -> str:
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    # 2. A Q → DQ pair after every listed activation; its consumers read the DQ output.
    out_nodes: list[Any] = []
    qdq_of: dict[str, str] = {}
    for t, (sc, zp) in sorted(params.items()):
        s_name = const(f"{t}_scale", np.array(sc, np.float32))
        z_name = const(f"{t}_zero_point", np.array(zp, np.uint8))
        q, dq = f"{t}_QuantizeLinear_Output", f"{t}_DequantizeLinear_Output"
        qdq_of[t] = dq
        out_nodes.append(
            helper.make_node("QuantizeLinear", [t, s_name, z_name], [q], name=f"{t}_QuantizeLinear")
        )
        out_nodes.append(
            helper.make_node(
                "DequantizeLinear", [q, s_name, z_name], [dq], name=f"{t}_DequantizeLinear"
            )
        )
    for node in nodes:
        for k, i in enumerate(node.input):
            if i in qdq_of:
                node.input[k] = qdq_of[i]
    quantized_from = {dq: t for t, dq in qdq_of.items()}
    # 3. Conv weights and biases behind the pairs: int8 per channel, int32 biases.
    for node in nodes:
        if node.op_type != "Conv" or node.name in float_nodes:
            continue
        x = quantized_from.get(node.input[0])
        if x is None:
            raise OffcutError(INTERNAL, f"int8: {node.name} has no quantized input.")
        x_scale = np.float32(params[x][0])
        w = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
        absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        w_scale = np.where(absmax > 0, absmax / np.float32(64), np.float32(1)).astype(np.float32)
        wq = np.clip(np.round(w / w_scale.reshape(-1, *[1] * (w.ndim - 1))), -64, 64).astype(
            np.int8
        )
        wn = node.input[1]
        const(f"{wn}_quantized", wq)
        const(f"{wn}_scale", w_scale)
        const(f"{wn}_zero_point", np.zeros(w.shape[0], np.int8))
        out_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{wn}_quantized", f"{wn}_scale", f"{wn}_zero_point"],
            [f"{wn}_DequantizeLinear_Output"], name=f"{wn}_DequantizeLinear", axis=0,
        ))  # fmt: skip
        node.input[1] = f"{wn}_DequantizeLinear_Output"
        if len(node.input) > 2 and node.input[2]:
            bn = node.input[2]
            b = numpy_helper.to_array(init[bn]).astype(np.float32)
            b_scale = (x_scale * w_scale).astype(np.float32)
            # in float64, as ONNX Runtime's quantizer divides
            q_bias = np.round(b.astype(np.float64) / b_scale.astype(np.float64))
            if np.abs(q_bias).max() > np.iinfo(np.int32).max:
                raise OffcutError(INTERNAL, f"int8: {node.name}'s bias does not fit in int32.")
            q_bias = q_bias.astype(np.int32)
            const(f"{bn}_quantized", q_bias)
            const(f"{bn}_quantized_scale", b_scale)
            const(f"{bn}_quantized_zero_point", np.zeros(w.shape[0], np.int32))
            out_nodes.append(helper.make_node(
                "DequantizeLinear",
                [f"{bn}_quantized", f"{bn}_quantized_scale", f"{bn}_quantized_zero_point"],
                [f"{bn}_DequantizeLinear_Output"], name=f"{bn}_DequantizeLinear", axis=0,
            ))  # fmt: skip
            node.input[2] = f"{bn}_DequantizeLinear_Output"
    used = {i for n in (*nodes, *out_nodes) for i in n.input}
    kept = [t for t in g.initializer if t.name in used] + [t for t in new_inits if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    ready = {i.name for i in g.input} | {t.name for t in kept}
    ordered = _topological_order(out_nodes + nodes, ready)
    del g.node[:]
    g.node.extend(ordered)
    opset = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    opset.version = max(opset.version, 13)  # per-channel DequantizeLinear


def _topological_order(pending: list[Any], ready: set[str]) -> list[Any]:
    """The nodes, each after the producers of its inputs (ONNX requires it); ``ready`` holds
    the names available from the start (graph inputs, initializers)."""
    ready = ready | {""}  # an omitted optional input
    ordered: list[Any] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise OffcutError(INTERNAL, "int8: the graph has a cycle or a missing input.")
        pending = rest
    return ordered


def _resize_input(onnx: Any, model: Any, old: int, new: int) -> None:
    """Make a graph traced at ``old``² take ``new``² input.

    The tracer stored each upsample's target height and width as a Constant feeding the
    ``sizes`` of a Resize (``Concat(Slice(Shape(x)), Constant[h, w])``); those are rescaled by
    ``new / old`` exactly (a size that would not stay an integer is an error, never rounded),
    the input's declared size is set, and shapes the tracer recorded for ``old`` are dropped so
    that ONNX Runtime infers them again.
    """
    from onnx import numpy_helper

    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    constants: set[str] = set()  # by output name: protobuf wrappers have no stable identity
    for node in g.node:
        if node.op_type != "Resize":
            continue
        sizes = producer.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        const = producer.get(sizes.input[-1]) if sizes is not None else None
        if sizes is None or sizes.op_type != "Concat" or const is None:
            raise OffcutError(INTERNAL, f"Resize {node.name} has no constant sizes to rescale.")
        if const.op_type != "Constant":
            raise OffcutError(INTERNAL, f"Resize {node.name}'s sizes are not a Constant.")
        constants.add(const.output[0])
    for node in g.node:
        if node.op_type != "Constant" or node.output[0] not in constants:
            continue
        attr = next(a for a in node.attribute if a.name == "value")
        arr = numpy_helper.to_array(attr.t)
        scaled = arr * new // old
        if (scaled * old != arr * new).any():
            raise OffcutError(
                INTERNAL, f"Input size {new} does not divide the graph's sizes {arr.tolist()}."
            )
        attr.t.CopyFrom(numpy_helper.from_array(scaled.astype(arr.dtype), attr.t.name))
    dims = g.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = new
    dims[3].dim_value = new
    del g.value_info[:]
    for out in g.output:
        for dim in out.type.tensor_type.shape.dim[2:]:
            dim.ClearField("dim_value")  # unknown: ONNX Runtime infers it
