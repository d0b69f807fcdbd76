"""The messages of onnx.proto that a mount reads, walked with `protowire`
in bounded steps: a model's top-level fields, a graph's parts, and a
`TensorProto` down to where its values lie (field numbers from
https://github.com/onnx/onnx/blob/main/onnx/onnx.proto).

A tensor's values are kept as the byte ranges that hold them, never read
here: `raw_data`, a packed `float_data`/`double_data` (little-endian as
NumPy lays them), the packed varints of `int32_data`/`int64_data`/
`uint64_data` (`VarintValues` decodes them on read), or a range of an
external data file.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError
from ..limits import LIMITS
from ..sources.base import Source, scatter
from . import protowire
from .protowire import I32, I64, LEN, VARINT

# ModelProto
IR_VERSION, PRODUCER_NAME, PRODUCER_VERSION, DOMAIN, MODEL_VERSION, DOC_STRING, GRAPH, OPSET_IMPORT = 1, 2, 3, 4, 5, 6, 7, 8
METADATA_PROPS, TRAINING_INFO, FUNCTIONS, CONFIGURATION = 14, 20, 25, 26
#: ModelProto's fields and their wire types: what the sniff accepts
MODEL_FIELDS = {IR_VERSION: VARINT, PRODUCER_NAME: LEN, PRODUCER_VERSION: LEN, DOMAIN: LEN, MODEL_VERSION: VARINT,
                DOC_STRING: LEN, GRAPH: LEN, OPSET_IMPORT: LEN, METADATA_PROPS: LEN, TRAINING_INFO: LEN,
                FUNCTIONS: LEN, CONFIGURATION: LEN}
# GraphProto
G_NODE, G_NAME, G_INITIALIZER, G_INPUT, G_OUTPUT, G_VALUE_INFO, G_SPARSE_INITIALIZER = 1, 2, 5, 11, 12, 13, 15
# TensorProto
T_DIMS, T_DATA_TYPE, T_SEGMENT, T_FLOAT_DATA, T_INT32_DATA, T_STRING_DATA, T_INT64_DATA = 1, 2, 3, 4, 5, 6, 7
T_NAME, T_RAW_DATA, T_DOUBLE_DATA, T_UINT64_DATA, T_EXTERNAL_DATA, T_DATA_LOCATION = 8, 9, 10, 11, 13, 14
EXTERNAL = 1  # TensorProto.DataLocation

#: TensorProto.DataType -> the dtype name ckptfs serves it as
DATA_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
              10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128",
              16: "bfloat16", 17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz",
              24: "float8_e8m0fnu"}
#: the types no NumPy dtype holds as ONNX stores them (below a byte a value, or strings)
UNSHOWN_TYPES = {0: "UNDEFINED", 8: "STRING", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1", 25: "UINT2", 26: "INT2",
                 27: "FLOAT6E2M3", 28: "FLOAT6E3M2"}
#: the typed field each dtype's values are kept in when not in raw_data (onnx.proto's comments)
TYPED_FIELD = {"float32": T_FLOAT_DATA, "complex64": T_FLOAT_DATA, "float64": T_DOUBLE_DATA,
               "complex128": T_DOUBLE_DATA, "int64": T_INT64_DATA, "uint32": T_UINT64_DATA,
               "uint64": T_UINT64_DATA}  # every other type: int32_data, a value per int32
#: typed fields whose packed bytes are the values as NumPy lays them (fixed width, little-endian)
FIXED_FIELDS = {T_FLOAT_DATA: I32, T_DOUBLE_DATA: I64}
FIELD_NAMES = {T_FLOAT_DATA: "float_data", T_INT32_DATA: "int32_data", T_INT64_DATA: "int64_data",
               T_DOUBLE_DATA: "double_data", T_UINT64_DATA: "uint64_data"}
#: the longest name or other string of a message read into memory
MAX_STRING = 1 << 20
#: the most dimensions a tensor may claim
MAX_RANK = 64
#: the most fields one tensor's values may be spread over (the onnx package
#: writes one, packed; proto2 allows a field a value, each held while mounted)
MAX_PARTS = 1 << 16


def text(source: Source, f: protowire.Field, limit: int = MAX_STRING) -> str:
    """A string field's value; one longer than `limit` is shown by its
    length, `<N bytes>`, unread (a metadata value may hold a vocabulary)."""
    if f.wire != LEN:
        raise FormatError(source.path, f"field {f.number} at offset {f.offset} is no string")
    if f.value > limit:
        return f"<{f.value} bytes>"
    return source.read_exact(f.offset, f.value).decode("utf-8", "replace")


def ints(source: Source, f: protowire.Field) -> list[int]:
    """A repeated int64 field's values, from one packed or unpacked field."""
    if f.wire == VARINT:
        return [protowire.signed64(f.value)]
    if f.wire != LEN or f.value > MAX_STRING:
        raise FormatError(source.path, f"field {f.number} at offset {f.offset} holds no integers")
    return [protowire.signed64(v) for v in protowire.packed_varints(source.read_exact(f.offset, f.value),
                                                                     source.path, f.offset)]


def counted(source: Source, start: int, end: int, what: str):
    """The fields of a message, at most LIMITS.members of them (a graph's nodes, a model's metadata)."""
    for i, f in enumerate(protowire.fields(source, start, end)):
        if i >= LIMITS.members * 4:
            raise FormatError(source.path, f"{what} holds more than {LIMITS.members * 4} fields "
                                           "(-o max_members raises the limit)")
        yield f


@dataclass
class TensorInfo:
    """A TensorProto as it lies in the model: where its values are, not them."""

    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    raw: protowire.Field | None = None
    #: typed field number -> its fields, in order
    typed: dict[int, list[protowire.Field]] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    data_location: int = 0
    segmented: bool = False


