"""Runs inside real GIMP 3 (``python-fu-eval``): time Offcut's procedure against its floors.

bench/gimp.py writes a JSON spec (``OFFCUT_BENCH_SPEC``) naming raw RGBA8 layers, and runs
``gimp-console-3.x -b 'exec(open(THIS).read())'``. For each layer this script builds a template
image (8-bit perceptual or 32-bit float linear), then takes turns, round after round, between:

* ``roundtrip``: ``Client.segment`` of the installed plug-in's own client copy on the very
  pixels the plug-in reads (same format, same mask format, same transport) — the sidecar round
  trip with no editor around it;
* ``gimp``: ``plug-in-offcut-remove-background`` (new-layer, u2netp) on a duplicate of the
  template, timed around the PDB call;
* ``noop``: a plug-in that does nothing (bench/gimp_noop_plugin.py), the floor of any Python
  plug-in call in this GIMP.

Each call prints one ``OFFCUT-BENCH`` line with its wall-clock start and end; the plug-in's
``OFFCUT-GIMP-DEBUG`` line (printed just before the call returns) carries its phase marks. Only
the standard library, ``gi`` and the plug-in's client are used.
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
NOOP = "plug-in-offcut-bench-noop"
BASELINE = PROC + "-baseline"  # the plug-in of an earlier commit, when bench/gimp.py installs it
PRECISIONS = {
    "u8": (Gimp.Precision.U8_NON_LINEAR, "R'G'B'A u8", "RGBA8", "GRAY8"),
    "float": (Gimp.Precision.FLOAT_LINEAR, "R'G'B'A float", "RGBAF32", "GRAYF32"),
}


def say(text):
    sys.stderr.write("OFFCUT-BENCH " + text + "\n")
    sys.stderr.flush()


def template(item, work):
    precision, read_format, _, _ = PRECISIONS[item["sample"]]
    w, h = item["width"], item["height"]
    image = Gimp.Image.new_with_precision(w, h, Gimp.ImageBaseType.RGB, precision)
    layer = Gimp.Layer.new(
        image, "Photo", w, h, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL
    )
    image.insert_layer(layer, None, 0)
    with open(os.path.join(work, item["pixels"]), "rb") as fh:
        data = fh.read()
    buf = layer.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B'A u8", data)
    buf.flush()
    del data
    read = buf.get(Gegl.Rectangle.new(0, 0, w, h), 1.0, read_format, Gegl.AbyssPolicy.NONE)
    return image, bytes(read)


def call_procedure(name, image, **args):
    proc = Gimp.get_pdb().lookup_procedure(name)
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", image.get_layers()[:1])
    for key, value in args.items():
        cfg.set_property(key, value)
    result = proc.run(cfg)
    return result.index(0).value_nick


def contenders(client, model, image, pixels, w, h, wire, mask, baseline):
    """The calls that take turns on one layer, by name."""

    def roundtrip():
        client.segment(pixels, w, h, wire, model=model, mask_format=mask)
        return "success"

    def offcut():
        dup = image.duplicate()
        try:
            return call_procedure(PROC, dup, model=model, output="new-layer")
        finally:
            dup.delete()

    def before():
        dup = image.duplicate()
        try:
            return call_procedure(BASELINE, dup, model=model, output="new-layer")
        finally:
            dup.delete()

    def noop():
        dup = image.duplicate()
        try:
            return call_procedure(NOOP, dup)
        finally:
            dup.delete()

    funcs = {"roundtrip": roundtrip, "gimp": offcut, "noop": noop}
    if baseline:
        funcs["baseline"] = before
    return funcs


def main():
    with open(os.environ["OFFCUT_BENCH_SPEC"]) as fh:
        spec = json.load(fh)
    work = os.path.dirname(os.environ["OFFCUT_BENCH_SPEC"])
    sys.path.insert(0, spec["plugin_dir"])
    from offcut_client import Client

    client = Client(app="bench-gimp", start=False, progress_timeout=600.0)
    for item in spec["items"]:
        image, pixels = template(item, work)
        _, _, wire, mask = PRECISIONS[item["sample"]]
        w, h = item["width"], item["height"]

        funcs = contenders(
            client, spec["model"], image, pixels, w, h, wire, mask, spec.get("baseline")
        )
        keys = list(funcs)
        n = len(keys)
        rounds = [keys] * spec["warmup"]
        rounds += [keys[r % n :] + keys[: r % n] for r in range(spec["repeats"])]
        for r, order in enumerate(rounds):
            for key in order:
                say(f"BEGIN {item['id']} {key}")
                t0 = time.time()
                p0 = time.perf_counter()
                status = funcs[key]()
                wall = time.perf_counter() - p0
                record = {"id": item["id"], "who": key, "round": r - spec["warmup"]}
                record.update({"t_call": t0, "t_return": time.time(), "wall": wall})
                record["status"] = status
                say("END " + json.dumps(record))
        image.delete()
    client.close()
    say("ALL-DONE")


if os.environ.get("OFFCUT_BENCH_SPEC"):
    main()
