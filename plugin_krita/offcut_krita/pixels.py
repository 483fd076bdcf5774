"""Krita node pixel layouts and the conversions between them and the sidecar's wire formats.

Krita hands out a node's pixels as raw bytes in its own channel order: integer RGBA (U8, U16)
is B, G, R, A; float RGBA (F16, F32) is R, G, B, A; GrayA is Y, A. The sidecar accepts all of
those layouts as they are (BGRA8, BGRA16, RGBAF16, ...), so reading never converts anything.
Writing results back is where conversions happen, and Krita's Python has no numpy (the Windows
and macOS builds do not ship it), so everything here works on whole buffers with
``memoryview`` strided slices, which run at C speed, instead of per-pixel Python loops. The one
exception is packing IEEE half floats, which goes through ``struct`` in bounded chunks.

All multi-byte samples are little endian, as on every platform Krita runs on.

Stdlib only; importable outside Krita so the conversions can be checked on their own.
"""

import struct
import sys

# (Krita colour model, Krita depth) -> (sidecar wire format, bytes per pixel, bytes per sample)
LAYOUTS = {
    ("RGBA", "U8"): ("BGRA8", 4, 1),
    ("RGBA", "U16"): ("BGRA16", 8, 2),
    ("RGBA", "F16"): ("RGBAF16", 8, 2),
    ("RGBA", "F32"): ("RGBAF32", 16, 4),
    ("GRAYA", "U8"): ("GRAYA8", 2, 1),
    ("GRAYA", "U16"): ("GRAYA16", 4, 2),
    ("GRAYA", "F16"): ("GRAYAF16", 4, 2),
    ("GRAYA", "F32"): ("GRAYAF32", 8, 4),
}

# The mask precision that loses nothing for a grayscale layer of a given depth.
MASK_FORMAT_FOR_DEPTH = {"U8": "GRAY8", "U16": "GRAY16", "F16": "GRAYF32", "F32": "GRAYF32"}
MASK_SAMPLE_BYTES = {"GRAY8": 1, "GRAY16": 2, "GRAYF32": 4}
CUTOUT_SAMPLE_BYTES = {"RGBA8": 1, "RGBA16": 2, "RGBAF32": 4}

# What other colour models are converted to before they are sent: same depth, RGBA, sRGB.
CONVERSION_PROFILE = {
    "RGBA": "sRGB-elle-V2-srgbtrc.icc",
    "GRAYA": "Gray-D50-elle-V2-srgbtrc.icc",
}

# memoryview item formats for moving whole samples of 1, 2 or 4 bytes at once.
_UNIT = {1: "B", 2: "H", 4: "I"}
# Values packed per struct call when writing halves: bounds the temporary tuple's memory.
_HALF_CHUNK = 1 << 16
# Krita stores paint devices in 64×64 tiles; bands of whole tile rows read and write whole tiles.
TILE = 64
# About how many bytes one pixelData/setPixelData call moves: small enough that one call
# leaves Krita's UI thread free again well within a frame, large enough that the calls'
# fixed cost does not add up (docs/benchmarks.md, "In Krita").
BAND_BYTES = 1 << 20

if sys.byteorder != "little":  # pragma: no cover - Krita runs on little-endian machines only
    raise ImportError("Offcut's Krita plug-in expects a little-endian machine")


def layout(color_model, depth):
    """The wire format, bytes per pixel and bytes per sample of a Krita model/depth, or None.

    None means the sidecar cannot take the pixels as they are (CMYK, Lab, XYZ, YCbCr) and the
    node must be converted first.
    """
    return LAYOUTS.get((color_model, depth))


def is_linear_profile(profile_name):
    """Whether a colour profile's name says its tone curve is linear (gamma 1.0).

    Krita names its bundled linear profiles "...-g10.icc" (and users' ones usually say
    "linear"); they matter because 16-bit and float documents often default to them, and the
    sidecar must encode such samples to sRGB before the model sees them.
    """
    name = (profile_name or "").lower()
    return "-g10" in name or "linear" in name or "scrgb" in name


