"""Static int8 (QDQ) IS-Net: how the int8 recipe's parameters were measured, reproducible.

Issue "Performance II" allowed static int8 quantization calibrated on data that may be used
for it. Both evaluation sets are evaluation-only (their SOURCE.md), so calibration reads four
photos bundled in a scikit-image wheel, each dedicated to the public domain (below); the wheel
is downloaded by hand (``pip download scikit-image==0.26.0 --no-deps -d /tmp/whl``) and read as
a zip archive, so scikit-image is never installed and never a dependency of Offcut. Each
photo's sha256 is checked: other bytes would be another calibration, and the script stops.

``python bench/int8.py WHEEL`` runs ONNX Runtime's own ``quant_pre_process`` and
``quantize_static`` (QDQ, per-channel 7-bit int8 weights as recommended for AVX2 without VNNI,
uint8 activations, 99.99th-percentile ranges) on the float32 copy by the shipped recipe, pruned
to the first output (the side maps are never read), keeping the final side-1 convolution, its
upsample and the sigmoid in float32, and writes the scales and zero points it chose to
``models/isnet-general-use-int8.qdq.json``. The catalog's ``int8`` recipe
(``offcut.models.derive``) builds the same graph from those numbers on the user's machine,
output for output equal to ONNX Runtime's file (tests/integration/test_models_derive.py), so
neither ONNX Runtime's quantizer nor the photos are needed there. ``bench/quality.py
--frontier --int8-wheel WHEEL`` also times and scores ONNX Runtime's own file.
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

#: Each activation's range keeps this share of its calibration values and clips the rest. With
#: the full range (min/max) a few extreme values set the step of all 256 levels, and fine hair
#: turned to speckle (Grad on alphamatting27 32.8 against float32's 19.4, docs/quality.md); at
#: 99.99 % it is 19.5.
PERCENTILE = 99.99

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
    from offcut.models.derive import _first_output_only

    spec = load_catalog().get("isnet-general-use-fp16")
    tensors = [preprocess(im, spec) for im in calibration_images(wheel)]
    model = onnx.load_model(str(fp32))
    _first_output_only(model)
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        """The photos one at a time; ``set_range`` lets the calibrator take them in strides."""

        def __init__(self) -> None:
            self.at, self.end = 0, len(tensors)

        def __len__(self) -> int:
            return len(tensors)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.at, self.end = start_index, end_index

        def get_next(self) -> dict[str, Any] | None:
            if self.at >= self.end:
                return None
            self.at += 1
            return {input_name: tensors[self.at - 1]}

    with tempfile.TemporaryDirectory(prefix="offcut-int8-") as tmp:
        pruned, pre = Path(tmp) / "pruned.onnx", Path(tmp) / "pre.onnx"
        onnx.save_model(model, str(pruned))
        quant_pre_process(str(pruned), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(FLOAT_NODES), calibrate_method=CalibrationMethod.Percentile,
            # one photo per pass (a pass holds every activation of the graph in memory)
            extra_options={"CalibPercentile": PERCENTILE, "CalibStridedMinMax": 1},
        )  # fmt: skip


def qdq_params(quantized: Path) -> dict[str, Any]:
    """The activation scales and zero points ONNX Runtime chose, as the int8 recipe reads them.

    Every QuantizeLinear of an activation (not a weight) gives one entry: the tensor it reads,
    its scale and its zero point. The float32 values are written as Python floats, which hold
    them exactly, so the recipe rebuilds the very same float32 scales.
    """
    import onnx
    from onnx import numpy_helper

    g = onnx.load_model(str(quantized), load_external_data=False).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    acts = {}
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init:
            scale, zero = init[node.input[1]], init[node.input[2]]
            acts[node.input[0]] = [float(scale), int(zero)]
    return {"activations": dict(sorted(acts.items())), "float_nodes": sorted(FLOAT_NODES)}


def main(argv: list[str] | None = None) -> int:
    """Calibrate IS-Net and write the int8 recipe's parameters (models/<name>.qdq.json)."""
    import argparse
    import json
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "sidecar"))
    from offcut.models.catalog import load_catalog
    from offcut.models.derive import derive_bytes, qdq_params_path
    from offcut.models.store import ModelStore

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("wheel", type=Path, help="the scikit-image 0.26.0 wheel (calibration photos)")
    p.add_argument("--name", default="isnet-general-use-int8")
    a = p.parse_args(argv)
    cat, store = load_catalog(), ModelStore()
    source = cat.get("isnet-general-use-fp16")
    with tempfile.TemporaryDirectory(prefix="offcut-int8-") as tmp:
        fp32, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(
            derive_bytes(store.path(source), cat.get("isnet-general-use-fp32"), source)
        )
        quantize(fp32, a.wheel, out)
        params = qdq_params(out)
        dest = qdq_params_path(a.name)
        dest.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
        print(f"{dest}: {len(params['activations'])} activations")
        # The recipe must rebuild ONNX Runtime's model from these numbers: same outputs.
        mine = Path(tmp) / "recipe.onnx"
        mine.write_bytes(derive_bytes(store.path(source), cat.get(a.name), source))
        diff = max_difference(out, mine)
        print(f"recipe vs ONNX Runtime's quantizer: largest output difference {diff}")
    return 0 if diff == 0 else 1


def max_difference(a: Path, b: Path) -> float:
    """The largest difference between two models' first outputs on one fixed random input."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32) * 0.5
    outs = []
    for path in (a, b):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    return float(np.abs(outs[0] - outs[1]).max())


if __name__ == "__main__":
    raise SystemExit(main())
