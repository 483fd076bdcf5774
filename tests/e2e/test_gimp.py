"""End-to-end tests of the GIMP plug-in in the real GIMP of each rootfs of the editor matrix.

GIMP 3.0 (Debian trixie) and GIMP 3.2 (sid) run the same tests on the same plug-in files. The
plug-in is installed with ``offcut install gimp --profile`` into a fresh GIMP profile, and
GIMP (``gimp-console-3.x``, batch mode) builds images, calls
``plug-in-offcut-remove-background`` through the PDB and dumps what it produced (gimp_batch.py).
Every created layer, mask and selection is compared pixel by pixel with the mask the same
sidecar returns to a direct client call on the very same pixels (the pixels GIMP dumped from
the layer in the format the plug-in reads).

Each batch runs twice: with GIMP's Python seeing python3-zmq and python3-msgpack, and with
both hidden by a PYTHONPATH shim; the plug-in reports which transport the client used.
"""

from __future__ import annotations

import ast
import contextlib
import gettext
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from offcut_gimp import run as gimp_run

from offcut.client import Client
from offcut.models.catalog import load_catalog
from tests.conftest import SHARED_EVAL, Sidecar

from .gimp_driver import (
    DEBUG_PREFIX,
    LANGUAGE_ACTIONS,
    BatchRun,
    CaseOutput,
    GimpHarness,
    gui_session,
)
from .rootfs import DOCS_SUITE, SELECTED, Rootfs

pytestmark = pytest.mark.e2e

W, H = 160, 120
OUTPUTS = ("new-layer", "layer-mask", "selection", "mask-layer")
TRANSPORTS = {"pyzmq": False, "builtin": True}  # transport → hide zmq/msgpack from GIMP?

