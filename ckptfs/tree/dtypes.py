"""The dtype table: one row per element type any supported format stores.

Each row says how the type is named by its writers and how its bytes are
served as NPY. Types with no NumPy layout (packed below one byte per value, or
unknown to NumPy and ml_dtypes) are served as raw bytes, `|u1`, with the true
type in the `user.ckptfs.dtype` attribute. docs/dtypes.md shows this table;
a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # canonical name: NumPy / ml_dtypes spelling where one exists
    bits: int  # bits per element
    npy_descr: str | None  # NPY header descr; None: served as raw bytes (|u1)
    safetensors: str | None = None  # the safetensors header code
    torch: str | None = None  # torch's name, for later formats

    def nbytes(self, count: int) -> int | None:
        """Bytes for `count` elements; None if they do not fill whole bytes."""
        total_bits = count * self.bits
        return None if total_bits % 8 else total_bits // 8


DTYPES: tuple[DType, ...] = (
    DType("bool", 8, "|b1", "BOOL", "bool"),
    DType("uint8", 8, "|u1", "U8", "uint8"),
    DType("int8", 8, "|i1", "I8", "int8"),
    DType("int16", 16, "<i2", "I16", "int16"),
    DType("uint16", 16, "<u2", "U16", "uint16"),
    DType("int32", 32, "<i4", "I32", "int32"),
    DType("uint32", 32, "<u4", "U32", "uint32"),
    DType("int64", 64, "<i8", "I64", "int64"),
    DType("uint64", 64, "<u8", "U64", "uint64"),
    DType("float16", 16, "<f2", "F16", "float16"),
    DType("bfloat16", 16, "bfloat16", "BF16", "bfloat16"),
    DType("float32", 32, "<f4", "F32", "float32"),
    DType("float64", 64, "<f8", "F64", "float64"),
    DType("complex64", 64, "<c8", "C64", "complex64"),
    DType("complex128", 128, "<c16", None, "complex128"),
    DType("complex32", 32, None, None, "complex32"),
    DType("float8_e4m3fn", 8, "float8_e4m3fn", "F8_E4M3", "float8_e4m3fn"),
    DType("float8_e5m2", 8, "float8_e5m2", "F8_E5M2", "float8_e5m2"),
    DType("float8_e4m3fnuz", 8, "float8_e4m3fnuz", "F8_E4M3FNUZ", "float8_e4m3fnuz"),
    DType("float8_e5m2fnuz", 8, "float8_e5m2fnuz", "F8_E5M2FNUZ", "float8_e5m2fnuz"),
    DType("float8_e8m0fnu", 8, "float8_e8m0fnu", "F8_E8M0", "float8_e8m0fnu"),
    DType("float4_e2m1fn", 4, None, "F4", None),
    DType("float4_e2m1fn_x2", 8, None, None, "float4_e2m1fn_x2"),
    DType("float6_e2m3fn", 6, None, "F6_E2M3", None),
    DType("float6_e3m2fn", 6, None, "F6_E3M2", None),
)

BY_SAFETENSORS = {d.safetensors: d for d in DTYPES if d.safetensors}
BY_NAME = {d.name: d for d in DTYPES}
BY_TORCH = {d.torch: d for d in DTYPES if d.torch}
