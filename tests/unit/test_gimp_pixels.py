"""The GIMP plug-in's pixel logic (``plugin_gimp/offcut_gimp/pixels.py``), without GIMP.

Formats per precision, the depth ladder under the sidecar's message limit, row cropping, the
layer's alpha kept under decontaminated colours and clipping to the canvas, on real bytes.
"""

from __future__ import annotations

import struct
from array import array

import pytest
from offcut_gimp import pixels as px

# GimpPrecision values (libgimpbase/gimpbaseenums.h): component * 100 + 0/50/75 for linear,
# non-linear and perceptual TRCs.
U8, U16, U32, HALF, FLOAT, DOUBLE = 100, 200, 300, 500, 600, 700
TRCS = (0, 50, 75)


@pytest.mark.parametrize(
    ("gray", "sample", "read", "wire", "bpp", "code"),
    [
        (False, "u8", "R'G'B'A u8", "RGBA8", 4, "B"),
        (False, "u16", "R'G'B'A u16", "RGBA16", 8, "H"),
        (False, "float", "R'G'B'A float", "RGBAF32", 16, "f"),
        (True, "u8", "Y'A u8", "GRAYA8", 2, "B"),
        (True, "u16", "Y'A u16", "GRAYA16", 4, "H"),
        (True, "float", "Y'A float", "GRAYAF32", 8, "f"),
    ],
)
def test_depth_formats_and_sizes(gray, sample, read, wire, bpp, code):
    depth = px.Depth(gray, sample)
    assert (depth.read_format, depth.wire_format) == (read, wire)
    assert depth.bytes_per_pixel == bpp
    assert depth.channels == (2 if gray else 4)
    assert depth.bytes_per_sample * depth.channels == bpp
    assert array(depth.typecode).itemsize == depth.bytes_per_sample
    assert depth.typecode == code


@pytest.mark.parametrize("trc", TRCS)
@pytest.mark.parametrize(
    ("component", "read", "mask"),
    [
        (U8, "u8", "u8"),
        (U16, "float", "u16"),
        (U32, "float", "float"),
        (HALF, "float", "float"),
        (FLOAT, "float", "float"),
        (DOUBLE, "float", "float"),
    ],
)
def test_precision_decides_read_and_mask_samples(component, trc, read, mask):
    assert px.precision_sample(component + trc) == read
    assert px.mask_sample(component + trc) == mask
    assert px.MASK_WIRE[mask] in px.WIRE_SAMPLE
    assert px.WIRE_SAMPLE[px.MASK_WIRE[mask]] == mask


def test_pick_depth_without_a_limit_keeps_the_images_depth():
    assert px.pick_depth(False, U8 + 75, 10**8, {}).sample == "u8"
    assert px.pick_depth(False, FLOAT, 10**8, {}).sample == "float"
    assert px.pick_depth(True, U16 + 50, 10**8, {}).wire_format == "GRAYAF32"


def test_pick_depth_steps_down_to_fit_the_message_limit():
    pixels = 1000
    room = 65536
    limit = {"max_message_bytes": pixels * 16 + room}  # float RGBA just fits
    assert px.pick_depth(False, FLOAT, pixels, limit).sample == "float"
    limit = {"max_message_bytes": pixels * 16 + room - 1}  # one byte short: u16 (8 B/px)
    assert px.pick_depth(False, FLOAT, pixels, limit).sample == "u16"
    limit = {"max_message_bytes": pixels * 8 + room - 1}  # u16 too: u8
    assert px.pick_depth(False, FLOAT, pixels, limit).sample == "u8"
    limit = {"max_message_bytes": 10}  # nothing fits: u8, and the sidecar says no in words
    assert px.pick_depth(False, FLOAT, pixels, limit).sample == "u8"
    # Grayscale halves the sizes: float gray fits where float RGBA did not.
    limit = {"max_message_bytes": pixels * 8 + room}
    assert px.pick_depth(True, FLOAT, pixels, limit).sample == "float"
    # An 8-bit image is never read deeper than it is, whatever the room.
    assert px.pick_depth(False, U8, pixels, {"max_message_bytes": 10**9}).sample == "u8"


def grid(width, height, bpp):
    """Row-major buffer whose pixel (x, y) is bpp bytes all equal to y * width + x."""
    return bytes(b for i in range(width * height) for b in [i] * bpp)


def test_crop_rows_cuts_a_window_out_of_the_rows():
    data = grid(5, 4, 1)
    assert px.crop_rows(data, 5, 1, 1, 1, 3, 2) == bytes([6, 7, 8, 11, 12, 13])
    assert px.crop_rows(data, 5, 1, 4, 3, 1, 1) == bytes([19])
    assert px.crop_rows(data, 5, 1, 0, 0, 5, 4) == data


