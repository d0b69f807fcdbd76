"""The protocol buffers wire format, read in bounded steps from a source.

ONNX models and TensorFlow's checkpoints are protobuf messages. Their own
libraries parse a message whole, which for a 100 GB ONNX model with its
weights inline means 100 GB in memory. This reader walks a message's fields
where they lie: a length-delimited field is handed back as its offset and
length, so the caller reads a small one, descends into a message, or keeps
the range of a tensor's bytes without reading them. Each step reads at most
`STEP` bytes; a tag, varint or length that runs past its message is a
FormatError naming the file (https://protobuf.dev/programming-guides/encoding/).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import FormatError
from ..sources.base import Source

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
#: bytes read at a time while walking fields (a varint is at most 10)
STEP = 64 << 10
_MAX_VARINT = 10


@dataclass(frozen=True)
class Field:
    """One field of a message as it lies in the source."""

    number: int
    wire: int
    #: a VARINT, I64 or I32 field's value (unsigned); a LEN field's length
    value: int
    #: where a LEN field's bytes start in the source (for others, after the field)
    offset: int

    @property
    def end(self) -> int:
        return self.offset + self.value if self.wire == LEN else self.offset

    @property
    def signed(self) -> int:
        """A VARINT read as int64/int32 (two's complement), I64/I32 likewise."""
        bits = 32 if self.wire == I32 else 64
        return self.value - (1 << bits) if self.value >> (bits - 1) & 1 else self.value


def fields(source: Source, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """The fields of the message in source[start:end] (end: the source's
    size), in the order they lie. Groups (wire types 3 and 4, deprecated
    since proto2 and written by neither ONNX nor TensorFlow) are refused."""
    end = source.size if end is None else end
    if not 0 <= start <= end <= source.size:
        raise FormatError(source.path, f"protobuf message at {start}..{end} lies outside the file ({source.size} bytes)")
    window = _Window(source, end)
    at = start
    while at < end:
        tag, at = window.varint(at)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise FormatError(source.path, f"protobuf field number 0 at offset {at}")
        if wire == VARINT:
            value, at = window.varint(at)
            yield Field(number, wire, value, at)
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            value = int.from_bytes(window.take(at, size), "little")
            at += size
            yield Field(number, wire, value, at)
        elif wire == LEN:
            length, at = window.varint(at)
            if length > end - at:
                raise FormatError(
                    source.path, f"protobuf field {number} at offset {at} claims {length} bytes, past its message"
                )
            yield Field(number, wire, length, at)
            at += length
        else:
            raise FormatError(source.path, f"protobuf wire type {wire} (field {number}) at offset {at}")


class _Window:
    """The bytes near the reading position, refilled STEP at a time."""

    def __init__(self, source: Source, end: int):
        self.source, self.end = source, end
        self.start, self.data = 0, b""

    def take(self, at: int, size: int) -> bytes:
        if at + size > self.end:
            raise FormatError(self.source.path, f"protobuf message truncated at offset {at}")
        if not (self.start <= at and at + size <= self.start + len(self.data)):
            self.start, self.data = at, self.source.read_exact(at, min(max(STEP, size), self.end - at))
        return self.data[at - self.start : at - self.start + size]

    def varint(self, at: int) -> tuple[int, int]:
        head = self.take(at, min(_MAX_VARINT, self.end - at)) if at < self.end else b""
        value, used = decode_varint(head, 0, self.source.path, at)
        return value, at + used


def decode_varint(data: bytes, pos: int, path: str, offset: int) -> tuple[int, int]:
    """The varint at data[pos:] and how many bytes it takes (offset: where
    data[pos] lies in the file, for the message)."""
    value = shift = 0
    for used in range(1, _MAX_VARINT + 1):
        if pos + used > len(data):
            break
        byte = data[pos + used - 1]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, used
        shift += 7
    raise FormatError(path, f"protobuf varint at offset {offset} is truncated or longer than 10 bytes")


def packed_varints(data: bytes, path: str, offset: int) -> list[int]:
    """A packed repeated varint field's values (its bytes already read)."""
    values, pos = [], 0
    while pos < len(data):
        value, used = decode_varint(data, pos, path, offset + pos)
        values.append(value)
        pos += used
    return values


def signed64(value: int) -> int:
    """An int64 written as a varint, back to its sign."""
    return value - (1 << 64) if value >> 63 else value


def encode_varint(value: int) -> bytes:
    """The varint of a non-negative value (int64 below zero: add 1 << 64 first)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_tag(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def encode_len(number: int, payload_length: int) -> bytes:
    """The tag and length that go before a LEN field's payload_length bytes."""
    return encode_tag(number, LEN) + encode_varint(payload_length)
