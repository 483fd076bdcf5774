"""A small msgpack encoder/decoder for protocol headers, used when ``msgpack`` is not importable.

Editors ship their own Python, where compiled wheels cannot be installed, so the client carries
this pure-Python codec. It covers exactly the types the protocol uses (docs/protocol.md): nil,
bool, int (signed/unsigned 64-bit), float (float64 out; float32 and float64 in), str, bin, array,
map. Encoding makes the same smallest-form choices as ``msgpack.packb(use_bin_type=True)`` so the
two are byte-for-byte interchangeable; the tests hold it to that.
"""

import struct
from typing import Any, Dict, List, Tuple

_MAX_DEPTH = 100  # headers are shallow; this stays far from the recursion limit

_pack_f64 = struct.Struct(">d").pack
_B = struct.Struct(">B")
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_Q = struct.Struct(">Q")
_b = struct.Struct(">b")
_h = struct.Struct(">h")
_i = struct.Struct(">i")
_q = struct.Struct(">q")
_f32 = struct.Struct(">f")
_f64 = struct.Struct(">d")


class CodecError(ValueError):
    """The value cannot be encoded, or the bytes are not well-formed msgpack."""


def packb(obj: Any) -> bytes:
    """Encode ``obj``; ``bytes``/``bytearray``/``memoryview`` become bin, ``str`` becomes str."""
    out = []  # type: List[bytes]
    _pack(obj, out, 0)
    return b"".join(out)


def _pack_int(n: int, out: List[bytes]) -> None:
    if n < 0:
        if n >= -32:
            out.append(_b.pack(n))
        elif n >= -(1 << 7):
            out.append(b"\xd0" + _b.pack(n))
        elif n >= -(1 << 15):
            out.append(b"\xd1" + _h.pack(n))
        elif n >= -(1 << 31):
            out.append(b"\xd2" + _i.pack(n))
        elif n >= -(1 << 63):
            out.append(b"\xd3" + _q.pack(n))
        else:
            raise CodecError("integer %d is below the 64-bit range" % n)
    elif n < 128:
        out.append(_B.pack(n))
    elif n < (1 << 8):
        out.append(b"\xcc" + _B.pack(n))
    elif n < (1 << 16):
        out.append(b"\xcd" + _H.pack(n))
    elif n < (1 << 32):
        out.append(b"\xce" + _I.pack(n))
    elif n < (1 << 64):
        out.append(b"\xcf" + _Q.pack(n))
    else:
        raise CodecError("integer %d is above the 64-bit range" % n)


def _pack_len(n: int, fix_base: int, fix_max: int, codes: Tuple[int, int, int], out: List[bytes]):
    """Header for str/bin/array/map: fix form when allowed, else the 8/16/32-bit length form."""
    if n < fix_max:
        out.append(_B.pack(fix_base | n))
    elif n < (1 << 8) and codes[0]:
        out.append(_B.pack(codes[0]) + _B.pack(n))
    elif n < (1 << 16):
        out.append(_B.pack(codes[1]) + _H.pack(n))
    elif n < (1 << 32):
        out.append(_B.pack(codes[2]) + _I.pack(n))
    else:
        raise CodecError("object of length %d is too long for msgpack" % n)


