"""What every quantization scheme of a Hub checkpoint is made of: the
stored tensors it reads (`Stored`), the weight it dequantizes
(`QuantizedWeight`), and the piece of a tree file that makes that weight's
values on read, a block of rows at a time (`DequantizedRows`).

A scheme never reads a whole quantized tensor for a partial read: a read of
rows [r0, r1) of the weight reads the rows (or, for a transposed packing,
the columns) of its stored tensors that hold them, so memory stays within
one block of rows however large the weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import CkptfsError
from ...sources.base import Source, scatter
from ...tree.dtypes import BY_NAME, DType
from ...tree.kept import Kept
from ...tree.tensors import Tensor

#: bytes of dequantized values made at a time (one block of whole rows, at least one row)
BLOCK_BYTES = 1 << 20
#: largest tensor `Stored.whole` reads in one piece (scales, zero points, group indexes, code books)
WHOLE_BYTES = 64 << 20
#: the dtypes a model may compute in, as config.json names them
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")


class QuantizationError(CkptfsError):
    """A quantized weight whose stored tensors do not fit together: found
    at mount, its dequantized file is left out, with this line as a note."""


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight the model computes with, stored quantized."""

    #: its name in the model's state dict (`model.layers.0.mlp.down_proj.weight`)
    name: str
    #: the scheme and its parameters, as the user knows them ("GPTQ 4-bit, group 128")
    scheme: str
    #: the shape of its values
    shape: tuple[int, ...]
    #: the dtype of its values: what the model computes in
    dtype: DType
    #: the stored tensors it is made of (a plain model has none of them)
    members: tuple[str, ...]
    #: rows [first, last) of its values (along the first dimension), as an
    #: array of `dtype` and shape (last - first, *shape[1:])
    rows: Callable[[int, int], np.ndarray]


class Stored:
    """The stored tensors of a checkpoint, by name, read a part at a time."""

    def __init__(self, tensors: dict[str, Tensor], config: dict | None):
        self.tensors = tensors
        self.config = config if isinstance(config, dict) else {}
        quantization = self.config.get("quantization_config")
        #: config.json's `quantization_config` ({} where there is none)
        self.quantization = quantization if isinstance(quantization, dict) else {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> Tensor | None:
        return self.tensors.get(name)

    def compute_dtype(self) -> DType:
        """What the model computes in: config.json's `torch_dtype` (`dtype`
        since transformers 5), float32 where it names none."""
        for key in ("dtype", "torch_dtype"):
            name = self.config.get(key)
            if isinstance(name, str) and name in COMPUTE_DTYPES:
                return BY_NAME[name]
        return BY_NAME["float32"]

    def whole(self, name: str) -> np.ndarray:
        """A small tensor (scales, zero points...) whole."""
        tensor = self.tensors[name]
        if _nbytes(tensor) > WHOLE_BYTES:
            raise QuantizationError(f"{name}: {_nbytes(tensor)} bytes, more than a scale or index tensor holds")
        return _array(tensor, _bytes(tensor, 0, _nbytes(tensor)), tensor.shape)

    def rows(self, name: str, first: int, last: int) -> np.ndarray:
        """Rows [first, last) of a tensor (along its first dimension)."""
        tensor = self.tensors[name]
        row = _nbytes(tensor) // tensor.shape[0] if tensor.shape[0] else 0
        return _array(tensor, _bytes(tensor, first * row, (last - first) * row), (last - first, *tensor.shape[1:]))

    def columns(self, name: str, first: int, last: int) -> np.ndarray:
        """Columns [first, last) of a 2-D tensor, every row: one read of
        each row's part, or of the rows whole where the part is most of them."""
        tensor = self.tensors[name]
        rows, width = tensor.shape
        if rows == 0 or width == 0:
            return _array(tensor, b"", (rows, last - first))
        item = _nbytes(tensor) // (rows * width)
        if (last - first) * 2 >= width:
            return self.whole_rows(name)[:, first:last]
        parts = [_bytes(tensor, r * width * item + first * item, (last - first) * item) for r in range(rows)]
        return _array(tensor, b"".join(parts), (rows, last - first))

    def whole_rows(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        return self.rows(name, 0, tensor.shape[0]) if tensor.shape else self.whole(name)


def _nbytes(tensor: Tensor) -> int:
    return tensor.dtype.nbytes(tensor.numel)


def _bytes(tensor: Tensor, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of a tensor's values: from its range
    of the source, or for one assembled on read (a strided view of a
    torch.save storage), from its file's bytes after the NPY header."""
    if type(tensor) is Tensor:
        return tensor.data.read(offset, length)
    content = tensor.content_type(tensor)
    return content.read(content.size - _nbytes(tensor) + offset, length)


def _array(tensor: Tensor, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, numpy_dtype(tensor.dtype)).reshape(shape)


#: the dtypes NumPy knows only through ml_dtypes (an optional dependency of ckptfs)
ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")


def numpy_dtype(dtype: DType) -> np.dtype:
    """The NumPy dtype of a DType that has one: ml_dtypes' for bfloat16 and
    float8, where it is installed (QuantizationError says to install it)."""
    if dtype.name not in ML_DTYPES:
        return np.dtype(dtype.npy_descr)
    try:
        import ml_dtypes
    except ImportError:
        raise QuantizationError(f"its {dtype.name} values need ml_dtypes (pip install ml_dtypes)") from None
    return np.dtype(getattr(ml_dtypes, dtype.name))


class DequantizedRows:
    """A quantized weight's values, made on read a block of whole rows at a
    time; the blocks made last are kept (`_KEPT`)."""

    def __init__(self, weight: QuantizedWeight, source: Source):
        #: where its stored tensors lie (the first's): a slow one is read off the event loop
        self.source = source
        self.weight = weight
        self.row_bytes = weight.dtype.nbytes(math.prod(weight.shape[1:]))
        self.length = self.row_bytes * (weight.shape[0] if weight.shape else 1)
        self.block_rows = max(1, BLOCK_BYTES // max(1, self.row_bytes))

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.length, offset + max(0, length))
        if offset >= end:
            return b""
        block_bytes = self.block_rows * self.row_bytes
        parts = []
        while offset < end:
            block = offset // block_bytes
            data = self._block(block)
            start = offset - block * block_bytes
            parts.append(data[start: start + end - offset])
            offset += len(parts[-1])
        return b"".join(parts)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        scatter(self.read(offset, sum(map(len, buffers))), buffers)

    def _block(self, block: int) -> bytes:
        return _KEPT.get((self, block), lambda: self._make(block))

    def _make(self, block: int) -> bytes:
        weight, rows = self.weight, self.weight.shape[0]
        first = block * self.block_rows
        last = min(rows, first + self.block_rows)
        with np.errstate(all="ignore"):  # a scale of inf or NaN gives what the library gives: inf or NaN
            values = weight.rows(first, last)
        expected = (last - first, *weight.shape[1:])
        if values.shape != expected or values.dtype != numpy_dtype(weight.dtype):
            raise QuantizationError(f"{weight.name}: made {values.dtype}{list(values.shape)}, not "
                                    f"{weight.dtype.name}{list(expected)}")  # a scheme's own mistake, never the file's
        return np.ascontiguousarray(values).tobytes()


#: the blocks made last, of any weight: a sequential copy (128 KiB reads
#: through FUSE) makes each block once, and a walk of every weight holds a few
_KEPT = Kept(4 * BLOCK_BYTES, len)
