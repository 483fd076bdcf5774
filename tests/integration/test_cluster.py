"""``offcut remove --cluster``: a real two-node Ray cluster on this machine, the real model.

One cluster for the module (a head on 127.0.0.1 and a second node joined to it, one CPU each,
tests/ray_cluster.py), torn down at the end. Every cluster run is compared byte for byte with
the local command's output on the same files, and its failure report line for line.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from tests.conftest import need, sample_rgba
from tests.integration.test_remove_cli import offcut, offcut_env
from tests.ray_cluster import RayCluster, alive, cmdline, descendants

pytestmark = pytest.mark.slow

SEGMENTER = "MapWorker(Map(Segmenter))"  # the title Ray Data gives the actors' processes


def _have_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(models_dir: Path) -> Iterator[RayCluster]:
    need(_have_ray(), "Ray is not installed: pip install -e '.[cluster]'")
    c = RayCluster(2, offcut_env(models_dir))
    try:
        yield c
    finally:
        c.stop()
    assert not [p for p in c.pids() if alive(p)], "Ray processes left running"


def photo(w: int, h: int, seed: int) -> Image.Image:
    return Image.frombytes("RGBA", (w, h), sample_rgba(w, h, seed=seed)).convert("RGB")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEGs with EXIF orientation, a PNG with an ICC profile and one with alpha, a bad file."""
    src = tmp_path_factory.mktemp("photos")
    for i in range(8):
        exif = Image.Exif()
        exif[0x0112] = 1 + i  # every orientation
        exif[0x010F] = "SecretCam"
        photo(480 + 16 * i, 360, seed=i).save(src / f"p{i:02d}.jpg", exif=exif, quality=90)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo(200, 300, seed=20).save(src / "icc.png", icc_profile=icc)
    rgba = Image.frombytes("RGBA", (180, 120), sample_rgba(180, 120, seed=21))
    rgba.save(src / "alpha.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return src


def remove(src: Path, out: Path, models: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return offcut("remove", str(src), "--out-dir", str(out), *extra, models=models, cwd=out.parent)


def report_lines(stderr: str) -> list[str]:
    return sorted(ln for ln in stderr.splitlines() if ln.startswith("offcut remove:"))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


OUTPUTS = 10  # 8 JPEGs and 2 PNGs; the broken file makes none

# cutout: the plain run; flattened: every pixel option, under a killed worker; mask: under Ctrl-C.
OPTION_SETS = {
    "cutout": ["--model", "u2netp"],
    "flattened": ["--model", "u2netp", "--background", "#20a040", "--refine", "--decontaminate"],
    "mask": ["--model", "u2netp", "--mask-only"],
}


@pytest.fixture(scope="module")
def local(
    photos: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, bytes], list[str]]]:
    """The local command's outputs and report for each option set: what the cluster must match."""
    done = {}
    for name, opts in OPTION_SETS.items():
        out = tmp_path_factory.mktemp(f"local-{name}") / "out"
        r = remove(photos, out, models_dir, *opts)
        assert r.returncode == 1, r.stderr  # the broken file
        done[name] = (files(out), report_lines(r.stderr))
    return done


def test_outputs_and_report_match_the_local_command(
    cluster: RayCluster,
    photos: Path,
    models_dir: Path,
    tmp_path: Path,
    local: dict[str, tuple[dict[str, bytes], list[str]]],
) -> None:
    out = tmp_path / "out"
    r = remove(photos, out, models_dir, *OPTION_SETS["cutout"], "--cluster", cluster.address)
    assert r.returncode == 1, r.stderr
    want, want_report = local["cutout"]
    got = files(out)
    assert sorted(got) == sorted(want) and len(got) == OUTPUTS
    assert [n for n in got if got[n] != want[n]] == []
    # the same failure, worded the same, and the same summary
    assert report_lines(r.stderr) == want_report
    assert any("broken.jpg" in ln and "skipped" in ln for ln in want_report)
    assert f"{OUTPUTS} of {OUTPUTS + 1} images done, 1 failed." in r.stderr
    with Image.open(io.BytesIO(got["icc.png"])) as im:
        assert im.info.get("icc_profile")  # ICC kept
    assert b"SecretCam" not in b"".join(got.values())


