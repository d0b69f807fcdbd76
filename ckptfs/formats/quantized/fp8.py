"""FP8 weights with inverse scales, as transformers' `fp8` quantization
(FineGrainedFP8Config) and DeepSeek-V3, Qwen FP8 and MiniMax ship them:
`X.weight` float8_e4m3fn (or e5m2) of shape (rows, cols), and
`X.weight_scale_inv`, one float per block of (rows, cols) of
`weight_block_size` (128 x 128 unless config.json says otherwise, the
grid rounding up where a block runs past the edge), or one for the whole
tensor. The values are weight x scale, in float32, rounded to the compute
dtype: transformers' `Fp8Dequantize._dequantize_one`
(integrations/finegrained_fp8.py) and DeepSeek-V3's `weight_dequant`.
A scale stored as uint8 is an E8M0 exponent, 2^(byte - 127), as there.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .base import QuantizationError, QuantizedWeight, Stored, numpy_dtype

SCALE_SUFFIX = "_scale_inv"
#: the float8 types a weight may be stored in
WEIGHT_DTYPES = ("float8_e4m3fn", "float8_e5m2")
#: the block of a grid of scales when config.json names none
DEFAULT_BLOCK = (128, 128)
#: activation scales of a static scheme: not part of the weight, nor of a plain model
ACTIVATION_SCALES = ("input_scale", "activation_scale")


def find(stored: Stored) -> tuple[list[QuantizedWeight], list[str]]:
    """The FP8 weights of `stored`, and notes on those whose scales do not fit."""
    method = stored.quantization.get("quant_method")
    if method not in (None, "fp8") or (method is None and stored.quantization):
        return [], []  # another scheme's checkpoint
    block = _block(stored.quantization.get("weight_block_size"))
    weights, notes = [], []
    for scale_name in [n for n in stored.tensors if n.endswith(".weight" + SCALE_SUFFIX)]:
        name = scale_name[: -len(SCALE_SUFFIX)]
        weight = stored.get(name)
        if weight is None or weight.dtype.name not in WEIGHT_DTYPES:
            continue
        try:
            weights.append(_weight(stored, name, scale_name, block))
        except QuantizationError as e:
            notes.append(f"{name}: not dequantized: {e}")
    return weights, notes


def _block(value) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(type(n) is int and n > 0 for n in value):
        return value[0], value[1]
    return None


def _weight(stored: Stored, name: str, scale_name: str, block: tuple[int, int] | None) -> QuantizedWeight:
    weight, scale = stored.get(name), stored.get(scale_name)
    if len(weight.shape) != 2:
        raise QuantizationError(f"an FP8 weight of shape {list(weight.shape)}: ckptfs dequantizes 2-D weights")
    if scale.dtype.name not in ("float32", "bfloat16", "float16", "uint8", "float8_e8m0fnu"):
        raise QuantizationError(f"its scales are {scale.dtype.name}, not a float or an E8M0 exponent")
    rows, cols = weight.shape
    members = (name, scale_name) + tuple(f"{name[:-len('weight')]}{a}" for a in ACTIVATION_SCALES
                                         if f"{name[:-len('weight')]}{a}" in stored)
    dtype = stored.compute_dtype()
    if scale.numel == 1:
        one = _floats(stored.whole(scale_name)).reshape(())
        return QuantizedWeight(name, f"FP8 {weight.dtype.name}, one scale", weight.shape, dtype, members,
                               lambda first, last: _scaled(stored, name, first, last, one, dtype))
    grid = scale.shape
    block = block or _inferred_block(rows, cols, grid)
    if len(grid) != 2 or grid != (math.ceil(rows / block[0]), math.ceil(cols / block[1])):
        raise QuantizationError(f"{len(grid) == 2 and 'a grid of' or 'scales of shape'} {list(grid)} does not "
                                f"cover a weight of {[rows, cols]} in blocks of {list(block)}")

    width = min(block[1], cols)  # columns a scale covers (a block wider than the weight covers it all)

    def values(first: int, last: int) -> np.ndarray:
        g0, g1 = first // block[0], math.ceil(last / block[0])
        row_scales = _floats(stored.rows(scale_name, g0, g1))[np.arange(first, last) // block[0] - g0]
        return _scaled(stored, name, first, last, np.repeat(row_scales, width, axis=1)[:, :cols], dtype)

    return QuantizedWeight(name, f"FP8 {weight.dtype.name}, blocks of {block[0]}x{block[1]}", weight.shape, dtype,
                           members, values)


def _inferred_block(rows: int, cols: int, grid: tuple[int, ...]) -> tuple[int, int]:
    """The block of a grid of scales with no config.json to name it: 128 x
    128 where that grid fits, else the block that divides the weight exactly."""
    if len(grid) == 2 and grid == (math.ceil(rows / 128), math.ceil(cols / 128)):
        return DEFAULT_BLOCK
    if len(grid) == 2 and all(grid) and rows % grid[0] == 0 and cols % grid[1] == 0:
        return rows // grid[0], cols // grid[1]
    return DEFAULT_BLOCK


def _floats(scales: np.ndarray) -> np.ndarray:
    if scales.dtype == np.uint8:  # E8M0 exponents stored as bytes
        return np.exp2(scales.astype(np.float32) - 127.0)
    return scales.astype(np.float32)


def _scaled(stored: Stored, name: str, first: int, last: int, scale: np.ndarray, dtype) -> np.ndarray:
    stored_rows = stored.rows(name, first, last)
    values = np.take(_float8_values(stored_rows.dtype), stored_rows.view(np.uint8))  # 3x ml_dtypes' cast
    values *= scale
    return values.astype(numpy_dtype(dtype))


@functools.cache
def _float8_values(dtype: np.dtype) -> np.ndarray:
    """The float32 value of each of the 256 codes of a float8 dtype (NaN's included), to look codes up in."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
