"""bitsandbytes weights as transformers' `save_pretrained` writes a model
loaded with `BitsAndBytesConfig` (`quant_method: bitsandbytes`).

4-bit (nf4, fp4): `X.weight` holds the weight flattened, two 4-bit codes a
byte (the high nibble first), in blocks of `blocksize` codes along the
flattened weight, each block scaled by its `X.weight.absmax`; with double
quantization (`bnb_4bit_use_double_quant`) absmax is itself 8-bit codes of
`X.weight.nested_quant_map`, scaled by `X.weight.nested_absmax` per block
of `nested_blocksize`, plus `nested_offset`. The shape, dtype, block sizes
and offset are JSON in the bytes of `X.weight.quant_state.bitsandbytes__nf4`
(`QuantState.as_dict(packed=True)`). The values are code x absmax in
float32, rounded to the quant state's dtype, as bitsandbytes'
`dequantize_4bit` computes them (its CPU kernels and `_dequantize_4bit_compute`):
the nested absmax is code x nested absmax in float32, plus the offset in
float32 (`dequantize_blockwise`).

8-bit (LLM.int8): `X.weight` int8 and `X.SCB`, each row's absolute maximum;
the values are weight x SCB x (1/127) in float32, rounded to the compute
dtype (`int8_vectorwise_dequant`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ...tree.dtypes import BY_NAME, DType
from .base import QuantizationError, QuantizedWeight, Stored, numpy_dtype

#: what follows `X.weight` in the name of the tensor holding a 4-bit weight's quant state
QUANT_STATE = ".quant_state.bitsandbytes__"
QUANT_TYPES = ("nf4", "fp4")
#: the block sizes bitsandbytes quantizes in (`quantize_4bit`, `dequantize_4bit`)
BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: the dtypes a 4-bit weight's values may be in (`dequantize_4bit`)
VALUE_DTYPES = ("float32", "float16", "bfloat16")
#: the largest quant state ckptfs reads (bitsandbytes writes about 200 bytes)
STATE_BYTES = 4096
#: the fp4 code whose sign bit alone is set: bitsandbytes' kernels give -0.0,
#: though the quant_map it stores (`get_4bit_type`) holds +0.0
FP4_NEGATIVE_ZERO = 8
#: 1/127 as `int8_vectorwise_dequant` multiplies by it, in float32
INT8_RECIPROCAL = np.float32(7.874015718698502e-3)
#: `X.weight_format`: 0, row-major, is the only layout save_pretrained writes
ROW_MAJOR = 0


@dataclass(frozen=True)
class QuantState:
    """The JSON of a 4-bit weight's quant state, checked."""

    quant_type: str
    blocksize: int
    shape: tuple[int, ...]
    #: the dtype of its values (None: the model's compute dtype)
    dtype: DType | None
    #: (nested blocksize, nested offset) with double quantization, else None
    nested: tuple[int, float] | None


def find(stored: Stored) -> tuple[list[QuantizedWeight], list[str]]:
    """The bitsandbytes weights of `stored`, and notes on those that do not fit."""
    if stored.quantization.get("quant_method") not in (None, "bitsandbytes"):
        return [], []
    weights, notes = [], []
    for state_name in [n for n in stored.tensors if QUANT_STATE in n]:
        name = state_name[: state_name.index(QUANT_STATE)]
        try:
            weights.append(_four_bit(stored, name, state_name))
        except QuantizationError as e:
            notes.append(f"{name}: not dequantized: {e}")
    for scb_name in [n for n in stored.tensors if n.endswith(".SCB")]:
        name = scb_name[: -len("SCB")] + "weight"
        weight = stored.get(name)
        if weight is None or weight.dtype.name != "int8":
            continue
        try:
            weights.append(_eight_bit(stored, name, scb_name))
        except QuantizationError as e:
            notes.append(f"{name}: not dequantized: {e}")
    return weights, notes


