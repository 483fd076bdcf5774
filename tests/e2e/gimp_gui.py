"""Runs inside the real GIMP 3 GUI (under Xvfb): interactive runs of the plug-in, step by step.

Started by ``gimp-3.x --batch-interpreter python-fu-eval`` from gimp_driver.gui_session; an
xdotool script in the same rootfs answers the dialogs (GUI_ACTIONS in gimp_driver.py). Each step
prints ``OFFCUT-E2E STEP name`` on stderr before it calls the procedure (the actions wait for it)
and appends one JSON line to ``steps.jsonl`` afterwards: status, error and the layers left.
"""

import json
import os
import sys
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402 - after require_version

PROC = "plug-in-offcut-remove-background"
SPEC = {}  # filled from $OFFCUT_E2E_SPEC before main() runs
WORK = ""


def mark(text):
    sys.stderr.write(f"OFFCUT-E2E {text}\n")
    sys.stderr.flush()


def wait_for(name, timeout=60.0):
    """Pause (GIMP's UI keeps running) until the actions script creates ``name``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(WORK, name)) and time.monotonic() < deadline:
        time.sleep(0.2)


def photo_image(mask=False, width=None, height=None):
    """A displayed RGB image with one layer "Photo" holding the test photo (or white)."""
    width = width or SPEC["photo"]["width"]
    height = height or SPEC["photo"]["height"]
    image = Gimp.Image.new(width, height, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(
        image, "Photo", width, height, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL
    )
    image.insert_layer(layer, None, 0)
    if (width, height) == (SPEC["photo"]["width"], SPEC["photo"]["height"]):
        with open(os.path.join(WORK, SPEC["photo"]["file"]), "rb") as fh:
            data = fh.read()
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, width, height), "R'G'B'A u8", data)
        buf.flush()
    else:  # a big plain image: only its size matters (a slow request to cancel)
        layer.fill(Gimp.FillType.WHITE)
        image.select_ellipse(
            Gimp.ChannelOps.REPLACE, width // 4, height // 4, width // 2, height // 2
        )
        Gimp.context_set_foreground(Gegl.Color.new("red"))
        layer.edit_fill(Gimp.FillType.FOREGROUND)
        Gimp.Selection.none(image)
    if mask:
        layer.add_mask(layer.create_mask(Gimp.AddMaskType.BLACK))
    Gimp.Display.new(image)
    Gimp.displays_flush()
    return image, layer


def layer_info(image):
    out = []
    for layer in image.get_layers():
        mask = layer.get_mask()
        info = {"name": layer.get_name(), "visible": layer.get_visible(), "mask_max": None}
        if mask is not None:
            w, h = mask.get_width(), mask.get_height()
            data = mask.get_buffer().get(
                Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE
            )
            info["mask_max"] = max(bytes(data))
        out.append(info)
    return out


def step(name, image, layer, mode, **args):
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    cfg = proc.create_config()
    cfg.set_property("run-mode", mode)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [layer])
    for key, value in args.items():
        cfg.set_property(key, value)
    mark(f"STEP {name}")
    result = proc.run(cfg)
    error = result.index(1) if result.length() > 1 else None
    record = {
        "step": name,
        "status": result.index(0).value_nick,
        "error": error if isinstance(error, str) or error is None else str(error),
        "layers": layer_info(image),
    }
    with open(os.path.join(WORK, "steps.jsonl"), "a") as fh:
        fh.write(json.dumps(record) + "\n")
    mark(f"STEP-DONE {name}")


def main():
    interactive = Gimp.RunMode.INTERACTIVE
    image, layer = photo_image(mask=True)
    step("question-cancel", image, layer, interactive)
    step("question-replace", image, layer, interactive)
    mark("SHOW-RESULT")
    wait_for("result-shot-done")
    record = {"step": "after-one-undo", "status": "n/a", "error": None, "layers": layer_info(image)}
    with open(os.path.join(WORK, "steps.jsonl"), "a") as fh:
        fh.write(json.dumps(record) + "\n")
    image, layer = photo_image()
    step("interactive-mask-layer", image, layer, interactive)
    image, layer = photo_image()
    step("last-values", image, layer, Gimp.RunMode.WITH_LAST_VALS)
    big = SPEC["big"]
    image, layer = photo_image(width=big[0], height=big[1])
    step(
        "progress-cancel",
        image,
        layer,
        Gimp.RunMode.NONINTERACTIVE,
        model=SPEC["slow_model"],  # seconds of inference: the click always lands mid-run
        output="new-layer",
        refine=True,
        decontaminate=True,
    )
    mark("ALL-DONE")


def main_language():
    """In another language: the dialog (the actions shoot and cancel it), then a refusal."""
    image, layer = photo_image()
    step("dialog", image, layer, Gimp.RunMode.INTERACTIVE)
    indexed, layer = photo_image()
    indexed.convert_indexed(
        Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 16, False, False, ""
    )
    step("error", indexed, layer, Gimp.RunMode.NONINTERACTIVE)
    mark("ALL-DONE")


if os.environ.get("OFFCUT_E2E_SPEC"):
    with open(os.environ["OFFCUT_E2E_SPEC"]) as _fh:
        SPEC.update(json.load(_fh))
    WORK = os.path.dirname(os.environ["OFFCUT_E2E_SPEC"])
    if SPEC.get("session") == "language":
        main_language()
    else:
        main()
