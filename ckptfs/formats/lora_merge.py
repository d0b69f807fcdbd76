"""A LoRA-adapted weight, W + (B·A)·scaling, computed on read a block of
rows at a time, as PEFT's `merge_and_unload` computes it (`tuners/lora/
layer.py`: `Linear.get_delta_weight`, `Embedding.get_delta_weight`, `merge`;
DoRA: `variants.py` `DoraLinearVariant.merge_safe`, `dora.py`
`get_weight_norm`).

Rows [r0, r1) of the merged weight need rows [r0, r1) of W and of the
delta only: B[r0:r1]·A for a Linear's (out, in) weight, or, where the
delta is transposed (an Embedding's (num, dim) weight, a GPT-2 Conv1D's
(in, out) with `fan_in_fan_out`), (B·A[:, r0:r1])ᵀ. Only the thin factor
needed whole (A, or B where transposed) is held, at most 64 MiB of it. DoRA's factor is
per row (the magnitude over the row's norm), so it too is found row by
row. Everything is computed in float32 (the factors and W converted
exactly) and rounded once, to nearest even, to W's dtype; PEFT adds a
delta already rounded to a 16-bit W's dtype, so for float16 and bfloat16
weights the two can differ by one unit in the last place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from ..sources.base import scatter
from ..tree.kept import Kept
from ..tree.tensors import Tensor

#: the dtypes a merge reads and writes
FLOATS = ("float16", "bfloat16", "float32", "float64")
#: bytes of merged output computed at a time, at most (a row is always whole)
BLOCK_BYTES = 8 << 20


class Unfit(Exception):
    """An adapted module that cannot be merged into its base tensor: why, in a phrase."""


@dataclass(frozen=True)
class Factors:
    """The adapter's tensors for one module (the key's part before `.lora_`)."""

    a: Tensor | None = None
    b: Tensor | None = None
    #: `lora_B.bias` (`lora_bias=True`), added to the base's bias
    bias: Tensor | None = None
    #: DoRA's `lora_magnitude_vector`
    magnitude: Tensor | None = None
    #: `lora_embedding_A`/`_B`: the delta is transposed
    embedding: bool = False


def to_float32(raw: bytes, dtype: str) -> np.ndarray:
    """Values of `dtype` (one of FLOATS) as float32 (bfloat16 widened
    exactly, without ml_dtypes)."""
    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, "<" + {"float16": "f2", "float32": "f4", "float64": "f8"}[dtype]).astype(np.float32)


def from_float32(values: np.ndarray, dtype: str) -> bytes:
    """float32 `values` rounded to nearest even in `dtype`, as torch's
    `.to(dtype)` rounds (a NaN stays a quiet NaN)."""
    if dtype != "bfloat16":
        return values.astype("<" + {"float16": "f2", "float32": "f4", "float64": "f8"}[dtype]).tobytes()
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded.astype("<u2").tobytes()


def tensor_bytes(tensor: Tensor, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of a tensor's data, however its file assembles them."""
    content = tensor.content_type(tensor)
    return content.read(content.size - tensor.dtype.nbytes(tensor.numel) + offset, length)


#: the most a factor read whole (A, or B where the delta is transposed) may
#: take as float32: a rank in the thousands of a dimension in the tens of thousands
MAX_FACTOR_BYTES = 64 << 20


#: the factors read whole last, kept for the next reads of their modules' rows
_KEPT = Kept(MAX_FACTOR_BYTES, lambda array: array.nbytes)


def _whole(tensor: Tensor) -> np.ndarray:
    """A thin factor (or DoRA's magnitude, a bias) as float32, kept (`_KEPT`)."""
    return _KEPT.get(tensor, lambda: to_float32(tensor_bytes(tensor, 0, tensor.dtype.nbytes(tensor.numel)),
                                                tensor.dtype.name).reshape(tensor.shape))


