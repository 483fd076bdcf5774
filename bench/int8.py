"""Static int8 (QDQ) IS-Net: the experiment of docs/quality.md's frontier, reproducible.

Issue "Performance II" allowed static int8 quantization calibrated on data that may be used
for it. Both evaluation sets are evaluation-only (their SOURCE.md), so calibration reads four
photos bundled in a scikit-image wheel, each dedicated to the public domain (below); the wheel
is downloaded by hand (``pip download scikit-image==0.26.0 --no-deps -d /tmp/whl``) and read as
a zip archive, so scikit-image is never installed and never a dependency of Offcut. Each
photo's sha256 is checked: other bytes would be another calibration, and the script stops.

The model is not shipped (docs/decisions.md §10 says why), so this produces an experiment
file, not a catalog model: the float32 copy by the shipped recipe, pruned to the first output
(the side maps are never read), then ONNX Runtime's own ``quant_pre_process`` and
``quantize_static`` (QDQ, per-channel 7-bit int8 weights as recommended for AVX2 without VNNI,
uint8 activations, min/max ranges), keeping the final side-1 convolution, its upsample and the
sigmoid in float32. ``bench/quality.py --frontier --int8-wheel WHEEL`` times and scores it
next to the other variants.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

#: The calibration photos: wheel member, sha256 of its bytes, and the licence scikit-image
#: 0.26.0 states for it (skimage/data/_fetchers.py, the loader's docstring).
CALIBRATION: tuple[tuple[str, str, str], ...] = (
    (
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "Eileen Collins, NASA Great Images database: 'No known copyright restrictions, released "
        "into the public domain.'",
    ),
    (
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "'No copyright restrictions. CC0 by the photographer (Stefan van der Walt).'",
    ),
    (
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "'No copyright restrictions. CC0 by the photographer (Rachel Michetti).'",
    ),
    (
        "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        "'No copyright restrictions. CC0 by the photographer (Lav Varshney).' (grey, fed as RGB)",
    ),
)

#: Kept in float32: the last convolution (64 → 1 channel, cheap), its upsample to 1024² and the
#: sigmoid, so the mask is not read through 256 levels of a logit range.
FLOAT_NODES = ("/side1/Conv", "/Resize_5", "/Sigmoid")


def calibration_images(wheel: Path) -> list[Any]:
    """The calibration photos and their mirror images, or SystemExit saying what is missing."""
    from PIL import Image

    if not wheel.is_file():
        raise SystemExit(
            f"{wheel}: no such file. Calibration reads photos from a scikit-image wheel: run "
            "`pip download scikit-image==0.26.0 --no-deps -d /tmp/whl` and pass the .whl."
        )
    images = []
    with zipfile.ZipFile(wheel) as z:
        for member, sha256, _licence in CALIBRATION:
            try:
                data = z.read(member)
            except KeyError:
                raise SystemExit(f"{wheel} has no {member}: not scikit-image 0.26") from None
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SystemExit(f"{wheel}: {member} is not the photo calibrated on (sha256)")
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
    return images + [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]


def first_output_only(model: Any) -> None:
    """Drop every graph output but the first, and the nodes and weights only they needed."""
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


def quantize(fp32: Path, wheel: Path, dest: Path) -> None:
    """Write the int8 QDQ model made from the float32 IS-Net file ``fp32`` to ``dest``."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from offcut.engine.engine import preprocess
    from offcut.models.catalog import load_catalog

    spec = load_catalog().get("isnet-general-use-fp16")
    tensors = [preprocess(im, spec) for im in calibration_images(wheel)]
    model = onnx.load_model(str(fp32))
    first_output_only(model)
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = iter(tensors)

        def get_next(self) -> dict[str, Any] | None:
            t = next(self.left, None)
            return None if t is None else {input_name: t}

    with tempfile.TemporaryDirectory(prefix="offcut-int8-") as tmp:
        pruned, pre = Path(tmp) / "pruned.onnx", Path(tmp) / "pre.onnx"
        onnx.save_model(model, str(pruned))
        quant_pre_process(str(pruned), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(FLOAT_NODES), calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
