"""``offcut remove``: background removal of image files, in-process (no sidecar needed).

Runs the same :class:`~offcut.engine.engine.Engine` pipeline the sidecar runs. Output is always a
fresh PNG built from pixel arrays, so none of the input's metadata (EXIF, GPS, XMP, comments) can
ride along; only the ICC colour profile is kept, because dropping it would change the colours. EXIF
orientation is applied first, so the cutout is upright like the photo in any viewer.

The CLI never destroys a file it was not asked to replace. An output is refused when it is one of
the inputs (by resolved path, or by inode: a hard link is the same file), when it is a symbolic
link (never written through), when it is not a regular file, or when it already exists and
``--overwrite`` was not given. Outputs are written whole to a temporary file in the output folder
and only then take their name, so a write cut short (full disk, Ctrl-C) leaves no truncated PNG.
Images over the sidecar's pixel limit are refused from their header, before a pixel is decoded.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import signal
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from offcut.client.wire import TOO_LARGE
from offcut.engine import formats
from offcut.engine.engine import Engine, SegmentRequest
from offcut.errors import OffcutError
from offcut.models.catalog import load_catalog
from offcut.models.fetch import fsync_dir, unlink_quietly
from offcut.models.store import ModelStore
from offcut.server.protocol import Limits

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
    used: set[str] = set()  # case-folded: on macOS and Windows A.png and a.png are one file
    result = []
    for f in files:
        name, n = f"{f.stem}.png", 1
        while name.casefold() in used:
            name, n = f"{f.stem}-{n}.png", n + 1
        used.add(name.casefold())
        result.append(Path(out_dir) / name)
    return result


# --------------------------------------------------------------------------- reading, with a cap


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


def open_image(path: Path | BinaryIO, limits: Limits) -> Image.Image:
    """``path`` (a file, or its bytes in a file object on a cluster worker) opened from its header
    alone, refused before decoding if it is over ``limits``.

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


def load_rgba(path: Path | BinaryIO, limits: Limits) -> tuple[Image.Image, bytes | None]:
    """The upright image as 8-bit RGBA, and its ICC profile (the only metadata kept)."""
    with open_image(path, limits) as im:
        im.load()
        icc = im.info.get("icc_profile")
        upright = ImageOps.exif_transpose(im)
        return upright.convert("RGBA"), icc


def render(
    engine: Engine, src: Path | BinaryIO, args: argparse.Namespace, limits: Limits
) -> tuple[Image.Image, bytes | None]:
    """The output image for ``src`` and the ICC profile to write with it (None for a mask).

    ``src`` is a path here, and the file's bytes on a cluster worker (commands/cluster.py), so
    both paths make the same image from the same bytes.
    """
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
    return clean, (icc if icc and not args.mask_only else None)


#: What reading or decoding a bad input raises: reported and skipped, never fatal to a batch.
READ_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def render_or_reason(
    engine: Engine, src: Path | BinaryIO, args: argparse.Namespace, limits: Limits
) -> tuple[Image.Image, bytes | None] | str:
    """:func:`render`, or why this input was skipped (for the user): the one place that decides
    which failures skip an image, for the local loop and the cluster's workers alike."""
    try:
        return render(engine, src, args, limits)
    except (OffcutError, *READ_ERRORS) as exc:
        return skipped(exc)


def skipped(exc: BaseException) -> str:
    """Why an input was skipped, from what reading or rendering it raised (for the user)."""
    if isinstance(exc, OffcutError):
        return f"{exc.message} Skipped."
    return f"cannot read this image ({type(exc).__name__}: {exc}); skipped."


def png_writer(image: Image.Image, icc: bytes | None) -> Callable[[BinaryIO], None]:
    """The one PNG encoding of an output: a cluster worker encodes with it into memory and the
    local loop into the output's temporary file, so both write the same bytes."""
    kwargs = {"icc_profile": icc} if icc else {}
    return lambda fh: image.save(fh, format="PNG", **kwargs)


# --------------------------------------------------------------------------- writing, safely


class Refused(Exception):
    """An output this run must not write; the message says why and what to do instead."""


