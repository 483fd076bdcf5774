"""``offcut remove``: background removal of image files, in-process (no sidecar needed).

Runs the same :class:`~offcut.engine.Engine` pipeline the sidecar runs. Output is always a fresh
PNG built from pixel arrays, so none of the input's metadata (EXIF, GPS, XMP, comments) can ride
along; only the ICC colour profile is kept, because dropping it would change the colours. EXIF
orientation is applied first, so the cutout is upright like the photo in any viewer.

Images over the sidecar's pixel limit are refused from their header, before a pixel is decoded.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from offcut import formats
from offcut.catalog import load_catalog
from offcut.engine import Engine, SegmentRequest
from offcut.errors import TOO_LARGE, OffcutError
from offcut.protocol import Limits
from offcut.store import ModelStore

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def collect(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files to process (folders expanded, sorted) and the inputs that do not exist."""
    files: list[Path] = []
    missing: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files.extend(
                sorted(
                    f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif p.is_file():
            files.append(p)
        else:
            missing.append(raw)
    return files, missing


def output_paths(files: list[Path], output: str | None, out_dir: str | None) -> list[Path]:
    if output is not None:
        return [Path(output)]
    assert out_dir is not None
    used: set[str] = set()
    result = []
    for f in files:
        name, n = f"{f.stem}.png", 1
        while name in used:
            name, n = f"{f.stem}-{n}.png", n + 1
        used.add(name)
        result.append(Path(out_dir) / name)
    return result


@contextlib.contextmanager
def pil_limit(max_pixels: int) -> Iterator[None]:
    """Hold PIL's own decompression-bomb guard to our limit, as an error.

    Out of the box PIL only warns above ``MAX_IMAGE_PIXELS`` (89 MP) and refuses above twice
    that, so a 150 MP image would decode. Decoders that meet sizes as they go (GIF frames, TIFF
    tiles) check them against this number, so they must stop exactly where the header check does.
    """
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_image(path: Path, limits: Limits) -> Image.Image:
    """``path`` opened from its header alone, refused before decoding if it is over ``limits``.

    A 17 kB PNG can declare 12000x12000 pixels, gigabytes once decoded and converted. Opening
    reads only the header, so PIL's guard is lifted for that call alone (this CLI runs one
    thread): PIL's own refusal would name a pixel count, ours names the size and the way out.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
        im.close()
        raise OffcutError(
            TOO_LARGE,
            f"it is {w}x{h} pixels, over the limit of {limits.max_pixels:,} pixels "
            f"(--max-pixels) or {limits.max_side:,} per side, so it was not decoded. Scale it "
            "down first, or pass a larger --max-pixels if this computer has the memory (about "
            "40 bytes per pixel).",
        )
    return im


def load_rgba(path: Path, limits: Limits) -> tuple[Image.Image, bytes | None]:
    """The upright image as 8-bit RGBA, and its ICC profile (the only metadata kept)."""
    with open_image(path, limits) as im:
        im.load()
        icc = im.info.get("icc_profile")
        upright = ImageOps.exif_transpose(im)
        return upright.convert("RGBA"), icc


def process_one(
    engine: Engine, src: Path, dst: Path, args: argparse.Namespace, limits: Limits
) -> None:
    image, icc = load_rgba(src, limits)
    w, h = image.size
    pixels = image.tobytes()
    res = engine.segment(
        SegmentRequest(
            pixels=pixels,
            width=w,
            height=h,
            fmt=formats.FORMATS["RGBA8"],
            model=args.model,
            refine=args.refine,
            decontaminate=args.decontaminate,
            cutout=not args.mask_only,
        )
    )
    if args.mask_only:
        out = Image.frombytes("L", (w, h), bytes(res.mask))
    else:
        assert res.cutout is not None
        out = Image.frombytes("RGBA", (w, h), bytes(res.cutout))
        if args.background:
            bg = Image.new("RGBA", (w, h), ImageColor.getcolor(args.background, "RGBA"))
            out = Image.alpha_composite(bg, out).convert("RGB")
    # A fresh image from raw pixels: no EXIF/XMP/text chunks can be carried over.
    clean = Image.fromarray(np.asarray(out))
    dst.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"icc_profile": icc} if icc and not args.mask_only else {}
    clean.save(dst, format="PNG", **kwargs)


def _progress(done: int, total: int, started: float, name: str, enabled: bool) -> None:
    if not enabled:
        return
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.monotonic() - started, 1e-6)
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"{rate:.2f} img/s {name[:30]:<30}"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def iter_jobs(files: list[Path], outs: list[Path]) -> Iterator[tuple[Path, Path]]:
    yield from zip(files, outs, strict=True)


def main(args: argparse.Namespace) -> int:
    files, missing = collect(args.inputs)
    for m in missing:
        print(f"offcut remove: {m}: no such file or folder, skipped", file=sys.stderr)
    if args.output is not None and len(files) != 1:
        print(
            "offcut remove: -o takes exactly one input image; use --out-dir for several.",
            file=sys.stderr,
        )
        return 2
    if args.background:
        try:
            ImageColor.getcolor(args.background, "RGBA")
        except ValueError:
            print(
                f"offcut remove: {args.background!r} is not a colour; use a name like white or "
                "a hex value like #00ff00.",
                file=sys.stderr,
            )
            return 2
    if args.max_pixels is not None and args.max_pixels < 1:
        print("offcut remove: --max-pixels must be a positive number of pixels.", file=sys.stderr)
        return 2
    limits = Limits() if args.max_pixels is None else Limits(max_pixels=args.max_pixels)
    if not files:
        print("offcut remove: no images to process.", file=sys.stderr)
        return 1
    engine = Engine(load_catalog(), ModelStore())
    engine.load(args.model)  # a missing model fails here, once, with its own advice
    outs = output_paths(files, args.output, args.out_dir)
    show = sys.stderr.isatty() and not args.quiet
    failed = len(missing)
    started = time.monotonic()
    with pil_limit(limits.max_pixels):
        for n, (src, dst) in enumerate(iter_jobs(files, outs), 1):
            try:
                process_one(engine, src, dst, args, limits)
            except (
                UnidentifiedImageError,
                OSError,
                ValueError,
                Image.DecompressionBombError,
                Image.DecompressionBombWarning,
            ) as exc:
                failed += 1
                if show:
                    sys.stderr.write("\n")
                print(
                    f"offcut remove: {src}: cannot read this image ({type(exc).__name__}: {exc}); "
                    "skipped.",
                    file=sys.stderr,
                )
            except OffcutError as exc:
                failed += 1
                print(f"offcut remove: {src}: {exc.message} Skipped.", file=sys.stderr)
            _progress(n, len(files), started, src.name, show)
    done = len(files) - (failed - len(missing))
    if not args.quiet:
        print(
            f"offcut remove: {done} of {len(files) + len(missing)} images done"
            + (f", {failed} failed" if failed else "")
            + ".",
            file=sys.stderr,
        )
    return 1 if failed else 0