def _rows(tensor: Tensor, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of a 2-D factor as float32."""
    row = tensor.shape[1] * (tensor.dtype.bits // 8)
    return to_float32(tensor_bytes(tensor, r0 * row, (r1 - r0) * row), tensor.dtype.name).reshape(r1 - r0, -1)


def _columns(tensor: Tensor, c0: int, c1: int) -> np.ndarray:
    """Columns [c0, c1) of every row of a 2-D factor (its rank's few rows) as float32."""
    rows, cols = tensor.shape
    item = tensor.dtype.bits // 8
    raw = b"".join(tensor_bytes(tensor, (k * cols + c0) * item, (c1 - c0) * item) for k in range(rows))
    return to_float32(raw, tensor.dtype.name).reshape(rows, c1 - c0)


class MergedRows:
    """The merged weight's bytes, in W's dtype, computed on read: a piece
    of its `.npy` file (tree/nodes.py)."""

    def __init__(self, base: Tensor, factors: Factors, scaling: float, transposed: bool, dora: bool):
        self.base, self.factors, self.transposed, self.dora = base, factors, transposed, dora
        self.scaling = np.float32(scaling)  # torch multiplies a float32 tensor by the scalar in float32
        self.rows = base.shape[0] if len(base.shape) == 2 else 1
        self.cols = base.numel // self.rows if self.rows else 0
        self.item = base.dtype.bits // 8
        self.length = base.dtype.nbytes(base.numel)
        self.source = base.data.source

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.length, offset + length)
        if offset >= end:
            return b""
        row_bytes = self.cols * self.item
        first = offset // row_bytes
        last = -(-end // row_bytes)
        step = max(1, BLOCK_BYTES // row_bytes)
        data = b"".join(self._block(r, min(last, r + step)) for r in range(first, last, step))
        skip = offset - first * row_bytes
        return data[skip: skip + end - offset]

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        scatter(self.read(offset, sum(map(len, buffers))), buffers)

    def _block(self, r0: int, r1: int) -> bytes:
        row_bytes = self.cols * self.item
        name = self.base.dtype.name
        w = to_float32(tensor_bytes(self.base, r0 * row_bytes, (r1 - r0) * row_bytes), name).reshape(r1 - r0, -1)
        with np.errstate(all="ignore"):  # an inf or NaN in a factor gives what torch gives: inf or NaN
            merged = w + self._delta(r0, r1)
            if self.dora:
                norm = np.sqrt(np.sum(merged * merged, axis=1, dtype=np.float32))
                merged = (_whole(self.factors.magnitude)[r0:r1] / norm)[:, None] * merged
        return from_float32(merged, name)

    def _delta(self, r0: int, r1: int) -> np.ndarray:
        f = self.factors
        if len(self.base.shape) == 1:  # the bias: lora_B's own, scaled
            return (_whole(f.bias) * self.scaling)[None, :]
        if self.transposed:
            return (_whole(f.b) @ _columns(f.a, r0, r1)).T * self.scaling
        return (_rows(f.b, r0, r1) @ _whole(f.a)) * self.scaling


def fitted(base: Tensor, factors: Factors, rank: int, fan_in_fan_out: bool, dora: bool) -> bool:
    """Whether the module's delta is transposed; Unfit saying why the
    factors and their base cannot be merged as PEFT merges them."""
    if base.dtype.name not in FLOATS:
        raise Unfit(f"the base tensor is {base.dtype.name}, not a float")
    if factors.a is None or factors.b is None:
        raise Unfit("the adapter holds only one of lora_A and lora_B")
    for what, t in (("lora_A", factors.a), ("lora_B", factors.b), ("lora_B.bias", factors.bias),
                    ("lora_magnitude_vector", factors.magnitude)):
        if t is not None and t.dtype.name not in FLOATS:
            raise Unfit(f"{what} is {t.dtype.name}, not a float")
    a, b, w = factors.a.shape, factors.b.shape, base.shape
    if len(a) != 2 or len(b) != 2:
        raise Unfit(f"lora_A is {list(a)} and lora_B {list(b)}: a LoRA of a convolution is not merged by ckptfs")
    if len(w) != 2:
        raise Unfit(f"the base tensor is {list(w)}, not a matrix")
    if a[0] != rank or b[1] != rank:
        raise Unfit(f"lora_A is {list(a)} and lora_B {list(b)}, but the config's rank for it is {rank}")
    # PEFT lays out the delta by the module's class (a Conv1D's is transposed,
    # whatever fan_in_fan_out says, and a Linear's is not): the shapes tell,
    # and the config decides for a square weight
    preferred = factors.embedding or fan_in_fan_out
    layouts = (True,) if factors.embedding else (preferred, not preferred)
    fits = [t for t in layouts if (b[0], a[1]) == ((w[1], w[0]) if t else (w[0], w[1]))]
    if not fits:
        raise Unfit(f"lora_B·lora_A is {[b[0], a[1]]}, which fits neither the base tensor's {list(w)} "
                    "nor its transpose")
    transposed = fits[0]
    whole = factors.b if transposed else factors.a  # the factor every block of rows needs all of
    if whole.numel * 4 > MAX_FACTOR_BYTES:
        raise Unfit(f"{'lora_B' if transposed else 'lora_A'} is {list(whole.shape)}: more than the "
                    f"{MAX_FACTOR_BYTES >> 20} MiB of float32 ckptfs holds to merge one module")
    if dora:
        if transposed:
            raise Unfit("DoRA of an embedding or with fan_in_fan_out is not merged by ckptfs")
        if factors.magnitude is None or factors.magnitude.shape != (w[0],):
            raise Unfit(f"DoRA needs a lora_magnitude_vector of [{w[0]}]")
    return transposed


def fitted_bias(base: Tensor, factors: Factors) -> None:
    """Unfit unless lora_B's bias can be added to the base's bias."""
    if base.dtype.name not in FLOATS or factors.bias.dtype.name not in FLOATS:
        raise Unfit("the base bias or lora_B.bias is not a float")
    if base.shape != factors.bias.shape or len(base.shape) != 1:
        raise Unfit(f"lora_B.bias is {list(factors.bias.shape)}, the base bias {list(base.shape)}")


class Refused:
    """The bytes of a merged tensor that cannot be computed: every read
    fails (EIO) with the file and the reason."""

    def __init__(self, path: str, problem: str, base: Tensor):
        self.path, self.problem, self.source = path, problem, base.data.source
        self.length = base.dtype.nbytes(base.numel) or 0

    def read(self, offset: int, length: int) -> bytes:
        raise FormatError(self.path, self.problem)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        raise FormatError(self.path, self.problem)