# ---------------------------------------------------------------------------------------------
# Test images
# ---------------------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 0, real: bool = True) -> np.ndarray:
    """An RGBA u8 photo: a real one from ../shared/eval when present, else a synthetic scene.

    The GUI screenshots go into docs/, so they use the synthetic scene (``real=False``): the
    evaluation photos may be used for testing only, not published.
    """
    source = SHARED_EVAL / "ecssd200" / "images" / f"{seed + 1:04d}.jpg"
    if real and source.is_file():
        from PIL import Image

        with Image.open(source) as im:
            rgb = np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR))
    else:
        yy, xx = np.mgrid[0:height, 0:width]
        rgb = np.stack(
            [xx * 255 // width, yy * 255 // height, np.full_like(xx, 90 + 40 * seed)], -1
        )
        r = min(width, height) / 3
        disc = (xx - width * 0.55) ** 2 + (yy - height * 0.45) ** 2 < r**2
        rgb[disc] = (230, 120, 30)  # an orange ball on a stand
        stand = (abs(xx - width * 0.55) < r / 5) & (yy > height * 0.45) & (yy < height * 0.95)
        rgb[stand] = (60, 40, 30)
    alpha = np.full((height, width, 1), 255, np.uint8)
    return np.concatenate([rgb.astype(np.uint8), alpha], -1)


def with_alpha_ramp(rgba: np.ndarray) -> np.ndarray:
    """Give a layer real transparency: a fully transparent left band and a ramp next to it."""
    out = rgba.copy()
    width = out.shape[1]
    ramp = np.clip(np.arange(width) * 255 // max(1, width // 3), 0, 255).astype(np.uint8)
    out[..., 3] = ramp[None, :]
    return out


FILES = {
    "photo.raw": photo(W, H).tobytes(),
    "offset.raw": with_alpha_ramp(photo(120, 90, seed=1)).tobytes(),
    "small.raw": photo(80, 60, seed=2).tobytes(),
    "white.raw": np.full((H, W, 4), 255, np.uint8).tobytes(),
    "tiny.raw": photo(40, 40, seed=3).tobytes(),
}


def layer(name, pixels, width=W, height=H, offset=(0, 0), kind="RGB", **extra):
    spec = {"name": name, "pixels": pixels, "width": width, "height": height}
    spec.update({"offset": list(offset), "type": kind, **extra})
    return spec


KINDS = {
    # 8-bit RGB image, one opaque layer filling the canvas.
    "rgb8": {
        "image": {"base": "rgb", "width": W, "height": H},
        "layers": [layer("Photo", "photo.raw")],
    },
    # An RGBA layer smaller than the canvas, offset so that it sticks out of it (right and top).
    "rgba-offset": {
        "image": {"base": "rgb", "width": W, "height": H},
        "layers": [
            layer("Background", "white.raw"),
            layer("Cutout", "offset.raw", 120, 90, (70, -20), "RGBA"),
        ],
    },
    "gray8": {
        "image": {"base": "gray", "width": W, "height": H},
        "layers": [layer("Photo", "photo.raw", kind="GRAY")],
    },
    # GIMP's "32-bit floating point, linear light" (the default for 32-bit float).
    "float32": {
        "image": {"base": "rgb", "width": W, "height": H, "precision": "FLOAT_LINEAR"},
        "layers": [layer("Photo", "photo.raw", kind="RGBA")],
    },
}


def case(case_id: str, kind: str, **extra) -> dict:
    spec = json.loads(json.dumps(KINDS[kind]))
    spec["id"] = case_id
    spec.update(extra)
    return spec


def cases() -> list[dict]:
    out = [
        case(f"{kind}--{output}", kind, args={"output": output})
        for kind in KINDS
        for output in OUTPUTS
    ]
    out += [
        case("roi--new-layer", "rgb8", selection=[30, 20, 80, 60], args={"output": "new-layer"}),
        case("roi--selection", "rgb8", selection=[30, 20, 80, 60], args={"output": "selection"}),
        case(
            "roi-offset--layer-mask",
            "rgba-offset",
            selection=[100, 0, 60, 50],
            args={"output": "layer-mask"},
        ),
        case("refine--layer-mask", "rgb8", args={"output": "layer-mask", "refine": True}),
        case(
            "decontaminate--new-layer",
            "rgba-offset",
            args={"output": "new-layer", "decontaminate": True},
        ),
        case("last-values", "rgb8", run_mode="WITH_LAST_VALS"),
        case(
            "u16--layer-mask",
            "rgb8",
            image={"base": "rgb", "width": W, "height": H, "precision": "U16_NON_LINEAR"},
            args={"output": "layer-mask"},
        ),
        case(
            "u32--mask-layer",
            "rgb8",
            image={"base": "rgb", "width": W, "height": H, "precision": "U32_LINEAR"},
            args={"output": "mask-layer"},
        ),
        case(
            "half-gray--new-layer",
            "gray8",
            image={"base": "gray", "width": W, "height": H, "precision": "HALF_NON_LINEAR"},
            args={"output": "new-layer"},
        ),
        {
            "id": "two-layers--new-layer",
            "image": {"base": "rgb", "width": W, "height": H},
            "layers": [
                layer("Back", "photo.raw"),
                layer("Front", "small.raw", 80, 60, (50, 40), "RGBA"),
            ],
            "drawables": [0, 1],
            "args": {"output": "new-layer"},
        },
        {
            "id": "two-layers--selection",
            "image": {"base": "rgb", "width": W, "height": H},
            "layers": [
                layer("Back", "tiny.raw", 40, 40, (0, 0), "RGBA"),
                layer("Front", "small.raw", 80, 60, (70, 50), "RGBA"),
            ],
            "drawables": [0, 1],
            "args": {"output": "selection"},
        },
    ]
    return out


ERROR_CASES = {
    "group": (
        {
            "image": {"base": "rgb", "width": W, "height": H},
            "layers": [layer("Photo", "photo.raw"), {"name": "Group", "group": True}],
            "drawables": [1],
        },
        "layer group",
    ),
    "indexed": (
        {
            "image": {"base": "indexed", "width": W, "height": H},
            "layers": [layer("Photo", "photo.raw")],
        },
        "Indexed images are not supported",
    ),
    "existing-mask": (
        {
            "image": {"base": "rgb", "width": W, "height": H},
            "layers": [layer("Photo", "photo.raw", mask=True)],
            "args": {"output": "layer-mask"},
        },
        "already has a layer mask",
    ),
    "selection-elsewhere": (
        {
            "image": {"base": "rgb", "width": W, "height": H},
            "layers": [layer("Photo", "tiny.raw", 40, 40, (110, 70), "RGBA")],
            "selection": [0, 0, 30, 30],
        },
        "does not overlap",
    ),
}


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SELECTED, ids=lambda r: r.suite)
def gimp_rootfs(request) -> Rootfs:
    """Each rootfs of the editor matrix in turn, checked before the sidecar starts."""
    return request.param.require(request.param.gimp_console)


@pytest.fixture(scope="module")
def gimp(
    gimp_rootfs: Rootfs, tmp_path_factory: pytest.TempPathFactory, sidecar: Sidecar
) -> GimpHarness:
    return GimpHarness(gimp_rootfs, tmp_path_factory.mktemp("gimp"), sidecar.runtime_dir)


@pytest.fixture(scope="module")
def host(sidecar: Sidecar):
    client = Client(app="e2e-gimp-host", start=False, runtime_dir=sidecar.runtime_dir)
    yield client
    client.close()


@pytest.fixture(scope="module")
def missing_model(host: Client) -> str | None:
    return next((m["name"] for m in host.models() if not m.get("installed")), None)


@pytest.fixture(scope="module", params=list(TRANSPORTS))
def batch(request, gimp: GimpHarness, missing_model) -> tuple[str, BatchRun]:
    transport = request.param
    all_cases = cases()
    for name, (spec, _) in ERROR_CASES.items():
        all_cases.append({**spec, "id": f"error-{name}"})
    if missing_model:
        all_cases.append(case("error-model", "rgb8", args={"model": missing_model}))
    run = gimp.run_cases(all_cases, FILES, shim=TRANSPORTS[transport])
    assert not run.crashes, run.crashes
    missing = {c["id"] for c in all_cases} - set(run.cases)
    assert not missing, f"cases without results: {missing}\n{run.output[-4000:]}"
    return transport, run


def get(batch: tuple[str, BatchRun], case_id: str) -> CaseOutput:
    transport, run = batch
    out = run.cases[case_id]
    if out.record["status"] == "success":
        assert out.transports == {transport}, (out.debug, run.output[-3000:])
    return out


# ---------------------------------------------------------------------------------------------
# Expected results from a direct sidecar call
# ---------------------------------------------------------------------------------------------

SAMPLE_DTYPE = {"u8": np.uint8, "float": np.float32}
MASK_DTYPE = {"GRAY8": np.uint8, "GRAY16": np.dtype("<u2"), "GRAYF32": np.dtype("<f4")}
MASK_SCALE = {"GRAY8": 255.0, "GRAY16": 65535.0, "GRAYF32": 1.0}


def sample_of(out: CaseOutput) -> str:
    return "u8" if out.record["image"]["precision"].startswith("u8") else "float"


def tolerance(out: CaseOutput, mask_layer: bool = False) -> float:
    """How close GIMP's stored value must be to the sidecar's, by the image's precision."""
    precision = out.record["image"]["precision"]
    if precision.startswith("u8"):
        return 0.0  # bit-exact
    if precision.startswith("half"):
        return 1.5e-3  # half floats keep 11 significant bits
    return 1e-4 if mask_layer else 1e-6  # mask layers go through the image's TRC and back


def as_unit(data: bytes, sample: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.frombuffer(data, SAMPLE_DTYPE[sample]).reshape(shape)
    return arr.astype(np.float64) / (255.0 if sample == "u8" else 1.0)


def sidecar_mask(host: Client, out: CaseOutput, job: dict, index: int = 0, **options):
    """The sidecar's mask (float64, 0..1) for the exact pixels the plug-in read, and the rect."""
    entry = out.record["inputs"][index]
    x, y, w, h = entry["rect"]
    assert job["rect"] == [x, y, w, h], (job, entry)
    assert job["layer"] == entry["layer"]
    pixels = out.raw(entry)
    wire = job["format"]
    expected_read = ("GRAYA" if entry["format"].startswith("Y'A") else "RGBA") + (
        "8" if entry["format"].endswith("u8") else "F32"
    )
    assert wire == expected_read, (wire, entry["format"])
    result = host.segment(
        pixels, w, h, wire, model=job["meta"]["model"], mask_format=job["mask_format"], **options
    )
    fmt = result.mask_info["format"]
    mask = np.frombuffer(bytes(result.mask), MASK_DTYPE[fmt]).reshape(h, w)
    return mask.astype(np.float64) / MASK_SCALE[fmt], (x, y, w, h), result


def full_layer(mask: np.ndarray, rect, width: int, height: int, fill: float = 1.0):
    """The whole layer's expected mask: the result inside the processed rect, ``fill`` outside."""
    x, y, w, h = rect
    full = np.full((height, width), fill)
    full[y : y + h, x : x + w] = mask
    return full


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    diff = np.abs(actual - expected)
    worst = float(diff.max()) if diff.size else 0.0
    # u8 comparisons are on the 0..255 grid: any difference is at least 1/255.
    assert worst <= tol + 1e-9, (
        f"{what}: {int((diff > tol + 1e-9).sum())} of {diff.size} pixels differ, worst {worst:.6g}"
    )


def check_success(out: CaseOutput) -> None:
    assert out.record["status"] == "success", out.record.get("error")


def layer_mask(out: CaseOutput, name: str) -> np.ndarray:
    entry = out.layer(name)
    assert entry["mask"] is not None, f"{name} has no layer mask"
    assert entry["mask"]["format"] == "Y " + sample_of(out)  # the mask's own, linear, format
    return as_unit(out.raw(entry["mask"]), sample_of(out), (entry["height"], entry["width"]))


def layer_pixels(out: CaseOutput, name: str) -> np.ndarray:
    entry = out.layer(name)
    channels = 2 if entry["pixels"]["format"].startswith("Y'A") else 4
    return as_unit(
        out.raw(entry["pixels"]), sample_of(out), (entry["height"], entry["width"], channels)
    )


def verify_output(host: Client, out: CaseOutput, output: str, index: int = 0) -> None:
    """Check one processed layer's result against the sidecar, for any output mode."""
    job = out.jobs[index]
    source = out.layer(job["layer"])
    expected, rect, _ = sidecar_mask(host, out, job, index)
    tol = tolerance(out)
    lw, lh = source["width"], source["height"]
    name = job["layer"]
    if output == "new-layer":
        copy = out.layer(f"{name} (no background)")
        assert copy["visible"] and not source["visible"], "copy shown, original hidden"
        assert copy["offset"] == source["offset"] and (copy["width"], copy["height"]) == (lw, lh)
        names = [e["name"] for e in out.record["layers"]]
        assert names.index(copy["name"]) == names.index(name) - 1, "copy sits above original"
        assert_close(layer_mask(out, copy["name"]), full_layer(expected, rect, lw, lh), tol, name)
        assert np.array_equal(layer_pixels(out, copy["name"]), layer_pixels(out, name))
        assert copy["name"] in out.record["image"]["selected"]
    elif output == "layer-mask":
        assert source["visible"]
        assert_close(layer_mask(out, name), full_layer(expected, rect, lw, lh), tol, name)
    elif output == "mask-layer":
        gray = out.layer(f"{name} (mask)")
        assert gray["offset"] == source["offset"] and (gray["width"], gray["height"]) == (lw, lh)
        assert gray["mask"] is None
        pixels = layer_pixels(out, gray["name"])
        # R = G = B = the mask value, read through the image's perceptual TRC (Y', R'G'B').
        assert_close(pixels[..., 0], full_layer(expected, rect, lw, lh), tolerance(out, True), name)
        if pixels.shape[-1] == 4:
            assert np.array_equal(pixels[..., 0], pixels[..., 1])
            assert np.array_equal(pixels[..., 0], pixels[..., 2])
    else:
        raise AssertionError(output)


def selection_expected(host: Client, out: CaseOutput) -> np.ndarray:
    """The union of every processed layer's mask placed on the canvas (clipped to it)."""
    cw, ch = out.record["image"]["width"], out.record["image"]["height"]
    canvas = np.zeros((ch, cw))
    for index, job in enumerate(out.jobs):
        expected, (x, y, w, h), _ = sidecar_mask(host, out, job, index)
        ox, oy = out.layer(job["layer"])["offset"]
        ax, ay = ox + x, oy + y
        x0, y0, x1, y1 = max(ax, 0), max(ay, 0), min(ax + w, cw), min(ay + h, ch)
        canvas[y0:y1, x0:x1] = np.maximum(
            canvas[y0:y1, x0:x1], expected[y0 - ay : y1 - ay, x0 - ax : x1 - ax]
        )
    return canvas


def verify_selection(host: Client, out: CaseOutput) -> None:
    sel = out.record["selection"]
    assert not sel["empty"]
    cw, ch = out.record["image"]["width"], out.record["image"]["height"]
    actual = as_unit(out.raw(sel), sample_of(out), (ch, cw))
    assert_close(actual, selection_expected(host, out), tolerance(out), "selection")
    # The selection output adds nothing to the layer stack.
    assert all("(no background)" not in e["name"] for e in out.record["layers"])


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_plugin_registers_with_its_arguments(gimp: GimpHarness, sidecar: Sidecar):
    script = (
        "from gi.repository import Gimp\n"
        "import json\n"
        "p = Gimp.get_pdb().lookup_procedure('plug-in-offcut-remove-background')\n"
        "args = {a.name: (Gimp.param_spec_choice_get_choice(a).list_nicks()\n"
        "        if isinstance(a, Gimp.ParamChoice) else None) for a in p.get_arguments()}\n"
        "print('REG ' + json.dumps({'args': args, 'menu': p.get_menu_paths(),\n"
        "      'label': p.get_menu_label()}), flush=True)\n"
    )
    proc = gimp.console(f"exec({script!r})")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REG ")), None)
    assert line, proc.stdout[-3000:]
    reg = json.loads(line[4:])
    # GIMP 3.2 reports the path it registered without the trailing slash 3.0 keeps.
    assert [path.rstrip("/") for path in reg["menu"]] == ["<Image>/Layer/Transparency"]
    assert "Remove" in reg["label"] and "Background" in reg["label"]
    args = reg["args"]
    assert list(args) == [
        "run-mode",
        "image",
        "drawables",
        "model",
        "output",
        "refine",
        "decontaminate",
    ]
    assert args["output"] == list(OUTPUTS)
    # GIMP validates calls against the choice it registered: every catalog model must be in it.
    catalog = [m["name"] for m in Client(start=False, runtime_dir=sidecar.runtime_dir).models()]
    assert set(catalog) <= set(args["model"]), (catalog, args["model"])


def test_plugin_registers_without_a_running_sidecar(gimp_rootfs, tmp_path_factory, sidecar):
    """GIMP's start-up query must neither need nor start a sidecar, and still offers every model.

    The model choice is built once, when GIMP registers the plug-in (usually before any sidecar
    runs); the installer's record supplies the catalog's names for it.
    """
    harness = GimpHarness(
        gimp_rootfs, tmp_path_factory.mktemp("gimp-nosidecar"), sidecar.runtime_dir
    )
    empty_runtime = tmp_path_factory.mktemp("runtime-empty")
    script = (
        "from gi.repository import Gimp\n"
        "p = Gimp.get_pdb().lookup_procedure('plug-in-offcut-remove-background')\n"
        "a = [a for a in p.get_arguments() if a.name == 'model'][0]\n"
        "print('MODELS', Gimp.param_spec_choice_get_choice(a).list_nicks(),\n"
        "      a.get_default_value(), flush=True)\n"
    )
    proc = harness.console(f"exec({script!r})", runtime_dir=empty_runtime, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MODELS")), None)
    # The choice opens on "fast", which stands for the catalog's default model (u2netp).
    assert line and line.endswith(" fast"), proc.stdout[-3000:]
    offered = ast.literal_eval(line[len("MODELS ") : line.rindex("]") + 1])
    catalog = load_catalog()
    assert catalog.aliases["fast"].models[0] == catalog.default
    assert offered == [*catalog.aliases, *catalog.names()], line
    assert not (empty_runtime / "sidecar.json").exists(), "query time must not start a sidecar"


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_output_matches_sidecar_pixel_by_pixel(batch, host, kind, output):
    out = get(batch, f"{kind}--{output}")
    check_success(out)
    assert len(out.jobs) == 1
    if output == "selection":
        verify_selection(host, out)
    else:
        verify_output(host, out, output)


def test_offset_layer_is_processed_whole_including_off_canvas_parts(batch):
    out = get(batch, "rgba-offset--layer-mask")
    check_success(out)
    assert out.jobs[0]["rect"] == [0, 0, 120, 90]
    assert out.layer("Cutout")["offset"] == [70, -20]


@pytest.mark.parametrize(
    ("case_id", "output"),
    [
        ("roi--new-layer", "new-layer"),
        ("roi--selection", "selection"),
        ("roi-offset--layer-mask", "layer-mask"),
    ],
)
def test_selection_limits_the_processed_area(batch, host, case_id, output):
    out = get(batch, case_id)
    check_success(out)
    job = out.jobs[0]
    if case_id == "roi-offset--layer-mask":
        # Canvas rect (100, 0, 60, 50) ∩ layer at (70, -20) 120×90 → layer coords (30, 20, 60, 50).
        assert job["rect"] == [30, 20, 60, 50]
    else:
        assert job["rect"] == [30, 20, 80, 60]
    if output == "selection":
        verify_selection(host, out)
    else:
        verify_output(host, out, output)  # outside the rect the mask stays white


def test_refine_is_passed_to_the_sidecar(batch, host):
    out = get(batch, "refine--layer-mask")
    check_success(out)
    job = out.jobs[0]
    expected, rect, _ = sidecar_mask(host, out, job, refine=True)
    assert_close(layer_mask(out, "Photo"), full_layer(expected, rect, W, H), 0.0, "refined")


def test_decontaminate_writes_the_sidecar_colours_and_keeps_alpha(batch, host):
    out = get(batch, "decontaminate--new-layer")
    check_success(out)
    job = out.jobs[0]
    expected, _, result = sidecar_mask(host, out, job, cutout=True, decontaminate=True)
    assert_close(layer_mask(out, "Cutout (no background)"), expected, 0.0, "mask")
    copy = layer_pixels(out, "Cutout (no background)")
    original = layer_pixels(out, "Cutout")
    cutout = np.frombuffer(bytes(result.cutout), np.uint8).reshape(90, 120, 4) / 255.0
    visible = original[..., 3] > 0  # colours under alpha 0 are not defined by GIMP
    assert np.array_equal(copy[..., :3][visible], cutout[..., :3][visible])
    assert np.array_equal(copy[..., 3], original[..., 3]), "the layer keeps its own alpha"


@pytest.mark.parametrize(
    ("case_id", "output"),
    [
        ("u16--layer-mask", "layer-mask"),
        ("u32--mask-layer", "mask-layer"),
        ("half-gray--new-layer", "new-layer"),
    ],
)
def test_high_bit_depth(batch, host, case_id, output):
    out = get(batch, case_id)
    check_success(out)
    job = out.jobs[0]
    assert job["format"] in ("RGBAF32", "GRAYAF32")
    assert job["mask_format"] == ("GRAY16" if case_id.startswith("u16") else "GRAYF32")
    verify_output(host, out, output)


@pytest.mark.parametrize("output", ["new-layer", "selection"])
def test_every_selected_layer_is_processed(batch, host, output):
    out = get(batch, f"two-layers--{output}")
    check_success(out)
    assert sorted(j["layer"] for j in out.jobs) == ["Back", "Front"]
    if output == "selection":
        verify_selection(host, out)
    else:
        for index in range(2):
            verify_output(host, out, output, index)


def test_last_values_run_mode_works_with_defaults(batch, host):
    out = get(batch, "last-values")
    check_success(out)
    verify_output(host, out, "new-layer")


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_refusals_are_sentences_and_change_nothing(batch, name):
    out = get(batch, f"error-{name}")
    words = ERROR_CASES[name][1]
    assert out.record["status"] == "execution-error", out.record
    assert words in (out.record["error"] or ""), out.record["error"]
    assert not out.jobs
    if name != "indexed":
        assert all(
            "(no background)" not in e["name"] and "(mask)" not in e["name"]
            for e in out.record["layers"]
        )


def test_missing_model_error_names_the_fix(batch, missing_model):
    if not missing_model:
        pytest.skip("every catalog model is installed here")
    out = get(batch, "error-model")
    assert out.record["status"] == "execution-error"
    assert missing_model in out.record["error"]
    assert "offcut models fetch" in out.record["error"]


def test_image_over_the_sidecar_limit_is_refused_in_words(
    gimp: GimpHarness, tmp_path_factory, models_dir
):
    runtime = tmp_path_factory.mktemp("runtime-small")
    small = Sidecar(runtime, models_dir, ["--idle-timeout", "0", "--max-pixels", "5000"])
    try:
        run = gimp.run_cases([case("too-large", "rgb8")], FILES, runtime_dir=runtime)
    finally:
        small.stop()
    out = run.cases["too-large"]
    assert out.record["status"] == "execution-error", out.record
    assert "too large" in out.record["error"] and "160 × 120" in out.record["error"]
    assert "Select a smaller area" in out.record["error"]
    assert [e["name"] for e in out.record["layers"]] == ["Photo"]


def test_script_fu_batch_calls_the_procedure(gimp: GimpHarness):
    script = (
        "(let* ((img (car (gimp-image-new 64 48 RGB)))"
        '       (layer (car (gimp-layer-new img "bg" 64 48 RGB-IMAGE 100 LAYER-MODE-NORMAL))))'
        "  (gimp-image-insert-layer img layer 0 0)"
        "  (gimp-drawable-fill layer FILL-WHITE)"
        "  (plug-in-offcut-remove-background #:run-mode RUN-NONINTERACTIVE #:image img"
        '     #:drawables (vector layer) #:model "u2netp" #:output "mask-layer")'
        '  (gimp-message (string-append "E2E-LAYERS="'
        "     (number->string (vector-length (car (gimp-image-get-layers img)))))))"
    )
    proc = gimp.console(script, interpreter="plug-in-script-fu-eval")
    assert "E2E-LAYERS=2" in proc.stdout, proc.stdout[-3000:]
    assert "OFFCUT-GIMP-DEBUG" in proc.stdout


def test_no_temporary_files_in_the_plugin():
    """The privacy pre-stop check, kept here so a regression fails a test too."""
    import re

    source = (Path(__file__).resolve().parents[2] / "plugin_gimp").rglob("*.py")
    pattern = re.compile(r"tempfile|NamedTemporaryFile|mkstemp|file_save|file-png-save|\.save\(")
    for path in source:
        assert not pattern.search(path.read_text()), path


# ---------------------------------------------------------------------------------------------
# Interactive runs in the GUI (gimp-3.x under Xvfb, answered with xdotool)
# ---------------------------------------------------------------------------------------------

# Screenshots → the docs/img pictures they become. OFFCUT_UPDATE_SCREENSHOTS=1 refreshes them from
# the DOCS_SUITE rootfs's GIMP only (docs/gimp.md names its version); other series' GUI runs take
# the same screenshots, checked by the same tests, but never replace the docs' pictures.
DOC_IMAGES = {
    "dialog.png": "gimp-dialog.png",
    "question.png": "gimp-mask-question.png",
    "result.png": "gimp-result.png",
    "progress.png": "gimp-progress.png",
    "menu.png": "gimp-menu.png",
}


@pytest.fixture(scope="module", params=SELECTED, ids=lambda r: r.suite)
def gui_rootfs(request) -> Rootfs:
    rootfs = request.param
    return rootfs.require(rootfs.gimp_gui, "/usr/bin/Xvfb", "/usr/bin/xdotool", "/usr/bin/import")


@pytest.fixture(scope="module")
def gui(
    gui_rootfs: Rootfs,
    tmp_path_factory: pytest.TempPathFactory,
    sidecar: Sidecar,
    slow_model: str,
):
    update_docs = bool(os.environ.get("OFFCUT_UPDATE_SCREENSHOTS"))
    if update_docs and DOCS_SUITE not in {r.suite for r in SELECTED}:
        pytest.fail(f"OFFCUT_UPDATE_SCREENSHOTS needs the {DOCS_SUITE} rootfs in OFFCUT_E2E_ROOTFS")
    harness = GimpHarness(gui_rootfs, tmp_path_factory.mktemp("gimp-gui"), sidecar.runtime_dir)
    spec = {
        "photo": {"file": "photo.raw", "width": 320, "height": 240},
        "big": [3000, 2250],
        "slow_model": slow_model,
    }
    proc, run_dir, steps, log = gui_session(
        harness, spec, {"photo.raw": photo(320, 240, real=False).tobytes()}
    )
    assert "GUI-FAIL" not in proc.stdout, f"{proc.stdout[-3000:]}\n--- gimp.log ---\n{log[-3000:]}"
    assert "GUI-ACTIONS-END" in proc.stdout, proc.stdout[-3000:]
    if update_docs and gui_rootfs.suite == DOCS_SUITE:
        docs = Path(__file__).resolve().parents[2] / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        for src, dst in DOC_IMAGES.items():
            if (run_dir / src).is_file():
                shutil.copyfile(run_dir / src, docs / dst)
    return run_dir, steps, sidecar, log


def step_of(gui, name: str) -> dict:
    _, steps, _, _ = gui
    assert name in steps, f"step {name} did not finish: {sorted(steps)}"
    return steps[name]


def test_dialog_and_screenshots_are_real(gui):
    from PIL import Image

    run_dir, _, _, _ = gui
    for name in DOC_IMAGES:
        with Image.open(run_dir / name) as im:
            assert im.width > 200 and im.height > 100, (name, im.size)
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 50, f"{name} is blank"


def test_interactive_mask_question_cancel_changes_nothing(gui):
    record = step_of(gui, "question-cancel")
    assert record["status"] == "cancel"
    assert record["layers"] == [{"name": "Photo", "visible": True, "mask_max": 0}]


def test_interactive_mask_question_replace(gui):
    record = step_of(gui, "question-replace")
    assert record["status"] == "success", record
    copy, original = record["layers"]
    assert copy["name"] == "Photo (no background)" and copy["visible"]
    assert copy["mask_max"] == 255, "the copy got the new mask, not the old black one"
    assert original == {"name": "Photo", "visible": False, "mask_max": 0}


def test_one_undo_step_takes_the_whole_run_back(gui):
    record = step_of(gui, "after-one-undo")
    assert record["layers"] == [{"name": "Photo", "visible": True, "mask_max": 0}]


def test_interactive_choice_is_reused_by_last_values(gui):
    chosen = step_of(gui, "interactive-mask-layer")
    assert chosen["status"] == "success", chosen
    assert [e["name"] for e in chosen["layers"]] == ["Photo (mask)", "Photo"]
    again = step_of(gui, "last-values")
    assert again["status"] == "success", again
    assert [e["name"] for e in again["layers"]] == ["Photo (mask)", "Photo"]


def test_progress_bar_cancel_cancels_the_sidecar_request(gui):
    record = step_of(gui, "progress-cancel")
    assert record["status"] == "cancel", record
    assert [e["name"] for e in record["layers"]] == ["Photo"], "nothing was added"
    _, _, sidecar, _ = gui
    cancelled = []
    for line in sidecar.stderr_lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line[line.index("{") :])
            if event.get("code") == "cancelled" and str(event.get("id", "")).startswith("gimp-"):
                cancelled.append(event)
    assert cancelled, "the sidecar never saw the cancel:\n" + "".join(sidecar.stderr_lines[-20:])


def test_menu_command_runs_with_the_last_dialog_values(gui):
    _, _, _, log = gui
    lines = [ln for ln in log.splitlines() if ln.startswith(DEBUG_PREFIX)]
    records = [json.loads(ln[len(DEBUG_PREFIX) :]) for ln in lines]
    assert records, log[-3000:]
    last = records[-1]["jobs"]
    assert [job["rect"] for job in last] == [[0, 0, 3000, 2250]], "the active (big) image"
    assert records[-1]["output"] == "mask-layer", "the output chosen in the last dialog"


# ---------------------------------------------------------------------------------------------
# Languages: GIMP run with LANGUAGE=de (and ja) shows the plug-in in that language
# ---------------------------------------------------------------------------------------------

# The languages GIMP runs in here: German for the picture in the docs, Japanese for a script,
# a plural-less language and mnemonics written GIMP's Japanese way ("…(_B)...").
LANGUAGES = ("de", "ja")
REGISTRATION_SCRIPT = (
    "from gi.repository import Gimp\n"
    "import json\n"
    "p = Gimp.get_pdb().lookup_procedure('plug-in-offcut-remove-background')\n"
    "args = {}\n"
    "for a in p.get_arguments():\n"
    "    entry = {'nick': a.get_nick(), 'blurb': a.get_blurb()}\n"
    "    if isinstance(a, Gimp.ParamChoice):\n"
    "        c = Gimp.param_spec_choice_get_choice(a)\n"
    "        entry['choices'] = [[n, c.get_label(n), c.get_help(n)] for n in c.list_nicks()]\n"
    "        entry['default'] = a.get_default_value()\n"
    "    args[a.name] = entry\n"
    "print('REG ' + json.dumps({'label': p.get_menu_label(), 'blurb': p.get_blurb(),\n"
    "      'help': p.get_help(), 'args': args}), flush=True)\n"
)


def catalog_of(harness: GimpHarness, lang: str) -> gettext.GNUTranslations:
    """The catalog ``offcut install gimp`` compiled into the plug-in, as the host reads it."""
    path = harness.plugin_dir / "locale" / lang / "LC_MESSAGES" / "offcut.mo"
    with path.open("rb") as fh:
        return gettext.GNUTranslations(fh)


@pytest.fixture(scope="module", params=LANGUAGES)
def localized(request, gimp_rootfs: Rootfs, tmp_path_factory, sidecar: Sidecar):
    """A fresh GIMP profile first started in ``lang``: the plug-in registers in that language."""
    lang = request.param
    harness = GimpHarness(gimp_rootfs, tmp_path_factory.mktemp(f"gimp-{lang}"), sidecar.runtime_dir)
    return lang, harness, catalog_of(harness, lang)


def test_language_menu_dialog_and_choices_are_translated(localized):
    """What GIMP registered: menu label, help, argument labels and choices in the language."""
    lang, harness, t = localized
    proc = harness.console(f"exec({REGISTRATION_SCRIPT!r})", LANGUAGE=lang)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REG ")), None)
    assert line, proc.stdout[-3000:]
    reg = json.loads(line[4:])
    menu = t.gettext("Remove _Background (Offcut)...")
    assert menu != "Remove _Background (Offcut)...", f"no {lang} translation of the menu label"
    assert reg["label"] == menu
    assert reg["blurb"] == t.gettext(
        "Remove the background of the selected layers with a local AI model"
    )
    assert reg["help"].startswith(t.gettext(gimp_run_help())[:40])
    args = reg["args"]
    assert args["model"]["nick"] == t.gettext("_Model")
    assert args["output"]["nick"] == t.gettext("_Output")
    assert args["refine"]["nick"] == t.gettext("Refine _edges")
    assert args["decontaminate"]["blurb"].startswith(t.gettext(DECONTAMINATE_BLURB)[:30])
    # The aliases come first under the language's words, then the models; "fast" is the default.
    model = args["model"]
    assert [c[0] for c in model["choices"][:2]] == ["fast", "best"]
    assert [c[1] for c in model["choices"][:2]] == [t.gettext("Fast"), t.gettext("Best quality")]
    assert model["choices"][0][2] == t.gettext(
        "The quickest model: good on clear subjects, softer edges."
    )
    assert model["default"] == "fast"
    outputs = args["output"]["choices"]
    assert [c[0] for c in outputs] == list(OUTPUTS)
    assert [c[1] for c in outputs] == [t.gettext(label) for _, label, _ in gimp_run.OUTPUTS]
    assert [c[2] for c in outputs] == [t.gettext(help_) for _, _, help_ in gimp_run.OUTPUTS]


def gimp_run_help() -> str:
    return (
        "Segments the foreground of each selected layer (only inside the selection, if "
        "there is one) with a model run by the local Offcut sidecar, and writes the "
        "result as a new masked layer, a layer mask, the selection, or a grayscale mask "
        "layer. Nothing leaves the computer and nothing is written to disk."
    )


DECONTAMINATE_BLURB = (
    "Replace edge colours with estimated foreground colours so no background halo "
    "remains (new-layer and layer-mask outputs)"
)


def test_language_errors_are_sentences_in_that_language(localized):
    """A refused run returns its sentence in the language, values and plural form filled in."""
    lang, harness, t = localized
    cases = [
        {**ERROR_CASES["indexed"][0], "id": "indexed"},
        {**ERROR_CASES["existing-mask"][0], "id": "existing-mask"},
    ]
    batch = harness.run_cases(cases, FILES, LANGUAGE=lang)
    assert not batch.crashes, batch.crashes
    indexed = batch.cases["indexed"].record
    assert indexed["status"] == "execution-error", indexed
    english = (
        "Indexed images are not supported: convert the image to RGB or Grayscale first "
        "(Image ▸ Mode)."
    )
    assert t.gettext(english) != english
    assert indexed["error"] == t.gettext(english)
    masked = batch.cases["existing-mask"].record
    assert masked["status"] == "execution-error", masked
    names = t.gettext("“{name}”").format(name="Photo")
    sentence = t.ngettext(
        "{names} already has a layer mask: apply or delete it first (Layer ▸ Mask), "
        "or choose the “selection” or “mask-layer” output.",
        "{names} already have a layer mask: apply or delete them first (Layer ▸ Mask), "
        "or choose the “selection” or “mask-layer” output.",
        1,
    )
    assert masked["error"] == sentence.format(names=names)
    assert [e["name"] for e in masked["layers"]] == ["Photo"], "nothing was added"


def test_language_dialog_in_german_real_gui(gui_rootfs, tmp_path_factory, sidecar):
    """The dialog in real GIMP with LANGUAGE=de, shot for docs/img/gimp-dialog-de.png.

    GIMP runs under de_DE.UTF-8 as a German desktop does: glibc ignores LANGUAGE under the C
    locales, so without it GIMP's own buttons would stay English (.ci/rootfs.sh makes it).
    """
    from PIL import Image

    gui_rootfs.require("/usr/lib/locale/locale-archive")
    harness = GimpHarness(gui_rootfs, tmp_path_factory.mktemp("gimp-gui-de"), sidecar.runtime_dir)
    t = catalog_of(harness, "de")
    title = t.gettext("Remove Background (Offcut)")
    assert title != "Remove Background (Offcut)"
    spec = {"session": "language", "photo": {"file": "photo.raw", "width": 320, "height": 240}}
    proc, run_dir, steps, log = gui_session(
        harness,
        spec,
        {"photo.raw": photo(320, 240, real=False).tobytes()},
        actions=LANGUAGE_ACTIONS,
        LANGUAGE="de",
        LANG="de_DE.UTF-8",
        DIALOG=f"^{re.escape(title)}$",
    )
    assert "GUI-FAIL" not in proc.stdout, f"{proc.stdout[-3000:]}\n--- gimp.log ---\n{log[-3000:]}"
    assert steps["dialog"]["status"] == "cancel", steps
    error = steps["error"]
    assert error["status"] == "execution-error", error
    assert error["error"].startswith("Indizierte Bilder werden nicht unterstützt"), error
    with Image.open(run_dir / "dialog.png") as im:
        assert im.width > 200 and im.height > 100, im.size
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 50, "the dialog shot is blank"
    if os.environ.get("OFFCUT_UPDATE_SCREENSHOTS") and gui_rootfs.suite == DOCS_SUITE:
        docs = Path(__file__).resolve().parents[2] / "docs" / "img"
        shutil.copyfile(run_dir / "dialog.png", docs / "gimp-dialog-de.png")


def test_language_change_registers_the_command_again(gimp_rootfs, tmp_path_factory, sidecar):
    """GIMP started again in another language on the same profile shows the new language.

    GIMP keeps registrations in pluginrc and queries the plug-ins again when its language
    changed since the last start (gimprc's prev-language), so the menu follows the language.
    """
    harness = GimpHarness(gimp_rootfs, tmp_path_factory.mktemp("gimp-relang"), sidecar.runtime_dir)
    script = (
        "from gi.repository import Gimp\n"
        "p = Gimp.get_pdb().lookup_procedure('plug-in-offcut-remove-background')\n"
        "print('LABEL ' + p.get_menu_label(), flush=True)\n"
    )
    seen = []
    for lang in ("de", "ja", None):
        env = {"LANGUAGE": lang} if lang else {}
        proc = harness.console(f"exec({script!r})", **env)
        labels = [ln[len("LABEL ") :] for ln in proc.stdout.splitlines() if ln.startswith("LABEL ")]
        assert labels, proc.stdout[-3000:]
        english = "Remove _Background (Offcut)..."
        seen.append(labels[0])
        assert labels[0] == (catalog_of(harness, lang).gettext(english) if lang else english)
    assert len(set(seen)) == 3, seen