def test_crop_rows_whole_rows_and_wide_samples():
    data = grid(3, 4, 2)  # u16 samples
    assert px.crop_rows(data, 3, 2, 0, 1, 3, 2) == data[6:18]
    assert px.crop_rows(data, 3, 2, 2, 0, 1, 4) == bytes([2, 2, 5, 5, 8, 8, 11, 11])
    f32 = struct.pack("<6f", 0.0, 0.25, 0.5, 0.75, 1.0, 0.125)  # 3 x 2 float mask
    assert struct.unpack("<2f", px.crop_rows(f32, 3, 4, 1, 1, 2, 1)) == (1.0, 0.125)


def test_keep_alpha_puts_the_layers_alpha_under_the_cutout_colours():
    depth = px.Depth(False, "u8")
    source = bytes([10, 20, 30, 255, 40, 50, 60, 128, 70, 80, 90, 0])
    cutout = bytes([11, 21, 31, 7, 41, 51, 61, 8, 71, 81, 91, 9])  # colours + premultiplied cut
    out = px.keep_alpha(cutout, "RGBA8", source, depth)
    assert out == bytes([11, 21, 31, 255, 41, 51, 61, 128, 71, 81, 91, 0])


def test_keep_alpha_from_a_grayscale_layer_and_deep_samples():
    gray = px.Depth(True, "u16")
    source = array("H", [1000, 65535, 2000, 300]).tobytes()  # Y'A u16, two pixels
    cutout = array("H", [1, 2, 3, 4, 5, 6, 7, 8]).tobytes()
    out = array("H")
    out.frombytes(px.keep_alpha(cutout, "RGBA16", source, gray))
    assert list(out) == [1, 2, 3, 65535, 5, 6, 7, 300]

    rgba_f = px.Depth(False, "float")
    source = array("f", [0.1, 0.2, 0.3, 0.5]).tobytes()
    cutout = array("f", [0.9, 0.8, 0.7, 0.25]).tobytes()
    out = array("f")
    out.frombytes(px.keep_alpha(cutout, "RGBAF32", source, rgba_f))
    assert list(out) == [pytest.approx(v) for v in (0.9, 0.8, 0.7, 0.5)]


def test_keep_alpha_leaves_a_mismatched_cutout_alone():
    depth = px.Depth(False, "u8")
    source = bytes([1, 2, 3, 4])
    cutout16 = array("H", [9, 9, 9, 9]).tobytes()
    assert px.keep_alpha(cutout16, "RGBA16", source, depth) == cutout16  # other sample type
    two_pixels = bytes(8)
    assert px.keep_alpha(two_pixels, "RGBA8", source, depth) == two_pixels  # other pixel count
    assert px.keep_alpha(b"abcd", None, source, depth) == b"abcd"  # format not said


def test_cutout_format_follows_the_answer_else_the_read_depth():
    depth = px.Depth(False, "float")
    assert px.cutout_babl_format("RGBA16", depth) == "R'G'B'A u16"
    assert px.cutout_babl_format("RGBA8", depth) == "R'G'B'A u8"
    assert px.cutout_babl_format(None, depth) == "R'G'B'A float"


def test_clip_to_canvas():
    # A 40x30 layer at (-10, 5) on a 100x20 canvas, whole layer processed.
    placed = px.clip_to_canvas((0, 0, 40, 30), (-10, 5), (100, 20))
    assert placed == ((0, 5, 30, 15), (10, 0, 30, 15))
    # An area inside the layer, layer at (20, 10): shifted, not clipped.
    assert px.clip_to_canvas((2, 3, 4, 5), (20, 10), (100, 100)) == (
        (22, 13, 4, 5),
        (0, 0, 4, 5),
    )
    # Sticking out on the right and bottom.
    assert px.clip_to_canvas((0, 0, 10, 10), (95, 95), (100, 100)) == (
        (95, 95, 5, 5),
        (0, 0, 5, 5),
    )
    # Entirely off the canvas, or touching it only along an edge.
    assert px.clip_to_canvas((0, 0, 10, 10), (-10, 0), (100, 100)) is None
    assert px.clip_to_canvas((0, 0, 10, 10), (100, 50), (100, 100)) is None


def test_clip_then_crop_gives_the_on_canvas_part_of_the_mask():
    mask = grid(4, 3, 1)  # 4x3 layer mask, layer at (-1, -1) on a 10x10 canvas
    canvas_rect, window = px.clip_to_canvas((0, 0, 4, 3), (-1, -1), (10, 10))
    assert canvas_rect == (0, 0, 3, 2)
    assert px.crop_rows(mask, 4, 1, *window) == bytes([5, 6, 7, 9, 10, 11])
