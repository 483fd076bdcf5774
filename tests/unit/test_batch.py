"""Units of ``offcut remove`` that the CLI tests cannot reach at the right moment: an interrupt in
the middle of a write, a file system without hard links, PIL's own bomb guard."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from PIL import Image

from offcut.client.wire import TOO_LARGE
from offcut.commands import remove as batch
from offcut.errors import OffcutError
from offcut.server.protocol import Limits
from tests.conftest import png_declaring

HINT = "choose another -o file"


def half_then(exc: BaseException) -> Callable[[BinaryIO], None]:
    """A save that gets half a PNG out, then is cut short by ``exc``."""

    def save(fh: BinaryIO) -> None:
        fh.write(b"\x89PNG\r\n\x1a\n" + bytes(50_000))
        fh.flush()
        raise exc

    return save


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(143), OSError(errno.ENOSPC, "")])
def test_a_write_cut_short_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    """Ctrl-C (KeyboardInterrupt), kill (SIGTERM becomes SystemExit) or a full disk in the
    middle of a save: neither the output nor the temporary file is left behind."""
    dst = tmp_path / "out.png"
    with pytest.raises(type(exc)):
        batch.write_atomic(dst, half_then(exc), inputs=batch.Inputs(), overwrite=False, hint=HINT)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_replacement_keeps_the_old_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.png"
    dst.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        batch.write_atomic(
            dst, half_then(KeyboardInterrupt()), inputs=batch.Inputs(), overwrite=True, hint=HINT
        )
    assert dst.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_an_output_that_appears_while_the_model_runs_is_not_replaced(tmp_path: Path) -> None:
    """The name is taken by a hard link, which fails if the name exists: a file created after
    the first check (here: during the save) is refused, not overwritten."""
    dst = tmp_path / "out.png"

    def save(fh: BinaryIO) -> None:
        dst.write_bytes(b"arrived meanwhile")
        fh.write(b"new")

    with pytest.raises(batch.Refused, match="already exists; pass --overwrite"):
        batch.write_atomic(dst, save, inputs=batch.Inputs(), overwrite=False, hint=HINT)
    assert dst.read_bytes() == b"arrived meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def windows_error(winerror: int) -> OSError:
    """What CreateHardLinkW's failure looks like in Python on Windows: errno EINVAL (Python's
    mapping of most Windows errors) with the real code in ``winerror``."""
    exc = OSError(errno.EINVAL, "Incorrect function")
    exc.winerror = winerror  # type: ignore[attr-defined]  # set by Python itself on Windows
    return exc


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EPERM, "Operation not permitted"),  # Linux: vfat, some FUSE file systems
        OSError(errno.ENOTSUP, "Operation not supported"),  # macOS: exFAT, SMB
        windows_error(1),  # ERROR_INVALID_FUNCTION: FAT32 or exFAT on Windows
        windows_error(50),  # ERROR_NOT_SUPPORTED: a share or driver without links
    ],
    ids=["EPERM", "ENOTSUP", "win-invalid-function", "win-not-supported"],
)
def test_file_systems_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    """Where link() is not supported (FAT, some shares) the output still gets written by a
    rename, and an existing name is still refused."""

    def no_links(src: object, dst: object) -> None:
        raise error

    monkeypatch.setattr(batch.os, "link", no_links)
    dst = tmp_path / "out.png"
    batch.write_atomic(
        dst, lambda fh: fh.write(b"new"), inputs=batch.Inputs(), overwrite=False, hint=HINT
    )
    assert dst.read_bytes() == b"new"
    with pytest.raises(batch.Refused, match="already exists"):
        batch.write_atomic(
            dst, lambda fh: fh.write(b"newer"), inputs=batch.Inputs(), overwrite=False, hint=HINT
        )
    assert dst.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_other_link_errors_are_not_taken_for_missing_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain EINVAL (or a Windows error that is not about links) is a real failure: no rename
    behind its back, and no debris."""

    def failing(src: object, dst: object) -> None:
        raise windows_error(5)  # ERROR_ACCESS_DENIED

    monkeypatch.setattr(batch.os, "link", failing)
    with pytest.raises(OSError):
        batch.write_atomic(
            tmp_path / "out.png",
            lambda fh: fh.write(b"new"),
            inputs=batch.Inputs(),
            overwrite=False,
            hint=HINT,
        )
    assert list(tmp_path.iterdir()) == []


def test_new_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        batch.write_atomic(
            tmp_path / "o.png", lambda fh: fh.write(b"x"), inputs=batch.Inputs(), overwrite=False,
            hint=HINT,
        )  # fmt: skip
    finally:
        os.umask(old)
    assert (tmp_path / "o.png").stat().st_mode & 0o777 == 0o600


def test_pil_guard_stops_where_the_header_check_does(tmp_path: Path) -> None:
    """Out of the box PIL only warns about 144 MP (it refuses above 179 MP) and would decode it.
    Under ``pil_limit`` its own guard refuses anything over the limit, so a decoder path that
    skipped our header check still could not decode more."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(12000, 12000))
    limits = Limits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(bomb) as im:  # PIL's default: a warning only
            assert im.size == (12000, 12000)
    saved = Image.MAX_IMAGE_PIXELS
    with batch.pil_limit(limits.max_pixels):
        assert limits.max_pixels == Image.MAX_IMAGE_PIXELS
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(bomb)
        with pytest.raises(OffcutError) as info:
            batch.open_image(bomb, limits)
    assert saved == Image.MAX_IMAGE_PIXELS
    assert info.value.code == TOO_LARGE
    assert "12000x12000" in info.value.message and f"{limits.max_pixels:,}" in info.value.message


def test_max_side_is_checked_too(tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    strip.write_bytes(png_declaring(70_000, 1))
    with pytest.raises(OffcutError, match="70000x1 pixels"):
        batch.open_image(strip, Limits())