def _pack(obj: Any, out: List[bytes], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise CodecError("value is nested too deeply")
    if obj is None:
        out.append(b"\xc0")
    elif obj is True:
        out.append(b"\xc3")
    elif obj is False:
        out.append(b"\xc2")
    elif isinstance(obj, int):
        _pack_int(int(obj), out)
    elif isinstance(obj, float):
        out.append(b"\xcb" + _pack_f64(obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_len(len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB), out)
        out.append(data)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        n = len(data)
        if n < (1 << 8):
            out.append(b"\xc4" + _B.pack(n))
        elif n < (1 << 16):
            out.append(b"\xc5" + _H.pack(n))
        elif n < (1 << 32):
            out.append(b"\xc6" + _I.pack(n))
        else:
            raise CodecError("bin of length %d is too long for msgpack" % n)
        out.append(data)
    elif isinstance(obj, (list, tuple)):
        _pack_len(len(obj), 0x90, 16, (0, 0xDC, 0xDD), out)
        for item in obj:
            _pack(item, out, depth + 1)
    elif isinstance(obj, dict):
        _pack_len(len(obj), 0x80, 16, (0, 0xDE, 0xDF), out)
        for key, value in obj.items():
            _pack(key, out, depth + 1)
            _pack(value, out, depth + 1)
    else:
        raise CodecError("cannot encode %s in a protocol header" % type(obj).__name__)


def unpackb(data: Any) -> Any:
    """Decode one msgpack value that must fill ``data`` exactly (str → str, bin → bytes)."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    value, pos = _Unpacker(buf).read(0, 0)
    if pos != len(buf):
        raise CodecError("%d trailing bytes after the msgpack value" % (len(buf) - pos))
    return value


class _Unpacker:
    """Recursive-descent decoder over one buffer; lengths are checked before anything is built."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.n = len(buf)

    def _need(self, pos: int, count: int) -> None:
        if count < 0 or pos + count > self.n:
            raise CodecError("msgpack data is truncated")

    def _bytes(self, pos: int, count: int) -> Tuple[bytes, int]:
        self._need(pos, count)
        return bytes(self.buf[pos : pos + count]), pos + count

    def _str(self, pos: int, count: int) -> Tuple[str, int]:
        raw, pos = self._bytes(pos, count)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError as exc:
            raise CodecError("msgpack str is not valid UTF-8") from exc

    def _unpack(self, st: struct.Struct, pos: int) -> Tuple[Any, int]:
        self._need(pos, st.size)
        return st.unpack_from(self.buf, pos)[0], pos + st.size

    def read(self, pos: int, depth: int) -> Tuple[Any, int]:
        if depth > _MAX_DEPTH:
            raise CodecError("msgpack data is nested too deeply")
        self._need(pos, 1)
        t = self.buf[pos]
        pos += 1
        if t <= 0x7F:
            return t, pos
        if t >= 0xE0:
            return t - 0x100, pos
        if 0xA0 <= t <= 0xBF:
            return self._str(pos, t & 0x1F)
        if 0x90 <= t <= 0x9F:
            return self._array(pos, t & 0x0F, depth)
        if 0x80 <= t <= 0x8F:
            return self._map(pos, t & 0x0F, depth)
        if t == 0xC0:
            return None, pos
        if t == 0xC2:
            return False, pos
        if t == 0xC3:
            return True, pos
        simple = _SIMPLE.get(t)
        if simple is not None:
            return self._unpack(simple, pos)
        if t in _SIZED:
            kind, st = _SIZED[t]
            count, pos = self._unpack(st, pos)
            if kind == "str":
                return self._str(pos, count)
            if kind == "bin":
                return self._bytes(pos, count)
            if kind == "array":
                return self._array(pos, count, depth)
            return self._map(pos, count, depth)
        raise CodecError("unsupported msgpack type byte 0x%02x" % t)

    def _array(self, pos: int, count: int, depth: int) -> Tuple[List[Any], int]:
        self._need(pos, count)  # every element takes at least one byte
        items = []
        for _ in range(count):
            item, pos = self.read(pos, depth + 1)
            items.append(item)
        return items, pos

    def _map(self, pos: int, count: int, depth: int) -> Tuple[Dict[Any, Any], int]:
        self._need(pos, 2 * count)
        result = {}  # type: Dict[Any, Any]
        for _ in range(count):
            key, pos = self.read(pos, depth + 1)
            if not isinstance(key, (str, bytes)):
                raise CodecError("msgpack map key of type %s" % type(key).__name__)
            value, pos = self.read(pos, depth + 1)
            result[key] = value
        return result, pos


_SIMPLE = {
    0xCA: _f32,
    0xCB: _f64,
    0xCC: _B,
    0xCD: _H,
    0xCE: _I,
    0xCF: _Q,
    0xD0: _b,
    0xD1: _h,
    0xD2: _i,
    0xD3: _q,
}

_SIZED = {
    0xD9: ("str", _B),
    0xDA: ("str", _H),
    0xDB: ("str", _I),
    0xC4: ("bin", _B),
    0xC5: ("bin", _H),
    0xC6: ("bin", _I),
    0xDC: ("array", _H),
    0xDD: ("array", _I),
    0xDE: ("map", _H),
    0xDF: ("map", _I),
}
