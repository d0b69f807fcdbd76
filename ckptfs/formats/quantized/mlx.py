"""MLX affine quantization, as `mlx.nn.quantize` makes it and mlx-lm saves
it: `X.weight` uint32 of shape (..., in x bits / 32), the codes of each
row packed from the lowest bit of each little-endian word up, a code that
does not fit in a word going on in the next (3, 5 and 6 bits);
`X.scales` and `X.biases` of shape (..., in / group_size), one of each per
group of `group_size` codes along the row. The bits and group size are
config.json's `quantization` (mlx-lm also writes it as
`quantization_config`, with no `quant_method`), where a module's own path
(`model.layers.0.mlp.down_proj`) may name its own (mlx-lm's
`quantize_model`) or `false`. The values are code x scale + bias, each
step rounded to the scales' dtype, as `mlx.core.dequantize` computes them;
that dtype is the one the model computes in.
"""

from __future__ import annotations

import math

import numpy as np

from .base import QuantizationError, QuantizedWeight, Stored, numpy_dtype
from .packed import unpack as unpack_stream

#: the bits `mlx.core.quantize` packs codes in, and its group sizes
BITS = (1, 2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
SCALE_DTYPES = ("float32", "float16", "bfloat16")
#: the only mode with biases; mxfp4, nvfp4 and mxfp8 are other schemes
AFFINE = "affine"
#: codes unpacked at a time (their 64-bit steps take 8 bytes each)
CHUNK_CODES = 1 << 18


def find(stored: Stored) -> tuple[list[QuantizedWeight], list[str]]:
    """The MLX-quantized weights of `stored`, and notes on those that do not fit."""
    modules = [n[: -len(".scales")] for n in stored.tensors if n.endswith(".scales") and _affine(stored, n[: -len(".scales")])]
    if not modules:
        return [], []
    quantization = _quantization(stored.config)
    if quantization is None:
        return [], [f"{len(modules)} weights stored as MLX affine quantization (uint32 with scales and biases): "
                    "no config.json names their bits and group size"]
    weights, notes = [], []
    for module in modules:
        try:
            weights.append(_weight(stored, module, _params(quantization, module)))
        except QuantizationError as e:
            notes.append(f"{module}.weight: not dequantized: {e}")
    return weights, notes


def _affine(stored: Stored, module: str) -> bool:
    """Whether a module stores a packed weight with scales and biases."""
    weight = stored.get(module + ".weight")
    return weight is not None and weight.dtype.name == "uint32" and module + ".biases" in stored


def _quantization(config: dict) -> dict | None:
    """config.json's `quantization`, or mlx-lm's copy of it as `quantization_config`."""
    for key in ("quantization", "quantization_config"):
        value = config.get(key)
        if isinstance(value, dict) and "quant_method" not in value:
            return value
    return None


def _params(quantization: dict, module: str) -> tuple[int, int]:
    """(bits, group size) of one module: its own entry, else the model's."""
    own = quantization.get(module)
    if own is False:
        raise QuantizationError("config.json says it is not quantized")
    params = own if isinstance(own, dict) else quantization
    mode = params.get("mode", AFFINE)
    if mode != AFFINE:
        raise QuantizationError(f"mode {str(mode)[:40]!r}: ckptfs dequantizes MLX's affine mode")
    bits, group_size = params.get("bits"), params.get("group_size")
    if type(bits) is not int or bits not in BITS:
        raise QuantizationError(f"bits {str(bits)[:40]}, not one of {', '.join(map(str, BITS))}")
    if type(group_size) is not int or group_size not in GROUP_SIZES:
        raise QuantizationError(f"group_size {str(group_size)[:40]}, not one of {', '.join(map(str, GROUP_SIZES))}")
    return bits, group_size


def _weight(stored: Stored, module: str, params: tuple[int, int]) -> QuantizedWeight:
    bits, group_size = params
    name, scales, biases = (f"{module}.{part}" for part in ("weight", "scales", "biases"))
    packed, scale, bias = stored.get(name), stored.get(scales), stored.get(biases)
    if len(packed.shape) < 2 or not packed.shape[-1] or packed.shape[-1] * 32 % bits:
        raise QuantizationError(f"uint32{list(packed.shape)} does not hold whole {bits}-bit codes")
    width = packed.shape[-1] * 32 // bits
    groups = math.ceil(width / group_size)
    if width % group_size or scale.shape != (*packed.shape[:-1], groups):
        raise QuantizationError(f"scales of {list(scale.shape)} do not cover rows of {width} {bits}-bit codes "
                                f"in groups of {group_size}")
    if scale.dtype.name not in SCALE_DTYPES or bias.dtype != scale.dtype or bias.shape != scale.shape:
        raise QuantizationError(f"scales {scale.dtype.name}{list(scale.shape)} and biases "
                                f"{bias.dtype.name}{list(bias.shape)}, not floats of one dtype and shape")
    shape = (*packed.shape[:-1], width)
    dtype = scale.dtype
    unpack = _unpacker(width, bits)

    def values(first: int, last: int) -> np.ndarray:
        kind = numpy_dtype(dtype)
        codes = unpack(stored.rows(name, first, last).reshape(-1, packed.shape[-1])).astype(np.float32)
        per_code = (last - first, *shape[1:-1], groups, group_size)
        scaled = codes.reshape(per_code) * stored.rows(scales, first, last)[..., None].astype(np.float32)
        # each step rounded to the scales' dtype, as a float16 or bfloat16 multiply and add are
        made = scaled.astype(kind).astype(np.float32) + stored.rows(biases, first, last)[..., None].astype(np.float32)
        return made.astype(kind).reshape(last - first, *shape[1:])

    return QuantizedWeight(name, f"MLX affine {bits}-bit, groups of {group_size}", shape, dtype,
                           (name, scales, biases), values)


def _unpacker(width: int, bits: int):
    """Rows of packed words -> rows of `width` codes: code j is bits
    [j x bits, (j + 1) x bits) of the row read as one little-endian stream
    (packed.py), a few rows at a time, so that its 64-bit steps stay
    small however many rows a block holds (a 3-D weight's block is a whole expert)."""
    step = max(1, CHUNK_CODES // width)

    def unpack(words: np.ndarray) -> np.ndarray:
        parts = [unpack_stream(words[i:i + step], bits, 0, width, axis=-1) for i in range(0, len(words), step)]
        return np.concatenate(parts) if parts else np.zeros((0, width), np.uint8)

    return unpack
