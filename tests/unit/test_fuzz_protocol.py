"""Property-based fuzzing of the sidecar's request decoder and the pixel side of the segment path.

Everything a client sends is untrusted (docs/protocol.md), so the rule checked here is simple: for
*any* frames, the sidecar's parsing functions either return validated values or raise an
:class:`OffcutError` whose code is one of the documented closed set and whose message is a
sentence. Anything else (``TypeError``, ``OverflowError``, ``RecursionError``, numpy errors) would
become an ``internal`` reply at best and a dead worker at worst.

These run in-process against the same functions ``server.Server._receive`` calls, in the same
order; tests/integration/test_fuzz.py sends the same kind of input to a real ``offcut serve``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from offcut.client.wire import BAD_REQUEST, TOO_LARGE, UNAUTHORIZED, UNSUPPORTED_VERSION
from offcut.engine import engine, formats
from offcut.errors import ERROR_CODES, OffcutError
from offcut.server import protocol

TOKEN = "7" * 64
LIMITS = protocol.Limits(max_pixels=1_000_000, max_side=4096, queue_depth=4)
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -------------------------------------------------------------------------------- strategies

# Interesting integers: the boundaries of every integer type msgpack can carry, and of the limits.
EDGE_INTS = st.sampled_from(
    [0, 1, -1, 2, 7, 8, 255, 256, 4095, 4096, 4097, 65_535, 65_536, 1 << 31, (1 << 31) - 1,
     -(1 << 31), 1 << 32, (1 << 63) - 1, -(1 << 63), (1 << 64) - 1]
)  # fmt: skip
EDGE_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 1e308, 5e-324, 2.0])
# Text over all of Unicode except lone surrogates, which UTF-8 (and so msgpack) cannot carry.
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
WIRE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    EDGE_INTS,
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    EDGE_FLOATS,
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
    st.binary(max_size=40),
)
WIRE_VALUES = st.recursive(
    WIRE_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
FORMAT_NAMES = st.one_of(st.sampled_from(sorted(formats.FORMATS)), ANY_TEXT, WIRE_SCALARS)
DIMS = st.one_of(st.integers(min_value=1, max_value=64), EDGE_INTS, EDGE_FLOATS, WIRE_SCALARS)


@st.composite
def segment_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A ``segment`` request whose every field may lie, be missing or have the wrong type."""
    image: dict[str, Any] = {}
    for key, strategy in (
        ("width", DIMS),
        ("height", DIMS),
        ("format", FORMAT_NAMES),
        ("colorspace", st.one_of(st.sampled_from(["srgb", "linear"]), ANY_TEXT, WIRE_SCALARS)),
    ):
        if draw(st.integers(0, 9)):  # mostly present
            image[key] = draw(strategy)
    header: dict[str, Any] = {
        "v": 1,
        "id": draw(st.one_of(st.just("seg-1"), ANY_TEXT, WIRE_SCALARS)),
        "op": "segment",
        "token": TOKEN,
        "image": draw(st.one_of(st.just(image), WIRE_VALUES)) if draw(st.booleans()) else image,
    }
    if draw(st.booleans()):
        header["roi"] = draw(
            st.one_of(
                st.fixed_dictionaries({k: DIMS for k in "xywh"}),
                st.fixed_dictionaries({k: st.integers(-2, 70) for k in "xywh"}),
                WIRE_VALUES,
            )
        )
    if draw(st.booleans()):
        header["model"] = draw(st.one_of(st.sampled_from(["u2netp", "x" * 129, ""]), ANY_TEXT))
    if draw(st.booleans()):
        header["options"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "refine": st.one_of(st.booleans(), WIRE_SCALARS),
                        "decontaminate": st.one_of(st.booleans(), WIRE_SCALARS),
                        "cutout": st.one_of(st.booleans(), WIRE_SCALARS),
                        "mask_format": st.one_of(
                            st.sampled_from(sorted(formats.MASK_FORMATS)), ANY_TEXT
                        ),
                        "threshold": st.one_of(st.floats(), EDGE_FLOATS, EDGE_INTS, WIRE_SCALARS),
                    },
                ),
                WIRE_VALUES,
            )
        )
    return header


