"""CRC-32C (Castagnoli), the checksum TensorFlow's tensor bundles keep for
every block of their index and every tensor's bytes, and its "mask"
(leveldb's, so that a CRC of bytes holding CRCs is not trivial).

Python's zlib has CRC-32 only. Where the `google-crc32c` package is
installed (the `tensorflow` extra; Orbax and the Google Cloud clients
bring it too) its C code does the work at gigabytes a second; without it,
NumPy computes the CRC of many stretches of a buffer side by side (one
table step a byte for every stretch at once) and joins them with the
matrices that carry a CRC over a run of zero bytes: 60 to 200 MB/s on a
busy 2-core machine, where a loop over the bytes in Python makes 2.5 MB/s.
"""

from __future__ import annotations

import functools

import numpy as np

try:  # optional, the tensorflow extra: pip install '.[tensorflow]'
    import google_crc32c as _fast
except ImportError:  # pragma: no cover - taken where the package is missing
    _fast = None

POLY = 0x82F63B78  # reflected
_MASK_DELTA = 0xA282EAD8
#: below this many bytes a buffer is run through the table in Python
_SMALL = 512
#: the most stretches computed side by side
_LANES = 1 << 14


def _table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(POLY), table >> 1).astype(np.uint32)
    return table


TABLE = _table()
_TABLE_LIST = TABLE.tolist()


def value(data: bytes | memoryview, crc: int = 0) -> int:
    """The CRC-32C of `data`, continuing from `crc` (the CRC of the bytes before it)."""
    if _fast is not None:
        return _fast.extend(crc, bytes(data)) if isinstance(data, memoryview) else _fast.extend(crc, data)
    return _numpy_value(data, crc)


def _numpy_value(data: bytes | memoryview, crc: int) -> int:
    return _register(np.frombuffer(data, np.uint8), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _register(data: np.ndarray, register: int) -> int:
    """The CRC register after `data`, from `register` (no inversions)."""
    while data.size >= _SMALL:
        lanes = min(_LANES, 1 << ((data.size // 64).bit_length() - 1))
        step = data.size // lanes
        main = lanes * step
        register = _shift(main)(register) ^ _lanes(data[:main].reshape(lanes, step))
        data = data[main:]
    table = _TABLE_LIST
    for byte in data.tolist():
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _lanes(rows: np.ndarray) -> int:
    """The register of the rows laid end to end, from 0: each row's own,
    from 0, side by side, then joined pairwise (the first of a pair carried
    over the second's length of zeros)."""
    columns = np.ascontiguousarray(rows.T)
    registers = np.zeros(rows.shape[0], np.uint32)
    for column in columns:
        registers = TABLE[(registers ^ column) & 0xFF] ^ (registers >> 8)
    length = rows.shape[1]
    while registers.size > 1:
        registers = _apply(_shift_tables(length), registers[0::2]) ^ registers[1::2]
        length *= 2
    return int(registers[0])


def _apply(tables: np.ndarray, registers: np.ndarray) -> np.ndarray:
    out = tables[0][registers & 0xFF]
    for k in range(1, 4):
        out ^= tables[k][(registers >> (8 * k)) & 0xFF]
    return out


@functools.lru_cache(maxsize=64)
def _shift_columns(length: int) -> tuple[int, ...]:
    """What `length` zero bytes make of each of the 32 bits of a register."""
    if length == 1:
        return tuple(_step(1 << bit) for bit in range(32))
    half = _shift_columns(length // 2)
    doubled = tuple(_through(half, c) for c in half)
    return doubled if length % 2 == 0 else tuple(_step(c) for c in doubled)


def _step(register: int) -> int:
    return _TABLE_LIST[register & 0xFF] ^ (register >> 8)


def _through(columns: tuple[int, ...], register: int) -> int:
    out = 0
    for bit in range(32):
        if register >> bit & 1:
            out ^= columns[bit]
    return out


@functools.lru_cache(maxsize=64)
def _shift_tables(length: int) -> np.ndarray:
    """`_shift_columns` as four tables of 256, one for each byte of a register."""
    columns = np.array(_shift_columns(length), np.uint32).reshape(4, 8)
    tables = np.zeros((4, 256), np.uint32)
    for bit in range(8):
        has = (np.arange(256) >> bit & 1).astype(bool)
        tables[:, has] ^= columns[:, bit : bit + 1]
    return tables


def _shift(length: int):
    columns = _shift_columns(length)
    return lambda register: _through(columns, register)


def mask(crc: int) -> int:
    """leveldb's mask of a CRC, as a bundle stores it."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
