"""AWQ weights in the GEMM layout, as AutoAWQ and transformers save them
(`version: gemm`, the default): per linear module `qweight` int32
[in, out / 8] and `qzeros` int32 [groups, out / 8], each word holding
eight 4-bit values of consecutive outputs in AutoAWQ's interleaved order
(the word's k-th nibble is output 8w + [0, 2, 4, 6, 1, 3, 5, 7][k]),
`scales` float16 [groups, out], groups of `group_size` consecutive
inputs. The weight, (out, in) as nn.Linear holds it, is
(q[i, o] - zero[i // group_size, o]) x scales[i // group_size, o]:
AutoAWQ's `dequantize_gemm` (awq/utils/packing_utils.py). GEMV, GEMV-fast,
Marlin and IPEX checkpoints pack otherwise and are not dequantized.
A read of rows [r0, r1) reads the words of `qweight` and `qzeros` that
hold outputs r0..r1 and those columns of `scales`.
"""

from __future__ import annotations

import numpy as np

from . import packed
from .base import QuantizationError, QuantizedWeight, Stored

#: where each output of a word's eight is among its nibbles (AutoAWQ's AWQ_REVERSE_ORDER)
NIBBLE_OF_OUTPUT = np.array([0, 4, 1, 5, 2, 6, 3, 7])
PER_WORD = 8
#: what each 4-bit code stands for
LEVELS = np.arange(16, dtype=np.int16)


def find(stored: Stored) -> tuple[list[QuantizedWeight], list[str]]:
    """The AWQ weights of `stored`; with no config, the modules whose shapes are AWQ's."""
    method = stored.quantization.get("quant_method")
    if method not in (None, "awq") or (method is None and stored.quantization):
        return [], []
    weights, notes = [], []
    for prefix in packed.packed_modules(stored):
        if method is None and packed.packed_layout(stored, prefix) != "awq":
            continue  # GPTQ's, or a note of gptq.py's
        try:
            weights.append(_weight(stored, prefix, stored.quantization))
        except QuantizationError as e:
            notes.append(f"{prefix}weight: not dequantized: {e}")
    return weights, notes


def _settings(config: dict, inputs: int, groups: int) -> int:
    """The group size, once the config's version and bits are checked."""
    version = str(config.get("version", "gemm")).lower()
    if version != "gemm":
        raise QuantizationError(f"AWQ version {version!r}: ckptfs dequantizes the GEMM layout only")
    packed.check_bits(config.get("bits", config.get("w_bit", 4)), (4,))
    group_size = config.get("group_size", config.get("q_group_size", -(-inputs // max(1, groups))))
    if type(group_size) is not int or group_size == 0 or group_size < -1:
        raise QuantizationError(f"group_size {group_size!r}")
    return inputs if group_size == -1 else group_size


def _weight(stored: Stored, prefix: str, config: dict) -> QuantizedWeight:
    qweight, qzeros, scales = packed.packed_parts(stored, prefix)
    groups, outputs = stored.get(scales).shape
    inputs = stored.get(qweight).shape[0]
    if outputs % PER_WORD:
        raise QuantizationError(f"{scales} holds {outputs} outputs, not a multiple of {PER_WORD}")
    packed.check_shape(stored, qweight, (inputs, outputs // PER_WORD))
    packed.check_shape(stored, qzeros, (groups, outputs // PER_WORD))
    group_size = _settings(config, inputs, groups)
    index = packed.group_index(stored, None, inputs, group_size, groups)
    dtype = stored.compute_dtype()

    def values(first: int, last: int) -> np.ndarray:
        w0, w1 = first // PER_WORD, -(-last // PER_WORD)
        q = _outputs(stored.columns(qweight, w0, w1), first - w0 * PER_WORD, last - first)
        zero = _outputs(stored.columns(qzeros, w0, w1), first - w0 * PER_WORD, last - first)
        return packed.grouped(q, LEVELS, zero, stored.columns(scales, first, last).T, index(), dtype)

    return QuantizedWeight(prefix + "weight", f"AWQ 4-bit GEMM, group {group_size}", (outputs, inputs), dtype,
                           (qweight, qzeros, scales), values)


def _outputs(words: np.ndarray, first: int, count: int) -> np.ndarray:
    """Outputs [first, first + count) of words of eight, as (outputs, rows)."""
    nibbles = packed.unpack(words, 4, 0, words.shape[1] * PER_WORD, 1)
    ordered = nibbles.reshape(words.shape[0], -1, PER_WORD)[:, :, NIBBLE_OF_OUTPUT].reshape(words.shape[0], -1)
    return ordered[:, first: first + count].T
