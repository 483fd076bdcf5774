"""Header decoding and request validation (no sockets)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offcut.errors import ERROR_CODES, OffcutError
from offcut.server import protocol


def test_error_codes_are_the_documented_closed_set() -> None:
    assert {
        "bad_request",
        "unauthorized",
        "unsupported_version",
        "too_large",
        "model_missing",
        "model_invalid",
        "busy",
        "cancelled",
        "internal",
    } == ERROR_CODES
    assert OffcutError("made_up", "x").code == "internal"


def test_check_order_token_before_version() -> None:
    """What the server runs on every request: with both the token and the version wrong, the
    answer is ``unauthorized`` (swapping the checks would make it ``unsupported_version``)."""
    for h in (
        {"v": 99, "id": "a", "op": "hello", "token": "bad"},
        {"id": "a", "op": "nope", "token": "bad"},
        {"v": 1, "op": "hello", "token": "bad"},
    ):
        with pytest.raises(OffcutError) as e:
            protocol.authorize(h, "good")
        assert e.value.code == "unauthorized", h
    with pytest.raises(OffcutError) as e:
        protocol.authorize({"v": 99, "id": "a", "op": "hello", "token": "good"}, "good")
    assert e.value.code == "unsupported_version"
    good = {"v": 1, "id": "a", "op": "hello", "token": "good"}
    assert protocol.authorize(good, "good") == "hello"


def test_token_compare() -> None:
    protocol.check_token({"token": "abc"}, "abc")
    for bad in ("abd", "", None, 5, b"abc", "abc\x00", "ábc"):
        with pytest.raises(OffcutError):
            protocol.check_token({"token": bad}, "abc")


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decode_header_never_crashes(data: bytes) -> None:
    try:
        h = protocol.decode_header(data)
    except OffcutError as e:
        assert e.code == "bad_request"
    else:
        assert isinstance(h, dict)


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.booleans()),
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None)
def test_envelope_errors_are_protocol_errors(header: dict) -> None:
    try:
        protocol.check_envelope(header)
    except OffcutError as e:
        assert e.code in {"bad_request", "unsupported_version"}


def test_parse_segment_happy_path() -> None:
    h = {
        "image": {"width": 4, "height": 2, "format": "RGBA8"},
        "roi": {"x": 1, "y": 0, "w": 3, "h": 2},
        "options": {"refine": True, "mask_format": "GRAY16", "threshold": 0.25},
    }
    req = protocol.parse_segment(h, [memoryview(bytes(32))], protocol.Limits())
    assert req.roi == (1, 0, 3, 2) and req.refine and req.mask_format == "GRAY16"
    assert req.threshold == 0.25 and req.colorspace == "srgb"


def test_too_large_is_checked_before_the_buffer() -> None:
    h = {"image": {"width": 20000, "height": 20000, "format": "RGBAF32"}}
    with pytest.raises(OffcutError) as e:
        protocol.parse_segment(h, [memoryview(b"")], protocol.Limits(max_pixels=10_000_000))
    assert e.value.code == "too_large" and "--max-pixels" in e.value.message


def test_limits_message_size_covers_the_largest_legal_image() -> None:
    lim = protocol.Limits(max_pixels=1000)
    assert lim.max_message_bytes >= 1000 * 16


def test_encode_roundtrip() -> None:
    h = {"v": 1, "id": "x", "kind": "result", "mask": {"width": 1}}
    assert msgpack.unpackb(protocol.encode(h), raw=False) == h
