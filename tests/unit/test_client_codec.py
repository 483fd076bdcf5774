"""The client's built-in msgpack codec against the real msgpack library, both directions."""

from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offcut.client import codec

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
scalars = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=20)
        | st.dictionaries(st.text(max_size=40), children, max_size=20)
    ),
    max_leaves=60,
)


def reference_pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def reference_unpack(data):
    return msgpack.unpackb(data, raw=False)


@settings(max_examples=300, deadline=None)
@given(values)
def test_encoding_is_byte_identical_to_msgpack(value):
    assert codec.packb(value) == reference_pack(value)


@settings(max_examples=300, deadline=None)
@given(values)
def test_decodes_what_msgpack_encodes(value):
    assert codec.unpackb(reference_pack(value)) == value


@settings(max_examples=200, deadline=None)
@given(values)
def test_msgpack_decodes_what_we_encode(value):
    assert reference_unpack(codec.packb(value)) == value


@settings(max_examples=100, deadline=None)
@given(st.floats(width=32))
def test_float32_decodes_like_msgpack(x):
    data = msgpack.packb(x, use_single_float=True)
    assert data[0] == 0xCA
    got = codec.unpackb(data)
    want = msgpack.unpackb(data)
    assert (math.isnan(got) and math.isnan(want)) or got == want


@pytest.mark.parametrize(
    "n",
    [
        0, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 64) - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -(1 << 31), -(1 << 31) - 1, -(1 << 63),
    ],
)  # fmt: skip
def test_integer_boundaries(n):
    assert codec.packb(n) == reference_pack(n)
    assert codec.unpackb(reference_pack(n)) == n


@pytest.mark.parametrize("size", [0, 31, 32, 255, 256, 65535, 65536])
def test_str_and_bin_length_boundaries(size):
    s, b = "x" * size, b"\x01" * size
    assert codec.packb(s) == reference_pack(s)
    assert codec.packb(b) == reference_pack(b)
    assert codec.unpackb(reference_pack(s)) == s
    assert codec.unpackb(reference_pack(b)) == b


@pytest.mark.parametrize("size", [15, 16, 65535, 65536])
def test_array_and_map_length_boundaries(size):
    arr = [i % 200 for i in range(size)]
    m = {str(i): i for i in range(size)}
    assert codec.packb(arr) == reference_pack(arr)
    assert codec.packb(m) == reference_pack(m)
    assert codec.unpackb(reference_pack(arr)) == arr
    assert codec.unpackb(reference_pack(m)) == m


def test_bytes_like_are_bin_and_tuples_are_arrays():
    assert codec.packb(bytearray(b"ab")) == reference_pack(b"ab")
    assert codec.packb(memoryview(b"ab")) == reference_pack(b"ab")
    assert codec.packb((1, "a")) == reference_pack([1, "a"])
    assert isinstance(codec.unpackb(reference_pack(b"ab")), bytes)
    assert isinstance(codec.unpackb(reference_pack("ab")), str)


def test_decodes_from_any_buffer():
    data = reference_pack({"a": [1, 2.5, None]})
    assert codec.unpackb(bytearray(data)) == {"a": [1, 2.5, None]}
    assert codec.unpackb(memoryview(data)) == {"a": [1, 2.5, None]}


@pytest.mark.parametrize("value", [1 << 64, -(1 << 63) - 1, object(), {1, 2}, 1j])
def test_refuses_what_the_protocol_cannot_carry(value):
    with pytest.raises(codec.CodecError):
        codec.packb(value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xa5abc",  # truncated str
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map claiming 4 billion pairs
        b"\xc4\x05ab",  # truncated bin
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\xc1",  # never used
        b"\xd4\x01\x00",  # fixext: not a protocol type
        b"\x01\x02",  # trailing bytes
        b"\x81\x01\x02",  # integer map key
        b"\xcb\x00\x00",  # truncated float
    ],
)
def test_rejects_malformed_input(data):
    with pytest.raises(codec.CodecError):
        codec.unpackb(data)


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(codec.CodecError):
        codec.unpackb(b"\x91" * 10000 + b"\xc0")
    nested: list = []
    for _ in range(1000):
        nested = [nested]
    with pytest.raises(codec.CodecError):
        codec.packb(nested)


def test_float64_encoding_is_exact():
    for x in (0.0, -0.0, 1.5, 1e308, float("inf"), float("-inf")):
        assert codec.packb(x) == b"\xcb" + struct.pack(">d", x)
    assert math.isnan(codec.unpackb(codec.packb(float("nan"))))
