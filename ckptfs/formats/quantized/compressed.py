"""compressed-tensors weights (`quant_method: compressed-tensors`, as
llm-compressor and compressed-tensors' ModelCompressor save them), in the
format `config_groups` or the config as a whole names:

- `pack-quantized`: `weight_packed` int32 [out, in x bits / 32] (each
  row's values packed densely, offset by 2^(bits-1) to be unsigned),
  `weight_shape`, `weight_scale` and, where not symmetric,
  `weight_zero_point` (packed alike along the outputs for group and
  channel scales);
- `naive-quantized` (and the older `int-quantized`): `weight` int8 with
  `weight_scale` and `weight_zero_point`;
- `float-quantized`: `weight` float8 with `weight_scale`.

Scales are one per tensor, per output channel, per group of `group_size`
inputs or per block of `block_structure`. The values are (q - zero) x
scale in the scales' dtype, as compressed-tensors' `_dequantize`
(quantization/lifecycle/forward_helpers.py) computes them, then the
model's dtype. Modules the config's `ignore` names are left as stored.
A read of rows [r0, r1) reads those rows of the weight and its scales.
"""

from __future__ import annotations

import math

import numpy as np

from .base import QuantizationError, QuantizedWeight, Stored
from .packed import SCALE_DTYPES, affine, check_dtype, group_index, grouped, unpack, words
from .patterns import Patterns

METHOD = "compressed-tensors"
#: formats whose weights are stored as values, not packed
UNPACKED = ("naive-quantized", "int-quantized", "float-quantized")
PACKED = "pack-quantized"
#: what naive- and float-quantized weights are stored as
STORED_DTYPES = ("int8", "float8_e4m3fn", "float8_e5m2")
#: a module's activation parameters: not part of a plain model
ACTIVATION_PARAMETERS = ("input_scale", "input_zero_point", "input_global_scale", "output_scale",
                         "output_zero_point", "weight_global_scale")


def find(stored: Stored) -> tuple[list[QuantizedWeight], list[str]]:
    """The compressed-tensors weights of `stored`, found from its config."""
    config = stored.quantization
    if config.get("quant_method") != METHOD:
        return [], []
    notes: list[str] = []
    groups = config.get("config_groups")
    groups = [g for g in groups.values() if isinstance(g, dict)] if isinstance(groups, dict) else []
    ignore = Patterns(config.get("ignore"), notes)
    targets = [Patterns(g.get("targets"), notes) for g in groups]  # compiled once, not once a module
    weights = []
    for prefix in _modules(stored):
        module = prefix[:-1]
        if ignore.matches(module):
            continue
        try:
            scheme = _scheme(groups, targets, module, config.get("format"))
            weights.append(_weight(stored, prefix, *scheme))
        except QuantizationError as e:
            notes.append(f"{prefix}weight: not dequantized: {e}")
    return weights, notes


def _modules(stored: Stored) -> list[str]:
    """The prefixes of modules storing a packed weight, or a weight with its scale."""
    prefixes = []
    for name in stored.tensors:
        for suffix in ("weight_packed", "weight_scale"):
            if name.endswith("." + suffix):
                prefix = name[: -len(suffix)]
                if suffix == "weight_packed" or (prefix + "weight" in stored and prefix + "weight_packed" not in stored):
                    prefixes.append(prefix)
    return prefixes


def _scheme(groups: list[dict], targets: list[Patterns], module: str, default_format) -> tuple[str, dict]:
    """(format, weights' arguments) of the config group that targets
    `module` (`targets`: each group's, in order): the first whose regular
    expression matches it, else the only one that targets modules by class."""
    by_pattern = [g for g, aimed in zip(groups, targets) if aimed.matches(module)]
    by_class = [g for g in groups if any(isinstance(t, str) and not t.startswith("re:") for t in _listed(g.get("targets")))]
    chosen = by_pattern[:1] or (by_class if len(by_class) == 1 else [])
    if not chosen:
        raise QuantizationError(f"{len(by_class)} config groups may target it, and none names it")
    group = chosen[0]
    arguments = group.get("weights")
    if not isinstance(arguments, dict):
        raise QuantizationError("its config group quantizes no weights")
    return group.get("format") or default_format, arguments


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _block(arguments: dict, shape: tuple[int, int]) -> tuple[int, int]:
    """The rows and columns one scale covers."""
    strategy, (rows, cols) = arguments.get("strategy", "tensor"), shape
    if strategy == "tensor":
        return max(1, rows), max(1, cols)
    if strategy == "channel":
        return 1, max(1, cols)
    if strategy == "group" and type(arguments.get("group_size")) is int and arguments["group_size"] > 0:
        return 1, arguments["group_size"]
    block = arguments.get("block_structure")
    if strategy == "block" and isinstance(block, list) and len(block) == 2 and all(type(n) is int and n > 0 for n in block):
        return block[0], block[1]
    raise QuantizationError(f"weights quantized by {strategy!r} (group_size {arguments.get('group_size')!r}, "
                            f"block_structure {arguments.get('block_structure')!r})")


def _shape(stored: Stored, prefix: str, packed: bool) -> tuple[int, int]:
    if not packed:
        shape = stored.get(prefix + "weight").shape
    elif prefix + "weight_shape" not in stored or stored.get(prefix + "weight_shape").numel != 2:
        raise QuantizationError("no weight_shape of two numbers beside its weight_packed")
    else:
        check_dtype(stored, prefix + "weight_shape", ("int64", "int32"))
        shape = tuple(int(n) for n in stored.whole(prefix + "weight_shape").reshape(-1))
    if len(shape) != 2 or min(shape) < 0:
        raise QuantizationError(f"a weight of shape {list(shape)}: ckptfs dequantizes 2-D weights")
    return shape


