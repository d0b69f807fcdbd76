"""The records of a TensorFlow tensor bundle (tensorflow/core/protobuf/
tensor_bundle.proto): the header entry (`BundleHeaderProto`: the number of
data shards, their byte order, the format's version) and one
`BundleEntryProto` per tensor (its dtype, shape, and where its bytes lie:
shard, offset, size, and their masked CRC-32C), read with protowire.

A tensor of a plain type is its C-order bytes in the shard, little-endian.
A DT_STRING tensor is its lengths (varint64 each), a masked CRC-32C of
them, then the strings (tensor_bundle.cc `WriteStringTensor`): `strings`
reads a small one, the object graph among them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from ..errors import FormatError
from ..humanize import plural
from ..sources.base import BytesSource
from ..tree.dtypes import BY_NAME, DType
from . import crc32c
from .protowire import I32, LEN, VARINT, decode_varint, fields, signed64

#: TensorFlow's DataType numbers (types.proto) of the types a `.npy` holds
DTYPES: dict[int, DType] = {
    1: BY_NAME["float32"], 2: BY_NAME["float64"], 3: BY_NAME["int32"], 4: BY_NAME["uint8"], 5: BY_NAME["int16"],
    6: BY_NAME["int8"], 8: BY_NAME["complex64"], 9: BY_NAME["int64"], 10: BY_NAME["bool"], 14: BY_NAME["bfloat16"],
    17: BY_NAME["uint16"], 18: BY_NAME["complex128"], 19: BY_NAME["float16"], 22: BY_NAME["uint32"],
    23: BY_NAME["uint64"], 24: BY_NAME["float8_e5m2"], 25: BY_NAME["float8_e4m3fn"],
    26: BY_NAME["float8_e4m3fnuz"], 28: BY_NAME["float8_e5m2fnuz"],
}
DT_STRING = 7
#: the other DataTypes by name, for the note that leaves their tensors out
OTHER_TYPES = {0: "DT_INVALID", 11: "DT_QINT8", 12: "DT_QUINT8", 13: "DT_QINT32", 15: "DT_QINT16",
               16: "DT_QUINT16", 20: "DT_RESOURCE", 21: "DT_VARIANT", 27: "DT_FLOAT8_E4M3B11FNUZ", 29: "DT_INT4",
               30: "DT_UINT4", 31: "DT_INT2", 32: "DT_UINT2", 33: "DT_FLOAT4_E2M1FN"}
#: TensorShape's most dimensions (tensor_shape.h kMaxDims)
MAX_DIMS = 254
#: a tensor's elements at most (TensorShape keeps their count in an int64)
MAX_ELEMENTS = (1 << 63) - 1


@dataclass(frozen=True)
class Header:
    shards: int
    big_endian: bool
    producer: int


@dataclass(frozen=True)
class Entry:
    """One tensor's record: where its bytes lie, as the bundle says."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    #: the masked CRC-32C of its bytes
    crc: int
    #: where in the entry's bytes each TensorSliceProto of a partitioned
    #: tensor lies (the slices' bytes are in entries of their own: tf_slices)
    slices: tuple[tuple[int, int], ...]

    @property
    def type_name(self) -> str:
        known = DTYPES.get(self.dtype)
        return known.name if known else "string" if self.dtype == DT_STRING else OTHER_TYPES.get(
            self.dtype, f"DataType {self.dtype}")


def header(value: bytes, name: str) -> Header:
    """The header entry's BundleHeaderProto."""
    shards = endianness = producer = 0
    source = BytesSource(value, name)
    for f in fields(source):
        if f.number == 1 and f.wire == VARINT:
            shards = signed64(f.value)
        elif f.number == 2 and f.wire == VARINT:
            endianness = f.value
        elif f.number == 3 and f.wire == LEN:
            producer = next((v.value for v in fields(source, f.offset, f.end) if v.number == 1 and v.wire == VARINT),
                            0)
    if shards < 1:
        raise FormatError(name, f"the bundle's header gives {shards} data shards")
    return Header(shards, endianness == 1, producer)


def entry(value: bytes, label: str) -> Entry:
    """A BundleEntryProto; FormatError naming `label` (the file and key) if it is malformed."""
    got = {"dtype": 0, "shard": 0, "offset": 0, "size": 0, "crc": 0}
    slices = []
    shape: tuple[int, ...] = ()
    source = BytesSource(value, label)
    numbers = {1: "dtype", 3: "shard", 4: "offset", 5: "size"}
    for f in fields(source):
        if f.number in numbers and f.wire == VARINT:
            got[numbers[f.number]] = signed64(f.value) if f.number != 3 else _int32(f.value)
        elif f.number == 2 and f.wire == LEN:
            shape = _shape(source, f.offset, f.end, label)
        elif f.number == 6 and f.wire == I32:
            got["crc"] = f.value
        elif f.number == 7 and f.wire == LEN:
            slices.append((f.offset, f.end))
        elif f.number <= 7:
            raise FormatError(label, f"field {f.number} of its BundleEntryProto has wire type {f.wire}")
    for what in ("shard", "offset", "size"):
        if got[what] < 0:
            raise FormatError(label, f"its {what} is {got[what]}")
    return Entry(shape=shape, slices=tuple(slices), **got)


def _int32(value: int) -> int:
    low = value & 0xFFFFFFFF
    return low - (1 << 32) if low >> 31 else low


def _shape(source: BytesSource, start: int, end: int, label: str) -> tuple[int, ...]:
    """A TensorShapeProto's dimensions (a shape of unknown rank refused)."""
    dims = []
    for f in fields(source, start, end):
        if f.number == 2 and f.wire == LEN:
            size = next((signed64(d.value) for d in fields(source, f.offset, f.end) if d.number == 1 and d.wire == VARINT),
                        0)
            if size < 0:
                raise FormatError(label, f"its shape has a dimension of {size}")
            dims.append(size)
            if len(dims) > MAX_DIMS:
                raise FormatError(label, f"its shape has more than {MAX_DIMS} dimensions")
        elif f.number == 3 and f.wire == VARINT and f.value:
            raise FormatError(label, "its shape is of unknown rank")
    if math.prod(dims) > MAX_ELEMENTS:
        raise FormatError(label, f"its shape {dims} holds more than 2**63 elements")
    return tuple(dims)


def strings(data: bytes, item: Entry, label: str) -> list[bytes]:
    """The elements of a DT_STRING tensor from its bytes, its CRC-32C checked."""
    count = math.prod(item.shape)
    lengths, pos, crc = [], 0, 0
    for _ in range(count):
        length, used = decode_varint(data, pos, label, pos)
        lengths.append(length)
        crc = crc32c.value(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length), crc)
        pos += used
    if pos + 4 + sum(lengths) != len(data):
        raise FormatError(label, f"its {plural(count, 'string')} take {pos + 4 + sum(lengths)} bytes, its entry "
                                 f"says {len(data)}")
    stored = data[pos : pos + 4]
    if crc32c.unmask(struct.unpack("<I", stored)[0]) != crc:
        raise FormatError(label, "the lengths of its strings do not match their CRC-32C")
    crc = crc32c.value(stored, crc)
    pos += 4
    out = []
    for length in lengths:
        out.append(data[pos : pos + length])
        pos += length
    if crc32c.value(data[pos - sum(lengths) : pos], crc) != crc32c.unmask(item.crc):
        raise FormatError(label, "its strings do not match their CRC-32C")
    return out
