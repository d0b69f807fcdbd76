"""GPTQ weights, as GPTQModel, AutoGPTQ and transformers (with optimum)
save them: per linear module `qweight` int32 [in x bits / 32, out] (the
inputs packed, `bits` of them a word, 3-bit values spanning words),
`qzeros` int32 [groups, out x bits / 32] (the outputs packed alike),
`scales` float16 [groups, out], `g_idx` int32 [in] (each input's group;
`desc_act` permutes it, and it may be absent where groups are in order)
and the plain `bias`. The weight, (out, in) as nn.Linear holds it, is
scales[g_idx[i], o] x (q[i, o] - zero[g_idx[i], o]): GPTQModel's
`dequantize_weight` (gptqmodel/nn_modules/qlinear/__init__.py) and
AutoGPTQ's. A "gptq" (v1) checkpoint stores each zero point less one; a
"gptq_v2" one stores it as it is. GPTQModel reads v1 (and writes it) by
adding (subtracting) one in every field of each whole int32 word at once,
`convert_gptq_v1_to_v2_format_module`: a zero point of 0, stored as the
field's all-ones, borrows from the field above it, and the word-wide add
gives both back. 3-bit fields cross words, so there each field is shifted
on its own, modulo 8 (`_correct_gptq_v1_qzeros`). A read of rows [r0, r1) reads columns r0..r1 of
`qweight` and `scales` and the words of `qzeros` that hold them.
"""

from __future__ import annotations

import numpy as np

from . import packed
from .base import QuantizationError, QuantizedWeight, Stored

#: what each checkpoint format adds to the zero points it stores
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}
#: a one in every field of an int32 word of 2-, 4- or 8-bit fields: what v1 adds to each word of qzeros
ONE_PER_FIELD = {bits: sum(1 << shift for shift in range(0, 32, bits)) for bits in (2, 4, 8)}


def find(stored: Stored) -> tuple[list[QuantizedWeight], list[str]]:
    """The GPTQ weights of `stored`; with no config, the modules whose
    shapes are GPTQ's (AWQ's are left to awq.py)."""
    method = stored.quantization.get("quant_method")
    if method not in (None, "gptq") or (method is None and stored.quantization):
        return [], []
    weights, notes = [], []
    for prefix in packed.packed_modules(stored):
        layout = packed.packed_layout(stored, prefix)
        if method is None and layout != "gptq":
            if layout is None:
                notes.append(f"{prefix}weight: not dequantized: its qweight, qzeros and scales fit neither "
                             f"GPTQ's shapes nor AWQ's, and no quantization_config names the scheme")
            continue
        try:
            weights.append(_weight(stored, prefix, method is not None))
        except QuantizationError as e:
            notes.append(f"{prefix}weight: not dequantized: {e}")
    return weights, notes


def _zero_offset(config: dict) -> int:
    name = config.get("checkpoint_format", config.get("format", "gptq"))
    if not isinstance(name, str) or name not in ZERO_OFFSETS:
        raise QuantizationError(f"checkpoint format {name!r}: ckptfs dequantizes 'gptq' and 'gptq_v2'")
    return ZERO_OFFSETS[name]


def _weight(stored: Stored, prefix: str, configured: bool) -> QuantizedWeight:
    qweight, qzeros, scales = packed.packed_parts(stored, prefix)
    g_idx = prefix + "g_idx" if prefix + "g_idx" in stored else None
    config = stored.quantization
    groups, outputs = stored.get(scales).shape
    packed_words = stored.get(qzeros).shape[1]
    bits = packed.check_bits(config.get("bits") if configured else packed_words * 32 // max(1, outputs))
    inputs, remainder = divmod(stored.get(qweight).shape[0] * 32, bits)
    if remainder or stored.get(qweight).shape[1] != outputs:
        raise QuantizationError(f"{qweight} of shape {list(stored.get(qweight).shape)} does not pack {bits}-bit "
                                f"values of {outputs} outputs (its scales' width)")
    packed.check_shape(stored, qzeros, (groups, packed.words(0, outputs, bits)[1]))
    group_size = config.get("group_size", -1) if configured else -(-inputs // max(1, groups))
    if type(group_size) is not int or group_size == 0 or group_size < -1:
        raise QuantizationError(f"group_size {group_size!r}")
    group_size = inputs if group_size == -1 else group_size
    index = packed.group_index(stored, g_idx, inputs, group_size, groups)
    offset = _zero_offset(config if configured else {})
    dtype = stored.compute_dtype()
    levels = np.arange(1 << bits, dtype=np.int16)

    def zeros(first: int, last: int) -> np.ndarray:
        w0, w1 = packed.words(first, last, bits)
        words = stored.columns(qzeros, w0, w1)
        if offset and bits in ONE_PER_FIELD:  # v1: each whole word, wrapping at 2^32
            words = (words.view(np.uint32) + np.uint32(ONE_PER_FIELD[bits])).view(np.int32)
        zero = packed.unpack(words, bits, first * bits - w0 * 32, last - first, 1).T.astype(np.int16)
        return (zero + offset) & ((1 << bits) - 1) if offset and bits not in ONE_PER_FIELD else zero

    def values(first: int, last: int) -> np.ndarray:
        q = packed.unpack(stored.columns(qweight, first, last), bits, 0, inputs, 0).T
        return packed.grouped(q, levels, zeros(first, last), stored.columns(scales, first, last).T, index(), dtype)

    order = ", act order" if g_idx is not None and np.any(np.diff(index()) < 0) else ""
    members = (qweight, qzeros, scales) + ((g_idx,) if g_idx else ())
    return QuantizedWeight(prefix + "weight", f"GPTQ {bits}-bit, group {group_size}{order}", (outputs, inputs),
                           dtype, members, values)
