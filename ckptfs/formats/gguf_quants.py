"""Dequantization of GGML's block formats to float32, in NumPy, a whole
array of blocks at a time (no loop per block): Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0 and the K-quants Q2_K to Q6_K, the types llama.cpp's quantizations
produce most.
tests/test_gguf.py checks each against `gguf.quants.dequantize`.

`Dequantized` is a piece of a tree file: a read of bytes [a, b) of the
float32 output dequantizes only the blocks that hold them.
"""

from __future__ import annotations

import numpy as np

from ..sources.base import Source, scatter


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)


def _q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * b[:, 2:].view(np.int8).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Low nibbles are elements 0-15 of a 32-element block, high ones 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * (_nibbles(b[:, 2:]).astype(np.float32) - 8)


def _q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * _nibbles(b[:, 4:]).astype(np.float32) + _f16(b, 2)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """The high bit of each of 32 elements, from a little-endian uint32."""
    bits = qh.copy().view("<u4").astype(np.uint32)
    return ((bits >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4


def _q5_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6])
    return _f16(b, 0) * (q.astype(np.float32) - 16)


def _q5_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return _f16(b, 0) * q.astype(np.float32) + _f16(b, 2)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins packed in 12 bytes (Q4_K, Q5_K)."""
    s = scales.astype(np.uint8)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(b: np.ndarray) -> np.ndarray:
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales(b[:, 4:16])
    qs = b[:, 16:144].reshape(-1, 4, 32)  # four chunks of 64 elements: low nibbles, then high ones
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1, 256)


def _q5_k(b: np.ndarray) -> np.ndarray:
    """As Q4_K, with a fifth bit per element: bit j of qh[l] for element l of sub-block j."""
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:176].reshape(-1, 4, 32)
    low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (low | (high << 4)).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(-1, 256)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """2-bit values of 128-element halves: byte l of a half's 32 holds
    elements l, 32 + l, 64 + l and 96 + l, lowest bits first."""
    halves = qs.reshape(-1, 2, 1, 32)
    return ((halves >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3).reshape(-1, 256)


def _q2_k(b: np.ndarray) -> np.ndarray:
    """16 sub-blocks of 16: a 4-bit scale and a 4-bit min each, times d and dmin."""
    scales, d, dmin = b[:, 0:16], _f16(b, 80), _f16(b, 82)
    dl = d * (scales & 0x0F).astype(np.float32)
    ml = dmin * (scales >> 4).astype(np.float32)
    q = _crumbs(b[:, 16:80]).astype(np.float32).reshape(-1, 16, 16)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, 256)


def _q3_k(b: np.ndarray) -> np.ndarray:
    """2 bits in qs, a third in hmask (bit n of hmask[l] for element 32n + l;
    a clear bit takes 4 off), 16 signed 6-bit scales packed in 12 bytes."""
    hmask, scales, d = b[:, 0:32], b[:, 96:108], _f16(b, 108)
    low = np.concatenate([scales[:, 0:8] & 0x0F, scales[:, 0:8] >> 4], axis=1)
    high = (scales[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3
    sc = (low | (high.reshape(-1, 16) << 4)).astype(np.int8) - np.int8(32)
    hbit = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _crumbs(b[:, 32:96]).astype(np.int8) - 4 * (1 - hbit.reshape(-1, 256).astype(np.int8))
    dl = d * sc.astype(np.float32)
    return (dl[:, :, None] * q.astype(np.float32).reshape(-1, 16, 16)).reshape(-1, 256)


def _q6_k(b: np.ndarray) -> np.ndarray:
    ql, qh = b[:, 0:128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 2, 8)
    d = _f16(b, 208)
    low = np.stack([ql[:, :, 0:32] & 0x0F, ql[:, :, 32:64] & 0x0F, ql[:, :, 0:32] >> 4, ql[:, :, 32:64] >> 4], axis=2)
    high = np.stack([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=2)
    q = (low | (high << 4)).astype(np.float32) - 32  # (blocks, 2 halves, 4 quarters, 32)
    scale = scales.reshape(-1, 2, 4, 2)  # sixteen scales: one per 16 elements
    q = q.reshape(-1, 2, 4, 2, 16) * scale[:, :, :, :, None]
    return d * q.reshape(-1, 256)


#: ggml type name -> (elements per block, bytes per block, dequantize: (blocks, bytes) uint8 -> (blocks, elements))
DEQUANTIZE = {
    "Q8_0": (32, 34, _q8_0), "Q4_0": (32, 18, _q4_0), "Q4_1": (32, 20, _q4_1), "Q5_0": (32, 22, _q5_0),
    "Q5_1": (32, 24, _q5_1), "Q2_K": (256, 84, _q2_k), "Q3_K": (256, 110, _q3_k), "Q4_K": (256, 144, _q4_k),
    "Q5_K": (256, 176, _q5_k), "Q6_K": (256, 210, _q6_k),
}


class Dequantized:
    """A quantized tensor's float32 values, made on read from its blocks."""

    def __init__(self, source: Source, start: int, kind: str, count: int):
        self.source, self.start, self.count = source, start, count
        self.block, self.block_bytes, self._dequantize = DEQUANTIZE[kind]
        self.length = count * 4

    def read(self, offset: int, length: int) -> bytes:
        first, last = offset // 4, min(self.count, -(-(offset + length) // 4))
        if first >= last:
            return b""
        b0, b1 = first // self.block, -(-last // self.block)
        raw = self.source.read_exact(self.start + b0 * self.block_bytes, (b1 - b0) * self.block_bytes)
        blocks = np.frombuffer(raw, np.uint8).reshape(-1, self.block_bytes)
        with np.errstate(all="ignore"):  # a scale of inf or NaN gives what ggml gives: inf or NaN
            values = self._dequantize(blocks).astype(np.float32).reshape(-1)
        data = values.tobytes()
        skip = offset - b0 * self.block * 4
        return data[skip: skip + length]

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        scatter(self.read(offset, sum(map(len, buffers))), buffers)
