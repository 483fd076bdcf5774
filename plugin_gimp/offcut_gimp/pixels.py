"""Pixel formats and byte-level helpers for the GIMP plug-in (no ``gi``; standard library only).

GIMP hands pixels out through GEGL buffers in any babl format we name. 8-bit images are read as
``R'G'B'A u8`` (``Y'A u8`` for grayscale); deeper ones as ``float``, or ``u16``/``u8`` when a
float copy would exceed the sidecar's message limit. The sidecar takes those layouts as they are
(RGBA8, RGBA16, RGBAF32, GRAYA...), so reading converts nothing in Python.
"""

from array import array

# babl component type → sidecar wire suffix, ``array`` type code and bytes per sample.
SAMPLES = ("u8", "u16", "float")
_WIRE_SUFFIX = {"u8": "8", "u16": "16", "float": "F32"}
_TYPECODE = {"u8": "B", "u16": "H", "float": "f"}
SAMPLE_BYTES = {"u8": 1, "u16": 2, "float": 4}

# Mask format asked from the sidecar per component type, and back.
MASK_WIRE = {"u8": "GRAY8", "u16": "GRAY16", "float": "GRAYF32"}
WIRE_SAMPLE = {"GRAY8": "u8", "GRAY16": "u16", "GRAYF32": "float"}
CUTOUT_SAMPLE = {"RGBA8": "u8", "RGBA16": "u16", "RGBAF32": "float"}

# Room left in a message for everything but the pixels when picking a depth.
_HEADER_ROOM = 65536


class Depth:
    """How one image precision travels: read format, wire format, array type code, sizes."""

    __slots__ = (
        "bytes_per_pixel",
        "bytes_per_sample",
        "channels",
        "gray",
        "read_format",
        "sample",
        "typecode",
        "wire_format",
    )

    def __init__(self, gray, sample):
        self.gray = gray
        self.sample = sample  # "u8", "u16" or "float": the GEGL/babl component type we read
        self.channels = 2 if gray else 4
        self.wire_format = ("GRAYA" if gray else "RGBA") + _WIRE_SUFFIX[sample]
        self.read_format = ("Y'A " if gray else "R'G'B'A ") + sample
        self.typecode = _TYPECODE[sample]
        self.bytes_per_sample = SAMPLE_BYTES[sample]
        self.bytes_per_pixel = self.channels * self.bytes_per_sample

    def __repr__(self):
        return "Depth(gray=%r, sample=%r)" % (self.gray, self.sample)


def _component(precision):
    """GIMP precision value → component: 1 u8, 2 u16, 3 u32, 5 half, 6 float, 7 double."""
    return int(precision) // 100


def precision_sample(precision):
    """Component type an image is read as: 8-bit stays u8, anything deeper is read as float."""
    return "u8" if _component(precision) == 1 else "float"


def mask_sample(precision):
    """Mask component type asked from the sidecar: as deep as the image, never deeper than f32."""
    return {1: "u8", 2: "u16"}.get(_component(precision), "float")


def pick_depth(gray, precision, pixels, limits):
    """The read depth for ``pixels`` pixels; deep images fall back to u16 then u8 if too big.

    ``limits`` is the sidecar's ``hello`` limits; without ``max_message_bytes`` any size goes.
    """
    ladder = ["u8"] if precision_sample(precision) == "u8" else ["float", "u16", "u8"]
    max_bytes = limits.get("max_message_bytes")
    for sample in ladder:
        depth = Depth(gray, sample)
        if not max_bytes or pixels * depth.bytes_per_pixel + _HEADER_ROOM <= max_bytes:
            return depth
    return Depth(gray, "u8")


def crop_rows(data, width, bpp, x0, y0, w, h):
    """Cut a ``w``×``h`` window at (x0, y0) out of a row-major buffer ``width`` pixels wide."""
    if x0 == 0 and w == width:
        return data[y0 * width * bpp : (y0 + h) * width * bpp]
    row = width * bpp
    parts = []
    for r in range(y0, y0 + h):
        start = r * row + x0 * bpp
        parts.append(data[start : start + w * bpp])
    return b"".join(parts)


def keep_alpha(cutout, cutout_format, source, depth):
    """Cutout colours with the layer's own alpha: the layer mask, not the alpha, does the cut.

    ``cutout`` is the sidecar's RGBA answer in ``cutout_format`` (RGBA8/16/F32), ``source`` the
    pixels that were sent, read at ``depth``. When the two do not line up (another sample type,
    another pixel count) the cutout is returned unchanged.
    """
    if CUTOUT_SAMPLE.get(cutout_format) != depth.sample:
        return cutout
    code = depth.typecode
    out = array(code)
    out.frombytes(cutout)
    src = array(code)
    src.frombytes(source)
    if len(out) // 4 != len(src) // depth.channels:
        return cutout
    out[3::4] = src[depth.channels - 1 :: depth.channels]
    return out.tobytes()


def cutout_babl_format(cutout_format, depth):
    """The babl format to write the sidecar's cutout colours with (the read depth by default)."""
    return "R'G'B'A " + CUTOUT_SAMPLE.get(cutout_format, depth.sample)


def clip_to_canvas(rect, offsets, canvas):
    """Where a layer-relative ``rect`` lands on the canvas, clipped to it.

    ``rect`` is (x, y, w, h) in layer coordinates, ``offsets`` the layer's (x, y) on the canvas,
    ``canvas`` the image's (width, height). Returns ``(canvas_rect, window)``: the clipped area in
    image coordinates and the same area as (x0, y0, w, h) inside ``rect``; None when nothing of
    ``rect`` is on the canvas.
    """
    x, y, w, h = rect
    ax, ay = offsets[0] + x, offsets[1] + y
    cx0, cy0 = max(ax, 0), max(ay, 0)
    cx1, cy1 = min(ax + w, canvas[0]), min(ay + h, canvas[1])
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    cw, ch = cx1 - cx0, cy1 - cy0
    return (cx0, cy0, cw, ch), (cx0 - ax, cy0 - ay, cw, ch)