def bands(height, row_bytes, band_bytes=None):
    """The (first row, row count) bands an area of ``height`` rows is read and written in.

    Reading or writing a whole layer in one Krita call blocks Krita's UI thread for as long as
    the call takes, which grows with the layer; in bands the plug-in can let the event loop
    run between calls. Bands are about ``band_bytes`` (default ``BAND_BYTES``): whole tile
    rows where one fits, else a power-of-two part of one, so bands still meet at tile edges.
    """
    fit = max(1, (band_bytes or BAND_BYTES) // max(1, row_bytes))
    rows = fit - fit % TILE if fit >= TILE else 1 << (fit.bit_length() - 1)
    return [(top, min(rows, height - top)) for top in range(0, height, rows)]


def _units(buf, size):
    """A flat memoryview of ``buf`` whose items are ``size``-byte samples."""
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv.cast(_UNIT[size])


def _half_from_f32(src):
    """Little-endian f32 samples → IEEE half samples (round to nearest even)."""
    floats = memoryview(src).cast("B").cast("f")
    n = len(floats)
    out = bytearray(2 * n)
    for start in range(0, n, _HALF_CHUNK):
        chunk = floats[start : start + _HALF_CHUNK]
        struct.pack_into("<%de" % len(chunk), out, 2 * start, *chunk)
    return out


def _fill_units(dst_units, start, step, value_bytes, count, size):
    """Set every ``step``-th sample from ``start`` to one constant sample value."""
    src = bytearray(value_bytes * count)
    dst_units[start::step] = _units(src, size)


def _one(depth):
    """The bytes of the sample value 1.0 (fully opaque) at a Krita depth."""
    if depth == "U8":
        return b"\xff"
    if depth == "U16":
        return b"\xff\xff"
    if depth == "F16":
        return struct.pack("<e", 1.0)
    return struct.pack("<f", 1.0)


def mask_samples(mask, mask_format, depth):
    """The mask as samples of a Krita depth (bytes, one sample per pixel).

    The sidecar is asked for the format that matches the depth (GRAY8 for U8, GRAY16 for U16,
    GRAYF32 for floats), so only F16 needs a real conversion.
    """
    want = MASK_FORMAT_FOR_DEPTH[depth]
    if mask_format != want:
        raise ValueError("a %s layer needs a %s mask, got %s" % (depth, want, mask_format))
    if depth == "F16":
        return _half_from_f32(mask)
    return mask


def gray_layer_pixels(mask, mask_format, color_model, depth):
    """A mask as opaque gray pixels in a node's layout: colour = mask value, alpha = 1.

    Used for the "mask as a grayscale layer" output. Samples are stored as they come, so in a
    linear-profile document the layer shows the coverage values linearly.
    """
    _fmt, bpp, size = LAYOUTS[(color_model, depth)]
    samples = mask_samples(mask, mask_format, depth)
    n = len(samples) // size
    channels = bpp // size
    out = bytearray(n * bpp)
    dst = _units(out, size)
    src = _units(samples, size)
    for c in range(channels - 1):
        dst[c::channels] = src
    _fill_units(dst, channels - 1, channels, _one(depth), n, size)
    return out


def cutout_to_layout(cutout, cutout_format, color_model, depth):
    """The sidecar's cutout (R, G, B, A of the input's depth class) in a node's own layout.

    Integer RGBA swaps R and B back; F16 packs the f32 samples into halves (exact for the
    colours, which were halves to begin with); GrayA keeps R (the sidecar repeats gray into
    R, G and B) and alpha.
    """
    _fmt, bpp, size = LAYOUTS[(color_model, depth)]
    in_size = CUTOUT_SAMPLE_BYTES[cutout_format]
    expected_in = {"U8": 1, "U16": 2, "F16": 4, "F32": 4}[depth]
    if in_size != expected_in:
        raise ValueError(
            "a %s %s layer cannot take a %s cutout" % (color_model, depth, cutout_format)
        )
    src = _units(cutout, in_size)
    n = len(src) // 4
    if color_model == "RGBA":
        if depth == "F32":
            return bytes(cutout)
        if depth == "F16":
            return _half_from_f32(cutout)
        out = bytearray(n * bpp)
        dst = _units(out, size)
        dst[0::4] = src[2::4]
        dst[1::4] = src[1::4]
        dst[2::4] = src[0::4]
        dst[3::4] = src[3::4]
        return out
    # GRAYA: Y from R, then alpha.
    tmp = bytearray(n * 2 * in_size)
    t = _units(tmp, in_size)
    t[0::2] = src[0::4]
    t[1::2] = src[3::4]
    if depth == "F16":
        return _half_from_f32(tmp)
    return tmp


def rgba_layout_for_conversion(depth):
    """The colour model, depth and profile other colour models are converted to for the sidecar.

    RGBA keeps the depth (F16 stays F16, U16 stays U16) so no precision is lost on the way,
    and the sRGB profile means the sidecar needs no tone-curve handling.
    """
    return "RGBA", depth, CONVERSION_PROFILE["RGBA"]