def quant_state(data: bytes) -> QuantState:
    """A quant state's JSON (bytes from the file, trusted in nothing)."""
    if len(data) > STATE_BYTES:
        raise QuantizationError(f"a quant state of {len(data)} bytes, more than the {STATE_BYTES} it takes")
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise QuantizationError(f"its quant state is not JSON ({str(e)[:80]})") from None
    if not isinstance(state, dict):
        raise QuantizationError("its quant state is not a JSON object")
    quant_type = state.get("quant_type")
    if quant_type not in QUANT_TYPES:
        raise QuantizationError(f"quant_type {_shown(quant_type)}, not nf4 or fp4")
    shape = state.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(_count(n) for n in shape)):
        raise QuantizationError(f"shape {_shown(shape)}: ckptfs dequantizes 2-D weights")
    dtype = state.get("dtype")
    if dtype is not None and dtype not in VALUE_DTYPES:
        raise QuantizationError(f"dtype {_shown(dtype)}, not one of {', '.join(VALUE_DTYPES)}")
    nested = None
    if "nested_blocksize" in state or "nested_offset" in state:
        offset = state.get("nested_offset")
        if state.get("nested_dtype", "float32") != "float32":
            raise QuantizationError(f"nested_dtype {_shown(state.get('nested_dtype'))}, not float32")
        if type(offset) not in (int, float) or not math.isfinite(offset):
            raise QuantizationError(f"nested_offset {_shown(offset)}, not a number")
        nested = (_block_size(state.get("nested_blocksize"), "nested_blocksize"), float(offset))
    return QuantState(quant_type, _block_size(state.get("blocksize"), "blocksize"), tuple(shape),
                      dtype and BY_NAME[dtype], nested)


def _count(value) -> bool:
    return type(value) is int and 0 <= value < 1 << 48


def _block_size(value, key: str) -> int:
    if type(value) is not int or value not in BLOCK_SIZES:
        raise QuantizationError(f"{key} {_shown(value)}, not one of {', '.join(map(str, BLOCK_SIZES))}")
    return value


def _shown(value) -> str:
    return repr(value)[:40]