def _buffers_for(header: dict[str, Any], draw: st.DrawFn) -> list[memoryview]:
    """Zero to three pixel buffers: the right size, off by a little, or arbitrary."""
    image = header.get("image")
    right = 0
    if isinstance(image, dict):
        fmt = (
            formats.FORMATS.get(image.get("format"))
            if isinstance(image.get("format"), str)
            else None
        )
        w, h = image.get("width"), image.get("height")
        if fmt and all(isinstance(d, int) and not isinstance(d, bool) for d in (w, h)):
            right = max(0, min(w * h * fmt.bytes_per_pixel, 1 << 20))
    sizes = st.one_of(
        st.just(right), st.sampled_from([right - 1, right + 1, 0]), st.integers(0, 512)
    )
    lengths = draw(st.lists(sizes.filter(lambda n: n >= 0), min_size=0, max_size=3))
    if draw(st.integers(0, 3)):  # mostly exactly one buffer, as the protocol wants
        lengths = [draw(sizes.filter(lambda n: n >= 0))]
    return [memoryview(bytearray(n)) for n in lengths]


# -------------------------------------------------------------------------------- the pipeline


def handle(frame: bytes, buffers: list[memoryview]) -> tuple[str, Any]:
    """What server.Server._receive does with a request, minus the sockets and the queue.

    Returns ("error", OffcutError) or ("ok", op or SegmentRequest); any other exception escapes
    and fails the test.
    """
    try:
        header = protocol.decode_header(memoryview(frame))
        rid = protocol.request_id(header)
        protocol.check_token(header, TOKEN)
        op = protocol.check_envelope(header)
        assert rid is not None, "check_envelope accepted a header without a usable id"
        if op == "segment":
            return "ok", protocol.parse_segment(header, buffers, LIMITS)
        return "ok", op
    except OffcutError as exc:
        assert exc.code in ERROR_CODES
        assert isinstance(exc.message, str) and len(exc.message) > 20, exc.message
        assert exc.message.rstrip().endswith((".", ")")), exc.message
        return "error", exc


def check_segment_request(req: engine.SegmentRequest, buffers: list[memoryview]) -> None:
    """A request parse_segment accepted must be safe for the engine to run as it is."""
    assert len(buffers) == 1
    assert 1 <= req.width <= LIMITS.max_side and 1 <= req.height <= LIMITS.max_side
    assert req.width * req.height <= LIMITS.max_pixels
    assert len(buffers[0]) == req.width * req.height * req.fmt.bytes_per_pixel
    assert req.colorspace in formats.COLORSPACES
    assert req.mask_format in formats.MASK_FORMATS
    if req.roi is not None:
        x, y, w, h = req.roi
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= req.width and y + h <= req.height
    if req.threshold is not None:
        assert isinstance(req.threshold, float) and 0.0 <= req.threshold <= 1.0
    for flag in (req.refine, req.decontaminate, req.cutout):
        assert isinstance(flag, bool)
    assert req.model is None or (isinstance(req.model, str) and 0 < len(req.model) <= 128)


# -------------------------------------------------------------------------------- tests


@given(st.binary(max_size=2048))
@FUZZ
@example(b"")
@example(b"\xc1")  # never-used msgpack byte
@example(b"\x91" * 5000)  # deeply nested arrays
@example(b"\xdf\xff\xff\xff\xff")  # map32 announcing 4 billion entries, then nothing
@example(b"\xc6\xff\xff\xff\xff")  # bin32 announcing 4 GiB
@example(b"\xd9\x05\xff\xfe\xfd\xfc\xfb")  # str8 with invalid UTF-8
@example(b"\xd6\xff\x00\x00\x00\x00")  # timestamp ext type
@example(b"\x81\x80\xc0")  # a map used as a map key
def test_arbitrary_header_bytes(data: bytes) -> None:
    kind, value = handle(data, [])
    if kind == "error":
        assert value.code in {BAD_REQUEST, UNAUTHORIZED}


def test_deep_nesting_and_huge_counts_are_bad_requests() -> None:
    """The cases msgpack itself is most likely to choke on, each named (not left to luck)."""
    nested = b"\x81\xa1a" * 3000 + b"\xc0"  # {"a": {"a": ... nil}} 3000 deep
    for frame in (
        b"\x91" * 100_000,
        nested,
        b"\xdd\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\x00" * (protocol.MAX_HEADER_BYTES + 1),
    ):
        kind, value = handle(frame, [])
        assert kind == "error" and value.code == BAD_REQUEST, frame[:8]


