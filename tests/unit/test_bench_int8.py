"""bench/int8.py, which measured the int8 recipe's scales: the calibration photos must come
from the wheel with the recorded bytes, or the script must stop and say so, never calibrate on
something else. (The recipe itself is tested in test_derive_int8.py.)"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import int8


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_calibration_stops_without_the_wheel(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="pip download scikit-image"):
        int8.calibration_images(tmp_path / "missing.whl")


def test_calibration_stops_on_other_photos(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for member, _sha256, _licence in int8.CALIBRATION:
            z.writestr(member, _png())  # the right names, other bytes
    with pytest.raises(SystemExit, match="not the photo calibrated on"):
        int8.calibration_images(wheel)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("skimage/data/moon.png", _png())  # a wheel without the photos
    with pytest.raises(SystemExit, match=r"has no skimage/data/astronaut\.png"):
        int8.calibration_images(wheel)