def _weight(stored: Stored, prefix: str, format_name, arguments: dict) -> QuantizedWeight:
    if format_name not in UNPACKED + (PACKED,):
        raise QuantizationError(f"format {format_name!r}: ckptfs dequantizes {PACKED} and {', '.join(UNPACKED)}")
    packed = format_name == PACKED
    stored_values = prefix + ("weight_packed" if packed else "weight")
    if stored_values not in stored:
        raise QuantizationError(f"its config group's format is {format_name}, and it stores no {stored_values}")
    bits = arguments.get("num_bits", 8)
    if packed and (type(bits) is not int or not 1 <= bits <= 8):
        raise QuantizationError(f"{bits!r} bits: pack-quantized packs 1 to 8")
    shape = _shape(stored, prefix, packed)
    read = _packed_rows(stored, stored_values, bits, shape) if packed else (lambda a, b: stored.rows(stored_values, a, b))
    block = _block(arguments, shape)
    scale, zero = prefix + "weight_scale", prefix + "weight_zero_point"
    if scale not in stored:
        raise QuantizationError(f"no {scale} beside its {stored_values}")
    check_dtype(stored, scale, SCALE_DTYPES)
    if not packed:
        check_dtype(stored, stored_values, STORED_DTYPES)
    grid = (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))
    if stored.get(scale).numel != math.prod(grid) or (stored.get(scale).numel > 1 and stored.get(scale).shape[-1] != grid[1]):
        raise QuantizationError(f"{scale} of shape {list(stored.get(scale).shape)} does not cover a weight of "
                                f"{list(shape)} in blocks of {list(block)}")
    columns = group_index(stored, prefix + "weight_g_idx" if prefix + "weight_g_idx" in stored else None,
                          shape[1], block[1], grid[1])
    zeros = _zero_rows(stored, zero, bits, packed, grid) if zero in stored else None
    dtype = stored.compute_dtype()
    levels = np.arange(1 << bits, dtype=np.int16) - (1 << (bits - 1)) if packed else None  # stored + half their range

    def values(first: int, last: int) -> np.ndarray:
        g0, g1 = first // block[0], -(-last // block[0])
        rows = np.arange(first, last) // block[0] - g0
        scales = stored.rows(scale, g0, g1).reshape(g1 - g0, -1) if grid[0] > 1 else stored.whole(scale).reshape(1, -1)
        zero_points = 0 if zeros is None else zeros(g0, g1)[rows]
        if packed:  # codes of 2^bits values: looked up per group
            return grouped(read(first, last), levels, zero_points, scales[rows], columns(), dtype)
        group = columns()
        return affine(read(first, last), zero_points if zeros is None else zero_points[:, group],
                      scales[rows][:, group], dtype)

    members = tuple(prefix + n for n in ("weight_packed", "weight", "weight_shape", "weight_scale", "weight_zero_point",
                                         "weight_g_idx") + ACTIVATION_PARAMETERS if prefix + n in stored)
    strategy = arguments.get("strategy", "tensor")
    detail = f"group {block[1]}" if strategy == "group" else f"blocks of {block[0]}x{block[1]}" if strategy == "block" else strategy
    kind = stored.get(stored_values).dtype.name if not packed else f"int{bits}"
    return QuantizedWeight(prefix + "weight", f"compressed-tensors {format_name} {kind}, {detail}", shape, dtype,
                           members, values)


def _packed_rows(stored: Stored, name: str, bits: int, shape: tuple[int, int]):
    """Rows of the weight's codes (each stored integer + 2^(bits - 1)), once `weight_packed` is checked
    to hold `shape` (weight_shape's)."""
    check_dtype(stored, name, ("int32",))
    rows, inputs = shape
    if stored.get(name).shape != (rows, words(0, inputs, bits)[1]):
        raise QuantizationError(f"{name} of shape {list(stored.get(name).shape)} does not pack {list(shape)} values of {bits} bits")
    return lambda first, last: unpack(stored.rows(name, first, last), bits, 0, inputs, 1)


def _zero_rows(stored: Stored, name: str, bits: int, packed: bool, grid: tuple[int, int]):
    """Zero points [g0, g1) of the grid's rows: packed along the rows
    (pack-quantized's group and channel ones), or stored as they are."""
    tensor = stored.get(name)
    if packed and tensor.dtype.name == "int32" and tensor.numel > 1:
        if tensor.shape != (words(0, grid[0], bits)[1], grid[1]):
            raise QuantizationError(f"{name} of shape {list(tensor.shape)} does not pack {list(grid)} zero points")
        offset = 1 << (bits - 1)
        return lambda g0, g1: (unpack(stored.rows(name, *words(g0, g1, bits)), bits, g0 * bits - words(g0, g1, bits)[0] * 32,
                                      g1 - g0, 0).astype(np.int16) - offset)
    if tensor.numel != math.prod(grid) or tensor.dtype.name not in ("int8", "int32", "float32", "float16", "bfloat16", "float8_e4m3fn"):
        raise QuantizationError(f"{name} is {tensor.dtype.name}{list(tensor.shape)}, not a zero point per scale")
    if grid[0] == 1:
        return lambda g0, g1: stored.whole(name).reshape(1, -1)
    return lambda g0, g1: stored.rows(name, g0, g1).reshape(g1 - g0, -1)
