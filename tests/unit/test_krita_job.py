"""The Krita job's band mechanics (``offcut_krita.job``, ``offcut_krita.pixels``), without Krita.

The docker reads and writes a layer in bands so that Krita's UI thread is never held by one
long call; here fake nodes stand in for Krita's and check that the bands cover the area exactly
once, in whole tile rows, that the bytes come out as one call would give them, and that a job's
phases add up to its wall time. The real proof is ``tests/e2e/test_krita.py`` in Krita 5 and 6.
"""

from __future__ import annotations

import os

import pytest
from offcut_krita import job
from offcut_krita import pixels as kpixels


@pytest.mark.parametrize(
    ("height", "row_bytes", "band_bytes"),
    [(1, 4, 1 << 20), (63, 4000, 1 << 20), (64, 4000, 4000 * 64), (1000, 4000, 1 << 20),
     (7000, 36_000, 2 << 20), (120, 640, 64), (5000, 1 << 22, 2 << 20)],
)  # fmt: skip
def test_bands_cover_the_area_once_in_whole_tile_rows(height, row_bytes, band_bytes):
    bands = kpixels.bands(height, row_bytes, band_bytes)
    assert [top for top, _ in bands] == [sum(r for _, r in bands[:i]) for i in range(len(bands))]
    assert sum(rows for _, rows in bands) == height
    assert all(rows > 0 for _, rows in bands)
    # every band but the last is whole 64-row tiles or a power-of-two part of one (so bands
    # meet at tile edges), and none is bigger than asked unless a single row already is
    for _, rows in bands[:-1]:
        assert rows % kpixels.TILE == 0 or kpixels.TILE % rows == 0
        assert rows * row_bytes <= band_bytes or rows == 1
    if len(bands) > 1:
        step = kpixels.TILE if bands[0][1] >= kpixels.TILE else bands[0][1]
        assert (bands[0][1] + step) * row_bytes > band_bytes  # as big as allowed


def test_default_bands_are_a_few_megabytes():
    bands = kpixels.bands(866, 1155 * 4)  # a 1 MP 8-bit layer
    assert len(bands) > 1
    assert max(rows for _, rows in bands) * 1155 * 4 <= kpixels.BAND_BYTES
    bands = kpixels.bands(7000, 9333 * 8)  # a 64 MP 16-bit layer: parts of a tile row
    assert {rows for _, rows in bands[:-1]} == {8} and sum(r for _, r in bands) == 7000


class FakeNode:
    """A paint device of ``w``×``h`` pixels of ``bpp`` bytes, as Krita's pixelData serves it."""

    def __init__(self, w: int, h: int, bpp: int, data: bytes | None = None) -> None:
        self.w, self.h, self.bpp = w, h, bpp
        self.data = bytearray(data if data is not None else bytes(w * h * bpp))
        self.reads: list[tuple[int, int, int, int]] = []
        self.writes: list[tuple[int, int, int, int]] = []

    def _rows(self, x, y, w, h):
        for r in range(y, y + h):
            a = (r * self.w + x) * self.bpp
            yield a, a + w * self.bpp

    def pixelData(self, x, y, w, h):
        self.reads.append((x, y, w, h))
        return b"".join(bytes(self.data[a:b]) for a, b in self._rows(x, y, w, h))

    def setPixelData(self, data, x, y, w, h):
        assert isinstance(data, bytes) and len(data) == w * h * self.bpp
        self.writes.append((x, y, w, h))
        row = w * self.bpp
        for i, (a, b) in enumerate(self._rows(x, y, w, h)):
            self.data[a:b] = data[i * row : (i + 1) * row]


def plan_for(node: FakeNode, region, bpp: int) -> job.Plan:
    return job.Plan(
        doc=None,
        node_id="id",
        node_name="Subject",
        settings=job.Settings(),
        region=region,
        pixels=None,
        source=node,
        bpp=bpp,
        fmt="BGRA8",
        colorspace="srgb",
        color_model="RGBA",
        depth="U8",
        mask_format="GRAY8",
        cutout=False,
    )


def test_read_steps_give_the_bytes_of_one_whole_read(monkeypatch):
    monkeypatch.setattr(kpixels, "BAND_BYTES", 64 * 100 * 4)  # 64-row bands of a 100-wide area
    w, h, bpp = 130, 300, 4
    node = FakeNode(w, h, bpp, os.urandom(w * h * bpp))
    region = (10, 7, 100, 290)
    plan = plan_for(node, region, bpp)
    plan.marks["start"] = 0.0
    steps = list(job.read_steps(plan))
    one_call = FakeNode(w, h, bpp, node.data).pixelData(*region)
    assert bytes(plan.pixels) == one_call
    assert len(node.reads) == len(steps) == 5  # 290 rows: 4 bands of 64 and one of 34
    assert [s for s, _ in steps] == ["reading"] * 5 and steps[-1][1] == 1.0
    assert plan.source is None and "read" in plan.marks


def test_read_steps_refuse_a_short_answer():
    class Short(FakeNode):
        def pixelData(self, x, y, w, h):
            return super().pixelData(x, y, w, h)[:-1]

    plan = plan_for(Short(8, 8, 4), (0, 0, 8, 8), 4)
    with pytest.raises(job.JobError, match="expected 256"):
        list(job.read_steps(plan))


def test_write_puts_every_band_where_one_call_would(monkeypatch):
    monkeypatch.setattr(kpixels, "BAND_BYTES", 64 * 50)
    w, h = 70, 200
    data = os.urandom(50 * 190)
    banded, whole = FakeNode(w, h, 1), FakeNode(w, h, 1)
    steps = list(job._write(banded, data, (5, 3, 50, 190)))
    whole.setPixelData(data, 5, 3, 50, 190)
    assert banded.data == whole.data
    assert len(banded.writes) == len(steps) == 3
    assert [s for s, _ in steps] == ["writing"] * 3


def test_phases_add_up_to_the_wall_time():
    marks = {"start": 10.0, "read": 10.5, "reply": 13.0, "bands": 13.125, "written": 13.25}
    marks["done"] = 13.5
    p = job.phases(marks, 2.25)
    assert p["read"] == 0.5 and p["write"] == 0.25 and p["settle"] == 0.25
    assert p["attach"] == 0.125  # part of write
    assert p["wall"] == 3.5
    assert p["other"] == pytest.approx(3.5 - 0.5 - 2.25 - 0.25 - 0.25)
    assert job.phases({}, 1.0) == {"roundtrip": 1.0}
