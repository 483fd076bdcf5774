"""The float32 and int8 IS-Net are derived on this machine from the verified fp16 file, byte
for byte.

A derived model is trusted the way a download is: its sha256 is in the catalog, and the file made
here must have it. These tests derive both from the real ``isnet-general-use-fp16`` (nothing is
downloaded), check the bytes twice over, check that a wrong checksum installs nothing, that the
float32 model's masks are the fp16 model's masks and that the int8 model's are close to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from offcut.client import wire
from offcut.engine import formats
from offcut.engine.engine import Engine, SegmentRequest
from offcut.errors import OffcutError
from offcut.models.catalog import load_catalog
from offcut.models.derive import derive_bytes
from offcut.models.store import INSTALLED, MISSING, ModelStore
from offcut.quality import metrics
from tests.conftest import SHARED_EVAL, SIDECAR_SRC, need

DERIVED = "isnet-general-use-fp32"
INT8 = "isnet-general-use-int8"  # what `best` prefers
INT8_IOU_0001 = 0.9451  # its IoU on ecssd200's first photo (fp16 and float32: 0.9418)
SOURCE = "isnet-general-use-fp16"
ECSSD = SHARED_EVAL / "ecssd200"


@pytest.fixture(scope="module")
def store(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """A models folder holding links to the real u2netp and fp16 files, and the derived models,
    derived once for the module by `offcut models fetch best` (int8) and by name (float32)."""
    src = models_dir / f"{SOURCE}.onnx"
    need(
        src.is_file(),
        f"{SOURCE} is not installed in {models_dir}: run `offcut models fetch {SOURCE}`",
    )
    root = tmp_path_factory.mktemp("models")
    for name in ("u2netp.onnx", f"{SOURCE}.onnx"):
        (root / name).symlink_to(models_dir / name)
    s = ModelStore(root)
    cat = load_catalog()
    assert s.state(cat.get(DERIVED)) == MISSING and s.state(cat.get(INT8)) == MISSING
    # what a user types: the alias fetches the model it prefers, which is derived, not downloaded
    for word, name, recipe in (("best", INT8, "int8"), (DERIVED, DERIVED, "float32")):
        proc = _offcut(root, "models", "fetch", word)
        assert proc.returncode == 0, proc.stderr
        assert f"{name}: derived from {SOURCE} by recipe '{recipe}'" in proc.stdout
        assert f"{name}: installed and verified at {s.path(cat.get(name))}" in proc.stdout
    yield s


def _offcut(models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["OFFCUT_MODELS_DIR"] = str(models)
    env["PYTHONPATH"] = str(SIDECAR_SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "offcut", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("name", [DERIVED, INT8])
def test_derivation_is_verified_and_deterministic(store: ModelStore, name: str) -> None:
    cat = load_catalog()
    spec, source = cat.get(name), cat.get(SOURCE)
    path = store.path(spec)
    assert store.state(spec) == INSTALLED
    assert store.open_verified(spec) == (path, spec.verified_sha256)
    assert path.stat().st_size == spec.size
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no .part left
    # the same bytes again, from the same source: what every user's machine makes
    again = derive_bytes(store.path(source), spec, source)
    assert hashlib.sha256(again).hexdigest() == spec.verified_sha256
    assert again == path.read_bytes()


def test_a_derivation_with_another_checksum_installs_nothing(
    store: ModelStore, tmp_path: Path
) -> None:
    cat = load_catalog()
    source = cat.get(SOURCE)
    wrong = dataclasses.replace(cat.get(DERIVED), sha256="0" * 64)
    other = ModelStore(tmp_path / "models")
    other.root.mkdir()
    (other.root / source.file).symlink_to(store.path(source))
    with pytest.raises(OffcutError) as info:
        other.derive(wrong, source)
    assert info.value.code == wire.MODEL_INVALID
    assert f"the catalog expects {wrong.size} bytes with sha256 {'0' * 64}" in info.value.message
    assert "Nothing was installed" in info.value.message
    assert sorted(p.name for p in other.root.iterdir()) == [source.file]


def _mask(engine: Engine, image: Image.Image, model: str) -> np.ndarray:
    req = SegmentRequest(
        pixels=image.tobytes(),
        width=image.width,
        height=image.height,
        fmt=formats.FORMATS["RGB8"],
        model=model,
    )
    res = engine.segment(req)
    return np.frombuffer(res.mask, dtype=np.uint8).reshape(image.height, image.width) / 255.0


def test_the_derived_mask_is_the_fp16_mask(store: ModelStore) -> None:
    """On a real photo the float32 copy gives the fp16 file's mask: widening is exact, and
    only ONNX Runtime's arithmetic differs (float32 throughout instead of casts around each
    operator), which moves a few mask pixels by a level at most."""
    need((ECSSD / "images").is_dir(), f"evaluation data missing: {ECSSD}")
    engine = Engine(load_catalog(), store, max_loaded=2)
    with Image.open(ECSSD / "images" / "0001.jpg") as im:
        image = im.convert("RGB")
    fp16, derived = _mask(engine, image, SOURCE), _mask(engine, image, DERIVED)
    assert metrics.iou(derived, fp16) >= 0.999
    assert np.abs(derived - fp16).max() <= 2 / 255


def test_the_int8_mask_is_close_to_the_float_mask(store: ModelStore) -> None:
    """8-bit arithmetic moves the mask, a little: on real photos it keeps the float model's
    shape (IoU) and its soft edges (mean difference), and `best` serves it once installed."""
    need((ECSSD / "images").is_dir(), f"evaluation data missing: {ECSSD}")
    engine = Engine(load_catalog(), store, max_loaded=2)
    for photo in ("0001.jpg", "0002.jpg"):
        with Image.open(ECSSD / "images" / photo) as im:
            image = im.convert("RGB")
        fp32, int8 = _mask(engine, image, DERIVED), _mask(engine, image, INT8)
        assert metrics.iou(int8, fp32) >= 0.97, photo
        assert float(np.abs(int8 - fp32).mean()) <= 0.02, photo
        assert not np.array_equal(int8, fp32)  # it is another model, not the float file again
    assert engine.load("best").spec.name == INT8


def test_offcut_eval_runs_the_best_alias(store: ModelStore, tmp_path: Path) -> None:
    """`offcut eval --model best` scores the int8 model: on ecssd200's first photo IoU
    0.9418 with isnet-general-use-fp16 and the float32 copy, 0.9451 with int8."""
    need((ECSSD / "images").is_dir(), f"evaluation data missing: {ECSSD}")
    out = tmp_path / "eval.json"
    proc = _offcut(
        store.root, "eval", str(ECSSD), "--model", "best", "--limit", "1", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["model"] == INT8 and report["images"] == 1
    assert report["sha256"] == load_catalog().get(INT8).verified_sha256
    assert abs(report["mean"]["offcut"]["iou"] - INT8_IOU_0001) < 0.002
