"""Integer weights packed into int32 words, as GPTQ, AWQ and
compressed-tensors store them, and their affine dequantization.

A run of packed values is read as one little-endian stream of bits: word
w holds bits [32w, 32w + 32), and value k (of `bits` bits) holds bits
[k * bits, (k + 1) * bits). Where `bits` divides 32 a word holds whole
values, the k-th at shift k * bits (GPTQModel's and AutoAWQ's `pack`,
compressed-tensors' `pack_to_int32`); for 3 bits (GPTQ) or 5 to 7
(compressed-tensors' dense packing) a value may span two words, and the
same stream reading covers it.

Every scheme then computes (q - zero) x scale as its library does: q and
the zero point are small integers, so q - zero is exact; the product is
made in float32 and rounded to the scales' dtype (the libraries multiply
in it: a float16 or bfloat16 product of exact operands rounds once from
float32's exact one), then to the dtype the model computes in.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

from .base import QuantizationError, Stored, numpy_dtype

#: bits per value an int32 word may pack
PACKED_BITS = (2, 3, 4, 8)
#: the dtypes scales may be stored in
SCALE_DTYPES = ("float32", "float16", "bfloat16")


def words(first: int, last: int, bits: int) -> tuple[int, int]:
    """The words [w0, w1) that hold values [first, last) of a packed run."""
    return first * bits // 32, math.ceil(last * bits / 32)


def unpack(packed: np.ndarray, bits: int, start: int, count: int, axis: int) -> np.ndarray:
    """`count` values of the runs packed along `axis` of `packed` (int32
    words, the run's first word first), the first at bit `start`, as uint8."""
    stream = np.moveaxis(packed, axis, -1).view(np.uint32)
    mask = (1 << bits) - 1
    if 8 % bits == 0:  # whole values in each byte: split the bytes, little-endian words' first byte first
        data = np.ascontiguousarray(stream, dtype="<u4").view(np.uint8)
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        values = ((data[..., :, None] >> shifts) & np.uint8(mask)).reshape(*stream.shape[:-1], -1)
        values = values[..., start // bits: start // bits + count]
    else:  # a value may start in one word and end in the next
        bit = start + np.arange(count, dtype=np.int64) * bits
        word, shift = np.minimum(bit >> 5, stream.shape[-1]), (bit & 31).astype(np.uint64)
        padded = np.concatenate([stream, np.zeros((*stream.shape[:-1], 2), np.uint32)], axis=-1).astype(np.uint64)
        values = ((padded[..., word] | (padded[..., word + 1] << np.uint64(32))) >> shift) & np.uint64(mask)
        if count and (start + count * bits + 31) // 32 > stream.shape[-1]:
            values = values[..., :0]
    if values.shape[-1] != count:
        raise QuantizationError(f"{packed.shape[axis]} words hold fewer than {count} values of {bits} bits")
    return np.moveaxis(values.astype(np.uint8, copy=False), -1, axis)


def affine(q: np.ndarray, zero: np.ndarray | float, scale: np.ndarray, dtype) -> np.ndarray:
    """(q - zero) x scale as the libraries compute it: rounded to the
    scales' dtype, then to `dtype` (the model's)."""
    product = (q.astype(np.float32) - zero) * scale.astype(np.float32)
    return product.astype(scale.dtype).astype(numpy_dtype(dtype))


def grouped(codes: np.ndarray, levels: np.ndarray, zero: np.ndarray | int, scale: np.ndarray, columns: np.ndarray,
            dtype) -> np.ndarray:
    """`affine` of rows whose zero points and scales are per group of
    columns: codes [n, in] (uint8, each standing for `levels[code]`),
    zero and scale [n, groups], `columns` the group of each column. Each
    row's groups have at most 2^bits values, computed once (with `affine`,
    so the same bits) and looked up for each code: one pass over the
    values instead of one per operation. Where that table would be larger
    than the values, the values are computed one by one instead."""
    rows, groups = scale.shape
    zero = np.broadcast_to(zero, scale.shape)
    if rows * groups * len(levels) > codes.size:
        return affine(levels[codes], zero[:, columns], scale[:, columns], dtype)
    table = affine(levels[None, None, :], zero[:, :, None], scale[:, :, None], dtype).reshape(-1)
    index_type = np.int32 if table.size < 2**31 else np.int64
    base = (np.arange(rows, dtype=index_type)[:, None] * groups + columns.astype(index_type)[None, :]) * len(levels)
    base += codes
    return table[base]


def check_bits(bits, allowed: tuple[int, ...] = PACKED_BITS) -> int:
    if type(bits) is not int or bits not in allowed:
        raise QuantizationError(f"{bits!r} bits: values of {', '.join(map(str, allowed))} bits are dequantized")
    return bits


def check_dtype(stored: Stored, name: str, dtypes: tuple[str, ...]) -> None:
    tensor = stored.get(name)
    if tensor.dtype.name not in dtypes:
        raise QuantizationError(f"{name} is {tensor.dtype.name}, not {' or '.join(dtypes)}")


def check_shape(stored: Stored, name: str, shape: tuple[int, ...]) -> None:
    if stored.get(name).shape != shape:
        raise QuantizationError(f"{name} has shape {list(stored.get(name).shape)}, not {list(shape)}")


def group_index(stored: Stored, name: str | None, inputs: int, group_size: int, groups: int
                ) -> Callable[[], np.ndarray]:
    """What gives the group of each input column: stored (GPTQ's `g_idx`,
    whose order `desc_act` permutes) or column // group_size; each checked
    here to be one of the `groups` the scales hold. Nothing is held per
    weight: a stored index is read again for each block of values (4 bytes
    a column), columns in order are one array for every weight of their width."""
    if name is None:
        last = (inputs - 1) // group_size
        if inputs and last >= groups:
            raise QuantizationError(f"a group size of {group_size} puts a column in group {last}, "
                                    f"and the scales hold {groups} groups")
        return functools.partial(_in_order, inputs, group_size)
    check_shape(stored, name, (inputs,))
    check_dtype(stored, name, ("int32", "int64"))
    index = stored.whole(name)
    if inputs and (index.min() < 0 or index.max() >= groups):
        bad = int(index.min() if index.min() < 0 else index.max())
        raise QuantizationError(f"{name} puts a column in group {bad}, and the scales hold {groups} groups")
    return functools.partial(stored.whole, name)


@functools.lru_cache(maxsize=64)
def _in_order(inputs: int, group_size: int) -> np.ndarray:
    """Column // group_size, shared by every weight of this width and group size (read-only)."""
    index = np.arange(inputs, dtype=np.int32) // np.int32(group_size)
    index.flags.writeable = False
    return index


def packed_modules(stored: Stored) -> list[str]:
    """The prefixes (`model.layers.0.mlp.down_proj.`) of the modules that
    store a `qweight` with its `qzeros` and `scales`, as GPTQ and AWQ do."""
    prefixes = [n[: -len("qweight")] for n in stored.tensors if n.endswith(".qweight") or n == "qweight"]
    return [p for p in prefixes if p + "qzeros" in stored and p + "scales" in stored]


def packed_layout(stored: Stored, prefix: str) -> str | None:
    """Which layout a module's shapes are, with no config to say: GPTQ
    packs the inputs (`qweight` [in x bits / 32, out], as wide as its
    scales), AWQ the outputs (`qweight` [in, out / 8]); None for neither."""
    qweight, scales = stored.get(prefix + "qweight").shape, stored.get(prefix + "scales").shape
    if len(qweight) != 2 or len(scales) != 2 or not scales[1]:
        return None
    if qweight[1] == scales[1]:
        return "gptq"
    return "awq" if qweight[1] * 8 == scales[1] else None


def packed_parts(stored: Stored, prefix: str) -> tuple[str, str, str]:
    """The names of a module's `qweight`, `qzeros` and `scales`, each
    checked to be two-dimensional, of int32 words or of float scales."""
    names = tuple(prefix + s for s in ("qweight", "qzeros", "scales"))
    for name, dtypes in zip(names, (("int32",), ("int32",), SCALE_DTYPES)):
        check_dtype(stored, name, dtypes)
        if len(stored.get(name).shape) != 2:
            raise QuantizationError(f"{name} has shape {list(stored.get(name).shape)}, not two dimensions")
    return names