def _four_bit(stored: Stored, name: str, state_name: str) -> QuantizedWeight:
    state_tensor = stored.get(state_name)
    if state_tensor.dtype.name != "uint8" or state_tensor.numel > STATE_BYTES:
        raise QuantizationError(f"its quant state is {state_tensor.dtype.name} of {state_tensor.numel}, "
                                f"not JSON bytes of at most {STATE_BYTES}")
    state = quant_state(stored.whole(state_name).tobytes())
    if state_name[len(name) + len(QUANT_STATE):] != state.quant_type:
        raise QuantizationError(f"{state_name} holds a quant state of {state.quant_type}")
    rows, cols = state.shape
    count = rows * cols
    blocks = -(-count // state.blocksize)
    weight = _tensor(stored, name, "packed weight")
    if weight.dtype.nbytes(weight.numel) != -(-count // 2) or not weight.shape:
        raise QuantizationError(f"{weight.dtype.name}{list(weight.shape)} does not hold the {count} "
                                f"4-bit codes of a weight of {list(state.shape)}")
    absmax = _scales(stored, name, state, blocks)
    code = _floats(stored, name + ".quant_map", (16,)).copy()
    if state.quant_type == "fp4":
        code[FP4_NEGATIVE_ZERO] = -0.0
    dtype = state.dtype or stored.compute_dtype()
    members = tuple(n for n in (name, name + ".absmax", name + ".quant_map", name + ".nested_absmax",
                                name + ".nested_quant_map", state_name) if n in stored)
    scheme = f"bitsandbytes {state.quant_type}, blocks of {state.blocksize}" + (
        ", double quantized" if state.nested else "")
    return QuantizedWeight(name, scheme, state.shape, dtype, members,
                           lambda first, last: _four_bit_rows(stored, name, state, code, absmax, first, last, dtype))


def _tensor(stored: Stored, name: str, what: str):
    tensor = stored.get(name)
    if tensor is None:
        raise QuantizationError(f"no {name} ({what})")
    return tensor


def _floats(stored: Stored, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A small float tensor of the quant state (a code book, nested absmax), checked for its shape."""
    tensor = _tensor(stored, name, "part of its quant state")
    if tensor.dtype.name not in VALUE_DTYPES or tensor.shape != shape:
        raise QuantizationError(f"{name} is {tensor.dtype.name}{list(tensor.shape)}, not float{list(shape)}")
    return stored.whole(name).astype(np.float32)


def _scales(stored: Stored, name: str, state: QuantState, blocks: int):
    """How to make the absmax of blocks [b0, b1): read from `X.weight.absmax`
    as stored, or with double quantization from its codes."""
    absmax = _tensor(stored, name + ".absmax", "the scale of each block")
    if state.nested is None:
        if absmax.dtype.name not in VALUE_DTYPES or absmax.shape != (blocks,):
            raise QuantizationError(f"absmax is {absmax.dtype.name}{list(absmax.shape)}, not a float for each "
                                    f"of its {blocks} blocks")
        return lambda b0, b1: stored.rows(name + ".absmax", b0, b1).astype(np.float32)
    nested_blocksize, offset = state.nested
    if absmax.dtype.name != "uint8" or absmax.shape != (blocks,):
        raise QuantizationError(f"absmax is {absmax.dtype.name}{list(absmax.shape)}, not a code for each of "
                                f"its {blocks} blocks")
    codes = _floats(stored, name + ".nested_quant_map", (256,))
    nested = _floats(stored, name + ".nested_absmax", (-(-blocks // nested_blocksize),))

    def made(b0: int, b1: int) -> np.ndarray:
        scale = nested[np.arange(b0, b1) // nested_blocksize]
        return codes[stored.rows(name + ".absmax", b0, b1)] * scale + np.float32(offset)

    return made


def _four_bit_rows(stored: Stored, name: str, state: QuantState, code: np.ndarray, absmax, first: int,
                   last: int, dtype: DType) -> np.ndarray:
    cols = state.shape[1]
    e0, e1 = first * cols, last * cols  # the codes of rows [first, last), along the flattened weight
    packed = _packed_bytes(stored, name, e0 // 2, -(-e1 // 2))
    codes = np.empty(packed.size * 2, np.uint8)
    codes[0::2], codes[1::2] = packed >> 4, packed & 15
    b0, b1 = e0 // state.blocksize, -(-e1 // state.blocksize)
    scale = np.repeat(absmax(b0, b1), state.blocksize)[e0 - b0 * state.blocksize: e1 - b0 * state.blocksize]
    values = code[codes[e0 % 2: e0 % 2 + e1 - e0]] * scale
    return values.astype(numpy_dtype(dtype)).reshape(last - first, cols)


def _packed_bytes(stored: Stored, name: str, start: int, end: int) -> np.ndarray:
    """Bytes [start, end) of a packed weight, stored as uint8 or (`bnb_4bit_quant_storage`) wider."""
    tensor = stored.get(name)
    if start >= end:
        return np.empty(0, np.uint8)
    row = tensor.dtype.nbytes(tensor.numel) // tensor.shape[0]
    data = stored.rows(name, start // row, -(-end // row)).view(np.uint8).reshape(-1)
    return data[start % row: start % row + end - start]


def _eight_bit(stored: Stored, name: str, scb_name: str) -> QuantizedWeight:
    weight, scb = stored.get(name), stored.get(scb_name)
    if len(weight.shape) != 2:
        raise QuantizationError(f"an int8 weight of shape {list(weight.shape)}: ckptfs dequantizes 2-D weights")
    if scb.dtype.name != "float32" or scb.shape != weight.shape[:1]:
        raise QuantizationError(f"SCB is {scb.dtype.name}{list(scb.shape)}, not float32 for each of its "
                                f"{weight.shape[0]} rows")
    format_name = name + "_format"
    if format_name in stored:
        layout = stored.get(format_name)
        if layout.numel != 1 or layout.dtype.name != "uint8" or int(stored.whole(format_name).reshape(-1)[0]) != ROW_MAJOR:
            raise QuantizationError("its weight_format is not 0, the row-major layout save_pretrained writes")
    dtype = stored.compute_dtype()
    members = (name, scb_name) + ((format_name,) if format_name in stored else ())

    def values(first: int, last: int) -> np.ndarray:
        scaled = stored.rows(name, first, last).astype(np.float32) * stored.rows(scb_name, first, last)[:, None]
        return (scaled * INT8_RECIPROCAL).astype(numpy_dtype(dtype))

    return QuantizedWeight(name, "bitsandbytes int8, a scale per row", weight.shape, dtype, members, values)