@dataclass
class Inputs:
    """The batch's input files by resolved path and by inode, so no output can replace one."""

    paths: set[Path] = field(default_factory=set)
    inodes: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def of(cls, files: list[Path]) -> Inputs:
        found = cls()
        for f in files:
            with contextlib.suppress(OSError, RuntimeError):
                found.paths.add(f.resolve())
            with contextlib.suppress(OSError):
                st = f.stat()
                found.inodes.add((st.st_dev, st.st_ino))
        return found


def check_output(dst: Path, inputs: Inputs, *, overwrite: bool, hint: str) -> None:
    """Raise :class:`Refused` unless writing ``dst`` can only replace what the user asked to.

    The resolved path catches ``-o`` spelt differently from the input; the inode catches a hard
    link, or a case-insensitive file system, where two different names are one file. ``hint``
    is the way out ("choose another -o file" or "... --out-dir").
    """
    with contextlib.suppress(OSError, RuntimeError):  # a link loop: refused as a link below
        if dst.resolve() in inputs.paths:
            raise Refused(f"the output {dst} is an input file; {hint}.")
    try:
        st = dst.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise Refused(
            f"the output {dst} is a symbolic link, and Offcut never writes through one; "
            f"remove the link or {hint}."
        )
    if (st.st_dev, st.st_ino) in inputs.inodes:
        raise Refused(f"the output {dst} is the same file as the input (a hard link); {hint}.")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"the output {dst} exists and is not a regular file; {hint}.")
    if not overwrite:
        raise Refused(_exists(dst, hint))


def _exists(dst: Path, hint: str) -> str:
    return f"the output {dst} already exists; pass --overwrite to replace it, or {hint}."


_CREATE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
#: link() errors meaning "this file system has no hard links" (FAT, some network shares).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
#: The same from ``CreateHardLinkW`` on Windows: ERROR_INVALID_FUNCTION (FAT32, exFAT),
#: ERROR_NOT_SUPPORTED (shares, some drivers), ERROR_TOO_MANY_LINKS. Python maps the first to
#: EINVAL, which is not specific enough to go by.
_NO_HARD_LINKS_WINDOWS = {1, 50, 1142}


def no_hard_links(exc: OSError) -> bool:
    """Whether ``link()`` failed because the file system cannot link, not for another reason."""
    return exc.errno in _NO_HARD_LINKS or getattr(exc, "winerror", None) in _NO_HARD_LINKS_WINDOWS


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new hidden file beside the output: created exclusively, so never through a link, with
    mode 0666 less the umask like any new file (mkstemp's 0600 would surprise the user)."""
    for _ in range(100):
        tmp = folder / f".{name[:200]}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def write_atomic(
    dst: Path,
    save: Callable[[BinaryIO], None],
    *,
    inputs: Inputs,
    overwrite: bool,
    hint: str,
) -> None:
    """Write ``dst`` whole or not at all.

    ``save`` writes into a temporary file in the output folder, which is fsynced and checked
    again (the folder may have changed while the model ran) before it takes the output's name:
    by a hard link, which fails if the name exists, so nothing that appeared meanwhile is
    replaced; or, with ``overwrite``, by a rename. Neither follows a symlink at ``dst`` nor
    writes into an existing file's bytes. On any failure, Ctrl-C included, the temporary file is
    removed.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(dst.parent, dst.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh)
            fh.flush()
            os.fsync(fh.fileno())
        check_output(dst, inputs, overwrite=overwrite, hint=hint)
        if overwrite:
            os.replace(tmp, dst)
        else:
            _link_new(tmp, dst, hint)
        fsync_dir(dst.parent)
    finally:
        unlink_quietly(tmp)


def _link_new(tmp: Path, dst: Path, hint: str) -> None:
    """Give ``tmp``'s file the name ``dst`` only if no file has that name yet."""
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise Refused(_exists(dst, hint)) from None
    except OSError as exc:
        if not no_hard_links(exc):
            raise
        # No hard links here: check, then rename. Only another program of the same user could
        # create the name in the microseconds between, and that is out of scope.
        if os.path.lexists(dst):
            raise Refused(_exists(dst, hint)) from None
        os.replace(tmp, dst)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Let ``kill`` unwind like Ctrl-C does, so a temporary file is removed, not left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_one(
    engine: Engine,
    src: Path,
    dst: Path,
    args: argparse.Namespace,
    *,
    inputs: Inputs,
    limits: Limits,
    hint: str,
) -> str | None:
    """Process one image; None when its output was written, else why not (for the user)."""
    try:
        check_output(dst, inputs, overwrite=args.overwrite, hint=hint)  # before the model runs
    except Refused as exc:
        return f"refused: {exc}"
    rendered = render_or_reason(engine, src, args, limits)
    if isinstance(rendered, str):
        return rendered
    return write_or_reason(
        dst, png_writer(*rendered), inputs=inputs, overwrite=args.overwrite, hint=hint
    )