def wait_for(predicate: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def start_remove(src: Path, out: Path, models: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "offcut", "remove", str(src), "--out-dir", str(out), *extra],
        env=offcut_env(models),
        cwd=out.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def test_a_killed_worker_loses_no_image_and_writes_none_twice(
    cluster: RayCluster,
    photos: Path,
    models_dir: Path,
    tmp_path: Path,
    local: dict[str, tuple[dict[str, bytes], list[str]]],
) -> None:
    """SIGKILL one model worker mid-run: Ray restarts it and retries its photos; every output is
    there, written once (a second write would be refused as existing, and reported), identical.
    The run uses every pixel option, so they are compared with the local command's too."""
    out = tmp_path / "out"
    proc = start_remove(
        photos, out, models_dir, *OPTION_SETS["flattened"], "--cluster", cluster.address
    )
    try:
        wait_for(lambda: len(pngs(out)) >= 1 and len(cluster.worker_pids(SEGMENTER)) == 2)
        victims = cluster.worker_pids(SEGMENTER)
        written_before = len(pngs(out))
        os.kill(victims[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert written_before < OUTPUTS, "the run ended before the worker was killed"
    assert not alive(victims[0])
    assert proc.returncode == 1, stderr
    want, want_report = local["flattened"]
    assert files(out) == want
    assert report_lines(stderr) == want_report
    assert "refused" not in stderr and "no result" not in stderr
    assert not list(out.glob(".*.tmp"))


def test_ctrl_c_stops_the_job_and_leaves_no_partial_file(
    cluster: RayCluster,
    photos: Path,
    models_dir: Path,
    tmp_path: Path,
    local: dict[str, tuple[dict[str, bytes], list[str]]],
) -> None:
    out = tmp_path / "out"
    proc = start_remove(photos, out, models_dir, *OPTION_SETS["mask"], "--cluster", cluster.address)
    try:
        wait_for(lambda: len(pngs(out)) >= 1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    want, _ = local["mask"]
    got = files(out)
    assert got, "nothing was written before the interrupt"
    assert all(got[n] == want[n] for n in got)  # whatever is there is whole
    assert not [n for n in got if not n.endswith(".png")]  # no temporary file left
    # leaving the cluster ends the job: its model workers go away
    wait_for(lambda: not cluster.worker_pids(SEGMENTER), timeout=60)


def test_a_node_without_the_model_is_named_with_the_fix(
    cluster: RayCluster, photos: Path, models_dir: Path, tmp_path: Path
) -> None:
    from offcut.models.catalog import load_catalog

    absent = next(s for s in load_catalog().models if not (models_dir / s.file).exists())
    out = tmp_path / "out"
    r = remove(photos, out, models_dir, "--model", absent.name, "--cluster", cluster.address)
    assert r.returncode == 2, r.stderr
    assert re.search(r"on node [\d.]+ \(id \w{8}\): Model", r.stderr), r.stderr
    assert f"offcut models fetch {absent.name}" in r.stderr
    assert pngs(out) == []


def test_ray_client_addresses_are_refused(photos: Path, models_dir: Path, tmp_path: Path) -> None:
    """Ray Client would read the photos on the head, not here: refused before connecting."""
    r = remove(photos, tmp_path / "out", models_dir, "--cluster", "ray://10.0.0.1:10001")
    assert r.returncode == 2
    assert "Ray Client addresses are not supported" in r.stderr


def test_the_worker_gives_the_local_bytes(
    photos: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor's class, pickled as Ray ships it and called in-process: the local writer's PNG
    bytes for a photo given as bytes, and a bad photo's reason worded as locally."""
    need(_have_ray(), "Ray is not installed: pip install -e '.[cluster]'")
    import argparse
    import pickle

    import ray.cloudpickle as cloudpickle

    from offcut.commands import cluster, remove
    from offcut.server.protocol import Limits

    monkeypatch.setenv("OFFCUT_MODELS_DIR", str(models_dir))
    options = {"model": "u2netp", "mask_only": False, "background": "white", "refine": True}
    options["decontaminate"] = True
    assert set(options) == set(cluster.RENDER_OPTIONS)
    actor = pickle.loads(cloudpickle.dumps(cluster.segmenter(options, Limits().max_pixels)))()
    src = photos / "icc.png"
    got = actor({"i": 7, "data": src.read_bytes(), "problem": ""})
    want = io.BytesIO()
    rendered = remove.render(actor.engine, src, argparse.Namespace(**options), Limits())
    remove.png_writer(*rendered)(want)
    assert got == {"i": 7, "png": want.getvalue(), "problem": ""}
    bad = actor({"i": 8, "data": b"not an image", "problem": ""})
    assert bad["png"] == b"" and bad["problem"].startswith("cannot read this image")


@pytest.mark.parametrize("extra", [["--workers", "2"], ["--workers", "0", "--cluster", "auto"]])
def test_workers_goes_with_cluster(
    photos: Path, models_dir: Path, tmp_path: Path, extra: list[str]
) -> None:
    r = remove(photos, tmp_path / "out", models_dir, *extra)
    assert r.returncode == 2
    assert "--workers takes a number from 1 up, with --cluster" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_node_that_dies_mid_run_loses_no_image(
    cluster: RayCluster,
    photos: Path,
    models_dir: Path,
    tmp_path: Path,
    local: dict[str, tuple[dict[str, bytes], list[str]]],
) -> None:
    """SIGKILL the whole second node (its raylet, agents and workers) once the first output is
    written: Ray marks it dead and the lost photos are redone on the head. Last in the module,
    since the cluster has one node afterwards."""
    out = tmp_path / "out"
    proc = start_remove(
        photos, out, models_dir, *OPTION_SETS["cutout"], "--cluster", cluster.address
    )
    try:
        wait_for(lambda: len(pngs(out)) >= 1 and len(cluster.worker_pids(SEGMENTER)) == 2)
        node = descendants(cluster.procs[1].pid)
        assert any(cmdline(p).startswith(f"ray::{SEGMENTER}") for p in node)
        written_before = len(pngs(out))
        for p in node:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert written_before < OUTPUTS, "the run ended before the node was killed"
    assert proc.returncode == 1, stderr
    want, want_report = local["cutout"]
    assert files(out) == want
    assert report_lines(stderr) == want_report
