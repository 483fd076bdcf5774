"""Derived models: made on the user's machine from a verified model by a fixed recipe.

A derived model is never downloaded. Its catalog entry names a verified *source* model and a
*recipe* (``catalog.RECIPES``); :func:`derive` turns the source file's bytes into the derived
file's bytes. Every step is exact (float16 → float32 widening is lossless, integer sizes are
rescaled by an exact ratio), nothing depends on the machine, the clock or randomness, and the
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