@given(st.dictionaries(ANY_TEXT, WIRE_VALUES, max_size=8), st.booleans())
@FUZZ
def test_arbitrary_maps(header: dict[str, Any], with_token: bool) -> None:
    """Random maps, most carrying the right token so the checks after it are reached too."""
    if with_token:
        header["token"] = TOKEN
    frame = msgpack.packb(header, use_bin_type=True)
    kind, value = handle(frame, [])
    if not with_token and header.get("token") != TOKEN:
        assert kind == "error" and value.code == UNAUTHORIZED
    if kind == "ok" and value != "segment":
        assert value in protocol.OPS


@given(
    v=st.one_of(st.just(1), WIRE_SCALARS),
    rid=st.one_of(st.just("a"), ANY_TEXT, WIRE_SCALARS),
    op=st.one_of(st.sampled_from(protocol.OPS), ANY_TEXT, WIRE_SCALARS),
)
@FUZZ
def test_versions_ids_and_ops(v: Any, rid: Any, op: Any) -> None:
    """Unknown versions and ops, in every type and in every script, are answered by code."""
    frame = msgpack.packb({"v": v, "id": rid, "op": op, "token": TOKEN}, use_bin_type=True)
    kind, value = handle(frame, [])
    version_ok = v == 1 and not isinstance(v, bool)
    id_ok = isinstance(rid, str) and 1 <= len(rid) <= protocol.MAX_ID_CHARS
    if not version_ok:
        assert kind == "error" and value.code == UNSUPPORTED_VERSION
    elif not id_ok:
        assert kind == "error" and value.code == BAD_REQUEST
    elif op not in protocol.OPS:
        assert kind == "error" and value.code == BAD_REQUEST
        assert "hello" in value.message  # says which ops exist
    elif op == "segment":  # no image: its arguments are checked next
        assert kind == "error" and value.code == BAD_REQUEST and "'image'" in value.message
    else:
        assert kind == "ok"


@given(st.data())
@FUZZ
def test_segment_arguments(data: st.DataObject) -> None:
    header = data.draw(segment_headers())
    buffers = _buffers_for(header, data.draw)
    kind, value = handle(msgpack.packb(header, use_bin_type=True), buffers)
    if kind == "ok":
        assert isinstance(value, engine.SegmentRequest)
        check_segment_request(value, buffers)
    else:
        assert value.code in {BAD_REQUEST, TOO_LARGE}


VALID = {
    "v": 1,
    "id": "base",
    "op": "segment",
    "token": TOKEN,
    "image": {"width": 6, "height": 4, "format": "RGBA8", "colorspace": "srgb"},
    "roi": {"x": 1, "y": 1, "w": 4, "h": 2},
    "options": {"refine": True, "mask_format": "GRAYF32", "threshold": 0.5, "cutout": True},
}


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    return out


@given(st.sampled_from(_paths(VALID)), WIRE_VALUES, st.booleans())
@FUZZ
def test_one_mutated_field_of_a_valid_request(
    path: tuple[str, ...], value: Any, drop: bool
) -> None:
    """Start from a request that is accepted, then replace or delete one field anywhere in it."""
    header = copy.deepcopy(VALID)
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    assume(header != VALID)
    buffers = [memoryview(bytearray(6 * 4 * 4))]
    kind, result = handle(msgpack.packb(header, use_bin_type=True), buffers)
    if kind == "ok" and isinstance(result, engine.SegmentRequest):
        check_segment_request(result, buffers)


def test_the_unmutated_request_is_accepted() -> None:
    """The base of the mutation test must pass, or every mutation is trivially an error."""
    kind, req = handle(msgpack.packb(VALID, use_bin_type=True), [memoryview(bytearray(96))])
    assert kind == "ok" and isinstance(req, engine.SegmentRequest)
    assert req.roi == (1, 1, 4, 2) and req.cutout and req.threshold == 0.5


# -------------------------------------------------------------------------------- pixels

FLOAT_SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 1e30, -1e30, 65504.0, 1.5], np.float32)


