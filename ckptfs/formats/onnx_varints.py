"""An edited initializer written back as the varints it was kept in
(`int32_data`, `int64_data`, `uint64_data`), as protobuf writes a packed
repeated field: each value a varint, an int32's below zero sign-extended to
ten bytes, a float16's or bfloat16's bits as a small positive number. The
new field's length differs from the old one's, so the repack rewrites the
lengths of the TensorProto and of the graph that hold it (onnx_write).

Values are encoded CHUNK at a time, twice (once to count the field's
length, which goes before it, once to write it): memory stays bounded
whatever the tensor's size.
"""

from __future__ import annotations

import functools

import numpy as np

from ..tree.dtypes import DType
from .protowire import encode_len

#: values encoded at a time
CHUNK = 1 << 20


def encoded(values: np.ndarray) -> bytes:
    """The varints of uint64 `values`, laid end to end."""
    count = len(values)
    out = np.empty((count, 10), np.uint8)
    widths = np.ones(count, np.int64)
    for k in range(10):
        out[:, k] = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        if k < 9:
            more = (values >> np.uint64(7 * (k + 1))) != 0
            out[:, k] |= more.astype(np.uint8) << 7
            widths += more
    return out[np.arange(10) < widths[:, None]].tobytes()


def as_varint_values(data: bytes, dtype: DType) -> np.ndarray:
    """The values of `data` (C-order bytes of `dtype`) as the uint64s
    protobuf writes for them: signed integers sign-extended, floats their bits."""
    width = dtype.bits // 8
    if dtype.name.startswith("int"):
        return np.frombuffer(data, f"<i{width}").astype(np.int64).view(np.uint64)
    return np.frombuffer(data, f"<u{width}").astype(np.uint64)  # unsigned, bool, float bits


class VarintField:
    """A packed varint field (`number`) of the values in content[start:start + length]."""

    def __init__(self, number: int, dtype: DType, content, start: int, length: int):
        self.number, self.dtype, self.content, self.start, self.length = number, dtype, content, start, length

    def _chunks(self):
        step = CHUNK * (self.dtype.bits // 8)
        for pos in range(0, self.length, step):
            data = self.content.read(self.start + pos, min(step, self.length - pos))
            yield encoded(as_varint_values(data, self.dtype))

    @functools.cached_property
    def payload(self) -> int:
        return sum(len(chunk) for chunk in self._chunks())

    @property
    def size(self) -> int:
        """The field's bytes: its tag and length, then its varints."""
        return len(encode_len(self.number, self.payload)) + self.payload

    def write(self, output) -> None:
        output.write(encode_len(self.number, self.payload))
        for chunk in self._chunks():
            output.write(chunk)
