"""Runs inside real GIMP 3 (``python-fu-eval``): build images, call the plug-in, dump results.

The host test (test_gimp.py) writes a JSON spec and runs
``gimp-console-3.x -i --batch-interpreter python-fu-eval -b 'exec(open(THIS).read())'`` with
``OFFCUT_E2E_SPEC`` naming the spec. For every case this script:

1. builds the image (base type, precision, layers with raw pixels, offsets, groups, masks,
   selection) exactly as described;
2. dumps, for each selected layer, the pixels the plug-in is expected to read (same rectangle,
   same babl format), so the host can ask the sidecar for the mask of the very same pixels;
3. calls ``plug-in-offcut-remove-background`` through the PDB (non-interactive or last-values)
   and records the status and error message;
4. dumps every resulting layer (pixels, and its mask in the mask's own linear format) and the
   selection as raw files, with a JSON manifest.

These files are test output in the test's temporary directory. Markers on stderr delimit each
case so the host can attribute the plug-in's ``OFFCUT-GIMP-DEBUG`` lines (also on stderr) to it.
It runs in GIMP's own Python, so it uses only the standard library and ``gi``.
"""

import json
import os
import sys
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402 - after require_version

PROC = "plug-in-offcut-remove-background"
LAYER_TYPES = {
    "RGB": Gimp.ImageType.RGB_IMAGE,
    "RGBA": Gimp.ImageType.RGBA_IMAGE,
    "GRAY": Gimp.ImageType.GRAY_IMAGE,
    "GRAYA": Gimp.ImageType.GRAYA_IMAGE,
}
BASES = {
    "rgb": Gimp.ImageBaseType.RGB,
    "gray": Gimp.ImageBaseType.GRAY,
    "indexed": Gimp.ImageBaseType.RGB,  # converted after the layers are filled
}


def mark(text):
    sys.stderr.write(f"OFFCUT-E2E {text}\n")
    sys.stderr.flush()


def sample_of(image):
    """The component type the plug-in reads: u8 for 8-bit images, float for deeper ones."""
    return "u8" if int(image.get_precision()) // 100 == 1 else "float"


def pixel_format(image, sample):
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    return ("Y'A " if gray else "R'G'B'A ") + sample


def dump(drawable, fmt, path, rect=None):
    if rect is None:
        rect = (0, 0, drawable.get_width(), drawable.get_height())
    x, y, w, h = rect
    data = drawable.get_buffer().get(
        Gegl.Rectangle.new(x, y, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE
    )
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    return {"file": os.path.basename(path), "format": fmt, "rect": [x, y, w, h]}


def build(case, work):
    spec = case["image"]
    precision = getattr(Gimp.Precision, spec.get("precision", "U8_NON_LINEAR"))
    image = Gimp.Image.new_with_precision(
        spec["width"], spec["height"], BASES[spec.get("base", "rgb")], precision
    )
    layers = []
    for ls in case["layers"]:
        if ls.get("group"):
            layer = Gimp.GroupLayer.new(image, ls["name"])
            image.insert_layer(layer, None, 0)
            layers.append(layer)
            continue
        kind = ls.get("type", "RGBA")
        if spec.get("base") == "gray" and not kind.startswith("GRAY"):
            kind = "GRAYA" if kind.endswith("A") else "GRAY"
        layer = Gimp.Layer.new(
            image,
            ls["name"],
            ls["width"],
            ls["height"],
            LAYER_TYPES[kind],
            100.0,
            Gimp.LayerMode.NORMAL,
        )
        image.insert_layer(layer, None, 0)
        layer.set_offsets(*ls.get("offset", (0, 0)))
        with open(os.path.join(work, ls["pixels"]), "rb") as fh:
            data = fh.read()
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, ls["width"], ls["height"]), "R'G'B'A u8", data)
        buf.flush()
        if ls.get("mask"):
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.BLACK))
        layers.append(layer)
    if spec.get("base") == "indexed":
        image.convert_indexed(
            Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 16, False, False, ""
        )
    if case.get("selection"):
        x, y, w, h = case["selection"]
        image.select_rectangle(Gimp.ChannelOps.REPLACE, x, y, w, h)
    drawables = [layers[i] for i in case.get("drawables", [len(layers) - 1])]
    image.set_selected_layers(drawables)
    return image, drawables


def run_case(case, out_root, work):
    out = os.path.join(out_root, case["id"])
    os.makedirs(out, exist_ok=True)
    record = {"id": case["id"], "inputs": [], "layers": []}
    image, drawables = build(case, work)
    sample = sample_of(image)
    if image.get_base_type() != Gimp.ImageBaseType.INDEXED:
        for i, layer in enumerate(drawables):
            if layer.is_group_layer():
                continue
            ok, x, y, w, h = layer.mask_intersect()
            if ok and w > 0 and h > 0:
                entry = dump(
                    layer,
                    pixel_format(image, sample),
                    os.path.join(out, f"in-{i}.raw"),
                    (x, y, w, h),
                )
                entry["layer"] = layer.get_name()
                record["inputs"].append(entry)

    proc = Gimp.get_pdb().lookup_procedure(PROC)
    cfg = proc.create_config()
    mode = case.get("run_mode", "NONINTERACTIVE")
    cfg.set_property("run-mode", getattr(Gimp.RunMode, mode))
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", drawables)
    for key, value in (case.get("args") or {}).items():
        cfg.set_property(key, value)
    mark(f"RUN {case['id']}")
    result = proc.run(cfg)
    mark(f"DONE {case['id']}")
    record["status"] = result.index(0).value_nick
    record["error"] = result.index(1) if result.length() > 1 else None
    if record["error"] is not None and not isinstance(record["error"], str):
        record["error"] = getattr(record["error"], "message", str(record["error"]))

    record["image"] = {
        "width": image.get_width(),
        "height": image.get_height(),
        "precision": image.get_precision().value_nick,
        "selected": [layer.get_name() for layer in image.get_selected_layers()],
    }
    if image.get_base_type() != Gimp.ImageBaseType.INDEXED:
        for i, layer in enumerate(image.get_layers()):
            entry = {
                "name": layer.get_name(),
                "visible": layer.get_visible(),
                "offset": list(layer.get_offsets()[1:]),
                "width": layer.get_width(),
                "height": layer.get_height(),
                "group": layer.is_group_layer(),
                "mask": None,
            }
            if not layer.is_group_layer():
                entry["pixels"] = dump(
                    layer, pixel_format(image, sample), os.path.join(out, f"layer-{i}.raw")
                )
                if layer.get_mask() is not None:
                    entry["mask"] = dump(
                        layer.get_mask(), "Y " + sample, os.path.join(out, f"mask-{i}.raw")
                    )
            record["layers"].append(entry)
        selection = image.get_selection()
        record["selection"] = {"empty": Gimp.Selection.is_empty(image)}
        record["selection"].update(
            dump(selection, "Y " + sample, os.path.join(out, "selection.raw"))
        )
    image.delete()
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(record, fh, indent=1)


def main():
    with open(os.environ["OFFCUT_E2E_SPEC"]) as fh:
        spec = json.load(fh)
    work = os.path.dirname(os.environ["OFFCUT_E2E_SPEC"])
    for case in spec["cases"]:
        try:
            run_case(case, spec["out"], work)
        except Exception:
            mark(f"CRASH {case['id']} {json.dumps(traceback.format_exc())}")
    mark("ALL-DONE")


if os.environ.get("OFFCUT_E2E_SPEC"):
    main()
