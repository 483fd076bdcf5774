"""Units of ``offcut remove`` that the CLI tests cannot reach directly: PIL's own bomb guard."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from offcut import batch
from offcut.errors import TOO_LARGE, OffcutError
from offcut.protocol import Limits
from tests.conftest import png_declaring


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
