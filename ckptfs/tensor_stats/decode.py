"""Stored bits into numbers, for every numeric dtype ckptfs serves, NumPy
alone: bfloat16 by shifting its bits into a float32's upper half, an 8-bit
float by a table of its 256 values built from its bit layout (no
ml_dtypes needed); complex numbers as their magnitudes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

#: the 8-bit floats: (exponent bits, mantissa bits, bias, which codes are not finite)
#: "ieee": all-ones exponent is inf (mantissa 0) or NaN; "fn": only all-ones is NaN, no inf;
#: "fnuz": only 0x80 (negative zero's code) is NaN, no inf; "e8m0": 2**(e-127), 0xff NaN
FLOAT8 = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
    "float8_e8m0fnu": (8, 0, 127, "e8m0"),
}


def float8_table(name: str) -> np.ndarray:
    """The 256 float32 values of an 8-bit float type, indexed by its byte."""
    exponent_bits, mantissa_bits, bias, kind = FLOAT8[name]
    values = np.empty(256, np.float32)
    for code in range(256):
        if kind == "e8m0":
            values[code] = math.nan if code == 0xFF else math.ldexp(1.0, code - bias)
            continue
        sign = -1.0 if code >> 7 else 1.0
        exponent = (code >> mantissa_bits) & ((1 << exponent_bits) - 1)
        mantissa = code & ((1 << mantissa_bits) - 1)
        top = exponent == (1 << exponent_bits) - 1
        if (kind == "ieee" and top and mantissa) or (kind == "fn" and code & 0x7F == 0x7F) or (
                kind == "fnuz" and code == 0x80):
            values[code] = math.nan
        elif kind == "ieee" and top:
            values[code] = sign * math.inf
        elif exponent == 0:  # subnormal (and zero)
            values[code] = sign * math.ldexp(mantissa, 1 - bias - mantissa_bits)
        else:
            values[code] = sign * math.ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits)
    return values


@dataclass(frozen=True)
class Decoder:
    """How a tensor's stored bytes become numbers: the stored element's
    NumPy type, and what turns an array of them into values."""

    stored: np.dtype
    values: Callable[[np.ndarray], np.ndarray]


def _bfloat16(bits: np.ndarray) -> np.ndarray:
    return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)  # bfloat16 is float32's upper half


def decoder(descr: str) -> Decoder | None:
    """The decoder of an NPY descr, or None where its elements are not
    numbers (raw bytes, strings, records)."""
    if descr == "bfloat16":
        return Decoder(np.dtype("<u2"), _bfloat16)
    if descr in FLOAT8:
        table = float8_table(descr)
        return Decoder(np.dtype("u1"), table.__getitem__)
    try:
        dtype = np.dtype(descr)
    except TypeError:
        return None
    if dtype.kind == "b":
        return Decoder(dtype, lambda a: a.view(np.uint8))
    if dtype.kind in "iuf":
        return Decoder(dtype, lambda a: a)
    if dtype.kind == "c":  # complex numbers have no order: their magnitudes are measured
        return Decoder(dtype, np.abs)
    return None