def read_tensor(source: Source, start: int, end: int) -> TensorInfo:
    """The TensorProto at source[start:end]."""
    info = TensorInfo()
    for f in protowire.fields(source, start, end):
        n = f.number
        if n == T_DIMS:
            info.dims += ints(source, f)
            if len(info.dims) > MAX_RANK:
                raise FormatError(source.path, f"a tensor at offset {start} claims more than {MAX_RANK} dimensions")
        elif n == T_DATA_TYPE and f.wire == VARINT:
            info.data_type = f.signed
        elif n == T_NAME:
            if f.value > MAX_STRING:  # a name is a path in the tree, never a summary
                raise FormatError(source.path, f"a tensor's name of {f.value} bytes, more than {MAX_STRING}")
            info.name = text(source, f)
        elif n == T_RAW_DATA and f.wire == LEN:
            info.raw = f
        elif n in FIELD_NAMES:
            fields = info.typed.setdefault(n, [])
            if len(fields) >= MAX_PARTS:
                raise FormatError(source.path, f"a tensor at offset {start} spreads its values over more than "
                                               f"{MAX_PARTS} fields")
            fields.append(f)
        elif n == T_EXTERNAL_DATA and f.wire == LEN:
            key, value = string_pair(source, f)
            info.external[key] = value
        elif n == T_DATA_LOCATION and f.wire == VARINT:
            info.data_location = f.value
        elif n == T_SEGMENT:
            info.segmented = True
    return info


def string_pair(source: Source, f: protowire.Field) -> tuple[str, str]:
    """A StringStringEntryProto's (key, value)."""
    key = value = ""
    for part in protowire.fields(source, f.offset, f.end):
        if part.number == 1:
            key = text(source, part)
        elif part.number == 2:
            value = text(source, part)
    return key, value


class VarintValues:
    """The values of a tensor kept as packed varints (`int32_data`,
    `int64_data`, `uint64_data`), as the bytes of a dtype `itemsize` wide
    made on read: each value cut to that width (how ONNX keeps float16's
    bits, a bool, an int8 in an int32). A read decodes from the nearest of
    the marks laid once, one every STEP bytes of varints, so memory stays
    bounded whatever the tensor's size."""

    STEP = 1 << 20

    def __init__(self, source: Source, fields: list[protowire.Field], itemsize: int, count: int):
        self.source, self.fields, self.itemsize, self.count = source, fields, itemsize, count
        self.length = count * itemsize
        #: (first value, its field, start, end): whole varints in source[start:end]
        self._marks: list[tuple[int, int, int, int]] | None = None

    def marks(self) -> list[tuple[int, int, int, int]]:
        """The marks, laid on first use: FormatError where the values are
        not whole varints or not as many as the shape takes."""
        if self._marks is None:
            self._marks = self._lay_marks()
        return self._marks

    def _lay_marks(self) -> list[tuple[int, int, int, int]]:
        marks, values = [], 0
        for i, f in enumerate(self.fields):
            if f.wire == VARINT:
                marks.append((values, i, f.offset, f.offset))
                values += 1
                continue
            at = f.offset
            while at < f.end:
                stops = varint_ends(self.source.read_exact(at, min(self.STEP, f.end - at)))
                if not len(stops):
                    raise FormatError(self.source.path, f"a varint at offset {at} is cut short or longer than 10 bytes")
                marks.append((values, i, at, at + int(stops[-1]) + 1))
                values += len(stops)
                at = marks[-1][3]
        if values != self.count:
            raise FormatError(self.source.path, f"a tensor's {FIELD_NAMES[self.fields[0].number]} holds {values} "
                                                f"values; its shape takes {self.count}")
        return marks

    def read(self, offset: int, length: int) -> bytes:
        size = self.itemsize
        first, last = offset // size, min(self.count, -(-(offset + length) // size))
        if first >= last:
            return b""
        marks = self.marks()
        m = bisect.bisect_right(marks, (first, len(self.fields), 0, 0)) - 1
        out = []
        for start_value, i, start, end in marks[m:]:
            if start_value >= last:
                break
            f = self.fields[i]
            out.append(np.array([f.value], np.uint64) if f.wire == VARINT
                       else decode_varints(self.source.read_exact(start, end - start), self.source.path, start))
        base = marks[m][0]
        values = np.concatenate(out)[first - base: last - base]
        data = values.astype(np.dtype(f"<u{size}")).tobytes()
        skip = offset - first * size
        return data[skip: skip + length]

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        scatter(self.read(offset, sum(map(len, buffers))), buffers)


def varint_ends(data: bytes) -> np.ndarray:
    """Where each varint of `data` ends: the index of every byte without
    the continuation bit (a varint cut short at the end has none)."""
    return np.flatnonzero(np.frombuffer(data, np.uint8) < 0x80)


def decode_varints(data: bytes, path: str, offset: int) -> np.ndarray:
    """The whole varints at the start of `data`, as uint64 (a varint cut
    short at its end is left out; one of more than 10 bytes is a FormatError)."""
    b = np.frombuffer(data, np.uint8)
    stops = varint_ends(data)
    if not len(stops):
        return np.zeros(0, np.uint64)
    b = b[: stops[-1] + 1]
    starts = np.concatenate([[0], stops[:-1] + 1])
    widths = stops - starts + 1
    if widths.max() > 10:
        raise FormatError(path, f"a varint near offset {offset} runs longer than 10 bytes")
    position = np.arange(len(b)) - np.repeat(starts, widths)
    parts = (b & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(parts, starts)
