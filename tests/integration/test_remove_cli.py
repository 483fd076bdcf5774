"""``offcut remove`` end to end: real files, the real model, metadata stripping, bad inputs."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import SIDECAR_SRC, png_declaring, sample_rgba


def offcut_env(models: Path) -> dict[str, str]:
    return dict(
        os.environ,
        OFFCUT_MODELS_DIR=str(models),
        PYTHONPATH=str(SIDECAR_SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def offcut(
    *args: str, models: Path, cwd: Path, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offcut", *args],
        env=offcut_env(models),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec_fn,
    )


def photo(w: int = 120, h: int = 80) -> Image.Image:
    return Image.frombytes("RGBA", (w, h), sample_rgba(w, h)).convert("RGB")


@pytest.fixture
def jpeg_with_gps(tmp_path: Path) -> Path:
    img = photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW to display
    exif[0x010F] = "SecretCam"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (51.0, 30.0, 12.0)
    p = tmp_path / "in.jpg"
    img.save(p, exif=exif, quality=95)
    return p


def test_cutout_strips_metadata_and_applies_orientation(
    tmp_path: Path, models_dir: Path, jpeg_with_gps: Path
) -> None:
    out = tmp_path / "out.png"
    r = offcut("remove", str(jpeg_with_gps), "-o", str(out), models=models_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        assert im.size == (80, 120)  # upright: EXIF orientation 6 applied
        assert not im.getexif() and "exif" not in im.info
        assert not any(k.lower().startswith(("xml", "exif", "comment")) for k in im.info)
        alpha = np.asarray(im)[..., 3]
    raw = out.read_bytes()
    assert b"SecretCam" not in raw and b"eXIf" not in raw
    # the orange disc is kept, the noisy background goes
    assert alpha[60, 40] > 200 and alpha[2, 2] < 60


def test_xmp_and_text_chunks_are_dropped(tmp_path: Path, models_dir: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>GPSLatitude 51</x:xmpmeta>")
    info.add_text("Comment", "patient 1234")
    src = tmp_path / "in.png"
    photo().save(src, pnginfo=info)
    out = tmp_path / "o.png"
    r = offcut("remove", str(src), "-o", str(out), models=models_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert b"xmpmeta" not in data and b"patient" not in data


def test_folder_with_a_bad_file(tmp_path: Path, models_dir: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    photo().save(src / "a.jpg")
    photo(64, 64).save(src / "sub" / "b.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("ignored")
    r = offcut(
        "remove",
        str(src),
        "--out-dir",
        str(tmp_path / "out"),
        "--mask-only",
        models=models_dir,
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert "broken.jpg" in r.stderr and "skipped" in r.stderr
    assert "2 of 3 images done, 1 failed" in r.stderr
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == ["a.png", "b.png"]
    with Image.open(tmp_path / "out" / "a.png") as im:
        assert im.mode == "L" and im.size == (120, 80)


def test_background_colour(tmp_path: Path, models_dir: Path) -> None:
    src = tmp_path / "in.png"
    photo().save(src)
    out = tmp_path / "o.png"
    r = offcut(
        "remove",
        str(src),
        "-o",
        str(out),
        "--background",
        "#00ff00",
        models=models_dir,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.mode == "RGB"
        corner = np.asarray(im)[1, 1]
    assert corner[1] > 150 and corner[0] < 100  # background replaced by green


def test_usage_errors(tmp_path: Path, models_dir: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    photo().save(a)
    photo().save(b)
    r = offcut("remove", str(a), str(b), "-o", "x.png", models=models_dir, cwd=tmp_path)
    assert r.returncode == 2 and "--out-dir" in r.stderr
    r = offcut(
        "remove",
        str(a),
        "-o",
        "x.png",
        "--background",
        "notacolour",
        models=models_dir,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "colour" in r.stderr
    r = offcut(
        "remove",
        str(tmp_path / "missing.png"),
        str(a),
        "--out-dir",
        "o",
        models=models_dir,
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "no such file" in r.stderr
    assert (tmp_path / "o" / "a.png").exists()


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    photo().save(src)
    empty = tmp_path / "models"
    empty.mkdir()
    r = offcut("remove", str(src), "-o", "o.png", models=empty, cwd=tmp_path)
    assert r.returncode == 2
    assert "offcut models fetch u2netp" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_max_pixels_refuses_from_the_header(tmp_path: Path, models_dir: Path) -> None:
    src = tmp_path / "in.png"
    photo().save(src)
    r = offcut(
        "remove", str(src), "-o", "o.png", "--max-pixels", "5000", models=models_dir, cwd=tmp_path
    )
    assert r.returncode == 1
    assert "120x80" in r.stderr and "5,000 pixels" in r.stderr and "--max-pixels" in r.stderr
    assert not (tmp_path / "o.png").exists()


# --------------------------------------------------------------------------- never destroy a file


def leftovers(folder: Path) -> list[str]:
    """Hidden files in ``folder``: where a write cut short would leave its temporary file."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_output_that_is_the_input_is_refused(tmp_path: Path, models_dir: Path) -> None:
    """``-o`` naming the input used to overwrite the original with its cutout. However the path
    is spelt, and even with --overwrite, the input is left alone and the run fails."""
    src = tmp_path / "in.png"
    photo().save(src)
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    r = offcut("remove", "in.png", "-o", str(src), models=models_dir, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "refused" in r.stderr and "is an input" in r.stderr and "another -o" in r.stderr
    assert "0 of 1 images done, 1 failed" in r.stderr
    assert src.read_bytes() == before
    r = offcut(
        "remove", "in.png", "-o", "sub/../in.png", "--overwrite", models=models_dir, cwd=tmp_path
    )
    assert r.returncode == 1, r.stderr
    assert "refused" in r.stderr and "is an input" in r.stderr
    assert src.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_out_dir_that_is_the_input_folder(tmp_path: Path, models_dir: Path) -> None:
    """``--out-dir`` equal to the input folder used to overwrite a PNG input with its own mask
    (same stem, .png). That input is refused with advice; the rest of the batch is written."""
    shots = tmp_path / "shots"
    shots.mkdir()
    photo().save(shots / "a.png")
    photo(64, 64).save(shots / "b.jpg")
    before = (shots / "a.png").read_bytes()
    r = offcut(
        "remove", str(shots), "--out-dir", str(shots), "--mask-only", models=models_dir,
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"{shots / 'a.png'}: refused" in r.stderr and "another --out-dir" in r.stderr
    assert "1 of 2 images done, 1 failed" in r.stderr
    assert (shots / "a.png").read_bytes() == before
    with Image.open(shots / "b.png") as im:
        assert im.mode == "L" and im.size == (64, 64)
    assert leftovers(shots) == []


def test_hard_link_to_the_input_is_refused(tmp_path: Path, models_dir: Path) -> None:
    """An output name that is another name (hard link) for the input: writing it would rewrite
    the input's bytes. Compared by inode, so it is refused with and without --overwrite."""
    src = tmp_path / "in.png"
    photo().save(src)
    before = src.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    os.link(src, out / "in.png")
    for extra in ([], ["--overwrite"]):
        r = offcut(
            "remove", str(src), "--out-dir", str(out), *extra, models=models_dir, cwd=tmp_path
        )
        assert r.returncode == 1, r.stderr
        assert "refused" in r.stderr and "same file as the input" in r.stderr
        assert src.read_bytes() == before
    assert leftovers(out) == []


def test_symlinked_output_is_never_written_through(tmp_path: Path, models_dir: Path) -> None:
    """An output path that is a symlink used to be followed: the file it pointed at was replaced
    by a PNG, and a dangling link created its target. Both are refused, even with --overwrite."""
    src = tmp_path / "in.png"
    photo().save(src)
    victim = tmp_path / "notes.txt"
    victim.write_text("the user's notes\n")
    link = tmp_path / "out.png"
    link.symlink_to(victim)
    dangling = tmp_path / "new.png"
    dangling.symlink_to(tmp_path / "elsewhere.png")
    for target, extra in ((link, []), (dangling, ["--overwrite"])):
        r = offcut("remove", str(src), "-o", str(target), *extra, models=models_dir, cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "refused" in r.stderr and "symbolic link" in r.stderr
    assert victim.read_text() == "the user's notes\n"
    assert link.is_symlink() and dangling.is_symlink()
    assert not (tmp_path / "elsewhere.png").exists()
    assert leftovers(tmp_path) == []


def test_existing_output_needs_overwrite_and_is_replaced_whole(
    tmp_path: Path, models_dir: Path
) -> None:
    """The CLI never overwrites a user's file unless told to; told to, it replaces the file by a
    rename (a second name for the old file keeps the old bytes: nothing was truncated in place),
    and the new file's mode follows the umask."""
    src = tmp_path / "in.png"
    photo().save(src)
    out = tmp_path / "out.png"
    out.write_bytes(b"the user's own file")
    keep = tmp_path / "keep"
    os.link(out, keep)
    r = offcut("remove", str(src), "-o", str(out), models=models_dir, cwd=tmp_path)
    assert r.returncode == 1
    assert "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.read_bytes() == b"the user's own file"
    r = offcut(
        "remove", str(src), "-o", str(out), "--overwrite", models=models_dir, cwd=tmp_path,
        preexec_fn=lambda: os.umask(0o027),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (120, 80)
    assert keep.read_bytes() == b"the user's own file"
    assert out.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


def _files_up_to_64k() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_a_write_cut_short_leaves_no_partial_output(tmp_path: Path, models_dir: Path) -> None:
    """A write that fails halfway (here: the kernel's file-size limit, as a full disk would) used
    to leave a truncated PNG under the output name. Now nothing is left under either name, and
    an existing output being replaced keeps its old bytes."""
    src = tmp_path / "in.png"
    photo(400, 300).save(src)  # a ~270 kB cutout: well past the limit
    out = tmp_path / "out.png"
    r = offcut(
        "remove", str(src), "-o", str(out), models=models_dir, cwd=tmp_path,
        preexec_fn=_files_up_to_64k,
    )  # fmt: skip
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert r.returncode == 1, r.stderr
    assert f"cannot write {out}" in r.stderr and "File too large" in r.stderr
    out.write_bytes(b"previous result")
    r = offcut(
        "remove", str(src), "-o", str(out), "--overwrite", models=models_dir, cwd=tmp_path,
        preexec_fn=_files_up_to_64k,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert out.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- pixel bombs


def offcut_peak_rss(*args: str, models: Path, cwd: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak resident bytes) of one CLI run.

    ``os.wait4`` reports the resource use of this child alone (RUSAGE_CHILDREN would be the
    maximum over every child this pytest process ever reaped).
    """
    log = cwd / f"stderr-{len(list(cwd.glob('stderr-*')))}.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offcut", *args],
            env=offcut_env(models),
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = threading.Timer(300, proc.kill)  # as subprocess.run(timeout=300) elsewhere
        deadline.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            deadline.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, log.read_text(), usage.ru_maxrss * unit


def test_pixel_bomb_is_refused_before_decoding(tmp_path: Path, models_dir: Path) -> None:
    """A 17.5 kB PNG declaring 12000x12000 (144 MP, over the sidecar's 100 MP limit) is refused
    from its header: the child's peak memory stays within what a tiny image costs, far below
    even the 144 MB that decoding these pixels would take."""
    from offcut.server.protocol import Limits

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(12000, 12000))
    assert bomb.stat().st_size < 20_000
    small = tmp_path / "small.png"
    photo().save(small)
    rc, err, baseline = offcut_peak_rss(
        "remove", str(small), "-o", "small-out.png", models=models_dir, cwd=tmp_path
    )
    assert rc == 0, err
    rc, err, peak = offcut_peak_rss(
        "remove", str(bomb), "-o", "bomb-out.png", models=models_dir, cwd=tmp_path
    )
    assert rc == 1, err
    assert "12000x12000" in err and f"{Limits().max_pixels:,} pixels" in err
    assert "Scale it down" in err and "--max-pixels" in err
    assert "Traceback" not in err
    assert not (tmp_path / "bomb-out.png").exists()
    decoded = 12000 * 12000  # bytes: PIL's smallest in-memory form of these pixels
    assert peak < baseline + decoded // 2, (peak, baseline)


# --------------------------------------------------------------------------- metadata, every mode


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


@pytest.fixture
def jpeg_with_everything(tmp_path: Path) -> tuple[Path, bytes]:
    """A JPEG carrying EXIF (camera and GPS), XMP, a COM text segment and an ICC profile."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.0)
    gps[3], gps[4] = "W", (0.0, 7.0, 39.0)
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="51,30.2N"/>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    src = tmp_path / "meta.jpg"
    photo().save(
        src, exif=exif, xmp=xmp, comment=b"patient 1234 at home", icc_profile=icc, quality=95
    )
    raw = src.read_bytes()  # the input really carries everything the test looks for
    assert b"Exif\0\0" in raw and b"SecretCam" in raw and b"GPSLatitude" in raw
    assert b"http://ns.adobe.com/xap/1.0/" in raw and b"patient 1234" in raw
    with Image.open(src) as im:
        assert im.getexif().get_ifd(0x8825)[1] == "N"
        assert im.info["icc_profile"] == icc and "xmp" in im.info and "comment" in im.info
    return src, icc


@pytest.mark.parametrize(
    ("flags", "keeps_icc"),
    [([], True), (["--mask-only"], False), (["--background", "white"], True)],
    ids=["cutout", "mask-only", "background"],
)
def test_no_metadata_survives_any_output_mode(
    tmp_path: Path,
    models_dir: Path,
    jpeg_with_everything: tuple[Path, bytes],
    flags: list[str],
    keeps_icc: bool,
) -> None:
    """EXIF, GPS, XMP and text are gone from every kind of output, checked in the raw bytes and
    the PNG's chunk list; the ICC profile is kept exactly where colours depend on it (not in a
    mask, which has no colours)."""
    src, icc = jpeg_with_everything
    out = tmp_path / "out.png"
    r = offcut("remove", str(src), "-o", str(out), *flags, models=models_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    raw = out.read_bytes()
    chunks = png_chunks(raw)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert set(kinds) == {b"IHDR", b"IDAT", b"IEND"} | ({b"iCCP"} if keeps_icc else set()), kinds
    outside_pixels = b"".join(kind + data for kind, data in chunks if kind != b"IDAT")
    for marker in (b"Exif", b"eXIf", b"GPS", b"SecretCam", b"xmp", b"adobe", b"patient", b"tEXt"):
        assert marker not in outside_pixels, marker
    for marker in (b"Exif\0\0", b"SecretCam", b"GPSLatitude", b"xmpmeta", b"patient 1234"):
        assert marker not in raw, marker
    with Image.open(out) as im:
        assert not im.getexif()
        assert not {"exif", "xmp", "XML:com.adobe.xmp", "comment", "Comment"} & set(im.info)
        assert im.info.get("icc_profile") == (icc if keeps_icc else None)
