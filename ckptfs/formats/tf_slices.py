"""Partitioned tensors of a bundle: an entry that lists `slices`
(TensorSliceProto: a start and a length per dimension, no length meaning
the whole dimension) instead of a place in a shard; each slice is an entry
of its own under a key made from the tensor's name and the slice
(saved_tensor_slice_util.cc `EncodeTensorNameSlice`, in OrderedCode:
tensorflow/core/lib/strings/ordered_code.cc). `tf.train.Checkpoint` writes
them when a sharding policy splits a variable across data shards.
"""

from __future__ import annotations

from ..errors import FormatError
from ..sources.base import BytesSource
from .protowire import LEN, VARINT, fields, signed64

#: the first two bytes of a signed number's encoding, by its length
_HEADER_BITS = ((0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0), (0xFF, 0),
                (0xFF, 0x80), (0xFF, 0xC0))
#: TensorSlice's length for a whole dimension
FULL = -1


def extents(value: bytes, rank: int, start: int, end: int, label: str) -> list[tuple[int, int]]:
    """A TensorSliceProto's (start, length) per dimension, FULL where it
    takes the whole dimension."""
    source = BytesSource(value, label)
    out = []
    for f in fields(source, start, end):
        if f.number == 1 and f.wire == LEN:
            got = {d.number: signed64(d.value) for d in fields(source, f.offset, f.end) if d.wire == VARINT}
            out.append((got.get(1, 0), got.get(2, FULL)))
    if len(out) != rank:
        raise FormatError(label, f"a slice of {len(out)} dimensions, of a tensor of {rank}")
    return out


def slice_key(name: bytes, spans: list[tuple[int, int]]) -> bytes:
    """The key of a slice's own entry."""
    key = _num_increasing(0) + _string(name) + _num_increasing(len(spans))
    for start, length in spans:
        key += _signed(start) + _signed(length)
    return key


def _num_increasing(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def _string(value: bytes) -> bytes:
    return _escaped(value) + b"\x00\x01"


def _escaped(value: bytes) -> bytes:
    out = bytearray()
    for byte in value:
        out += b"\x00\xff" if byte == 0 else b"\xff\x00" if byte == 0xFF else bytes([byte])
    return bytes(out)


def _signed(value: int) -> bytes:
    magnitude = ~value if value < 0 else value
    if magnitude < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    length = magnitude.bit_length() // 7 + 1
    buf = bytearray((b"\xff\xff" if value < 0 else b"\0\0") + (value & (1 << 64) - 1).to_bytes(8, "big"))
    begin = 10 - length
    buf[begin] ^= _HEADER_BITS[length][0]
    buf[begin + 1] ^= _HEADER_BITS[length][1]
    return bytes(buf[begin:])