@st.composite
def pixel_requests(draw: st.DrawFn) -> engine.SegmentRequest:
    """A request that parse_segment would accept, with pixels full of NaN, inf and extremes."""
    fmt = formats.FORMATS[draw(st.sampled_from(sorted(formats.FORMATS)))]
    width = draw(st.one_of(st.integers(1, 24), st.sampled_from([1, 2, 257, 600])))
    height = draw(st.one_of(st.integers(1, 24), st.sampled_from([1, 2, 300])))
    assume(width * height <= 20_000)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = width * height * fmt.n_channels
    if fmt.depth == "float":
        values = (
            rng.choice(FLOAT_SPECIALS, size=n) if draw(st.booleans()) else rng.random(n) * 3 - 1
        )
        with np.errstate(over="ignore"):  # 1e30 as float16 is meant to become inf
            pixels = values.astype(fmt.dtype).tobytes()
    else:
        pixels = rng.integers(
            0, 256, size=n * np.dtype(fmt.dtype).itemsize, dtype=np.uint8
        ).tobytes()
    x = draw(st.integers(0, width - 1))
    y = draw(st.integers(0, height - 1))
    roi = (x, y, draw(st.integers(1, width - x)), draw(st.integers(1, height - y)))
    return engine.SegmentRequest(
        pixels=memoryview(pixels),
        width=width,
        height=height,
        fmt=fmt,
        colorspace=draw(st.sampled_from(formats.COLORSPACES)),
        roi=draw(st.one_of(st.none(), st.just(roi))),
        decontaminate=draw(st.booleans()),
        cutout=True,
    )


@given(pixel_requests(), st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decode_and_cutout_survive_any_pixels(req: engine.SegmentRequest, seed: int) -> None:
    """Decoding (every format, both colorspaces, any ROI) and the cutout never fail and never let
    NaN or inf into what the model sees or into the alpha a client receives."""
    roi = req.roi or (0, 0, req.width, req.height)
    img = formats.to_model_image(req.pixels, req.fmt, req.width, req.height, roi, req.colorspace)
    assert img.size == (roi[2], roi[3])
    assert img.mode in ("RGB", "RGBX", "L")
    mask = np.random.default_rng(seed).random((roi[3], roi[2]), dtype=np.float32)
    cutout, info = engine.make_cutout(req, roi, mask, req.decontaminate)
    assert info["format"] == formats.CUTOUT_FORMAT_FOR_DEPTH[req.fmt.depth]
    out_fmt = formats.FORMATS[info["format"]]
    assert len(cutout) == roi[2] * roi[3] * out_fmt.bytes_per_pixel
    rgba = np.frombuffer(cutout, dtype=out_fmt.dtype).reshape(roi[3], roi[2], 4)
    alpha = rgba[..., 3].astype(np.float64)
    assert np.isfinite(alpha).all()
    top = {"8": 255, "16": 65535, "float": 1.0}[req.fmt.depth]
    assert (alpha >= 0).all() and (alpha <= top).all()
    if req.decontaminate:  # estimated colours are always clean, whatever came in
        colours = rgba[..., :3].astype(np.float64)
        assert np.isfinite(colours).all() and (colours >= 0).all() and (colours <= top).all()


@pytest.mark.parametrize("fmt", sorted(formats.FORMATS))
def test_every_format_decodes_all_nan_or_all_inf(fmt: str) -> None:
    """The extremes in one place: a whole image of NaN (or of +inf) decodes to a clean image."""
    pf = formats.FORMATS[fmt]
    for fill in (np.nan, np.inf, -np.inf):
        if pf.depth == "float":
            pixels = np.full(5 * 3 * pf.n_channels, fill, dtype=pf.dtype).tobytes()
        else:
            pixels = b"\xff" * (5 * 3 * pf.bytes_per_pixel)
        for colorspace in formats.COLORSPACES:
            img = formats.to_model_image(memoryview(pixels), pf, 5, 3, (0, 0, 5, 3), colorspace)
            arr = np.asarray(img)
            assert arr.dtype == np.uint8 and arr.shape[:2] == (3, 5)
            if pf.depth == "float" and fill is np.nan:
                assert (arr == 0).all()  # "NaN counts as 0" (docs/protocol.md)