def write_or_reason(
    dst: Path, save: Callable[[BinaryIO], None], *, inputs: Inputs, overwrite: bool, hint: str
) -> str | None:
    """:func:`write_atomic`; None when ``dst`` was written, else why not (for the user)."""
    try:
        write_atomic(dst, save, inputs=inputs, overwrite=overwrite, hint=hint)
    except Refused as exc:
        return f"refused: {exc}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return (
            f"cannot write {dst} ({reason}); check that its folder is writable and has free "
            "space. No partial file was left. Skipped."
        )
    return None


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


@dataclass
class Batch:
    """One run's work, decided before any image is processed, locally or on a cluster."""

    files: list[Path]
    missing: list[str]  # inputs that do not exist: reported, counted as failed
    outs: list[Path]  # one output per file, in the same order
    inputs: Inputs
    limits: Limits
    hint: str


#: What a batch's runner yields for each file, in any order: the file, and None when its output
#: was written, else why not (for the user).
Results = Generator[tuple[Path, "str | None"], None, None]


def plan(args: argparse.Namespace) -> Batch | int:
    """The batch ``args`` ask for, or the exit status of a usage error already reported."""
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
    return Batch(
        files=files,
        missing=missing,
        outs=output_paths(files, args.output, args.out_dir),
        inputs=Inputs.of(files),
        limits=limits,
        hint="choose another -o file" if args.output is not None else "choose another --out-dir",
    )


def run_local(batch: Batch, args: argparse.Namespace) -> Results:
    """Every image through one in-process engine, in order."""
    engine = Engine(load_catalog(), ModelStore())
    engine.load(args.model)  # a missing model fails here, once, with its own advice
    return (
        (
            src,
            run_one(
                engine, src, dst, args, inputs=batch.inputs, limits=batch.limits, hint=batch.hint
            ),
        )
        for src, dst in iter_jobs(batch.files, batch.outs)
    )


def report(batch: Batch, results: Results, args: argparse.Namespace) -> int:
    """Drive ``results`` with the progress bar, report each failure, and sum up; the exit status.

    ``results`` is closed on the way out, Ctrl-C included, so a runner's clean-up (the cluster's
    job) runs before the command returns.
    """
    show = sys.stderr.isatty() and not args.quiet
    failed = len(batch.missing)
    started = time.monotonic()
    total = len(batch.files)
    with pil_limit(batch.limits.max_pixels), _sigterm_as_exit(), contextlib.closing(results):
        for n, (src, problem) in enumerate(results, 1):
            if problem is not None:
                failed += 1
                if show:
                    sys.stderr.write("\n")
                print(f"offcut remove: {src}: {problem}", file=sys.stderr)
            _progress(n, total, started, src.name, show)
    done = total - (failed - len(batch.missing))
    if not args.quiet:
        print(
            f"offcut remove: {done} of {total + len(batch.missing)} images done"
            + (f", {failed} failed" if failed else "")
            + ".",
            file=sys.stderr,
        )
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    workers = getattr(args, "workers", None)
    if workers is not None and (workers < 1 or not getattr(args, "cluster", None)):
        print("offcut remove: --workers takes a number from 1 up, with --cluster.", file=sys.stderr)
        return 2
    batch = plan(args)
    if isinstance(batch, int):
        return batch
    if getattr(args, "cluster", None):
        from offcut.commands import cluster  # Ray is an optional extra: imported only here

        return report(batch, cluster.run(batch, args), args)
    return report(batch, run_local(batch, args), args)
