"""CRC-32 (zlib's) of bytes seen in pieces: the CRC of two pieces end to end
from theirs (`combine`, zlib's crc32_combine), the CRC of a suffix from the
whole's and the prefix's (`suffix`), and `RunningCrc`, the CRC of a file
kept as it is written, so that a writer of a zip record need not read the
file again for it.

Python's zlib has no crc32_combine; these are zlib 1.2.12's multmodp and
x2nmodp over GF(2), a few hundred steps whatever the lengths.
"""

from __future__ import annotations

import zlib

POLY = 0xEDB88320  # reflected
def _multmodp(a: int, b: int) -> int:
    """a times b modulo the CRC polynomial (both reflected)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial, k = 0..31 (reflected: bit 31 is x^0)."""
    powers = [1 << 30]
    while len(powers) < 32:
        powers.append(_multmodp(powers[-1], powers[-1]))
    return powers


_X2N = _powers()


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial."""
    p = 1 << 31
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def _shift(crc: int, length: int) -> int:
    return _multmodp(_x2nmodp(length, 3), crc)


def combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B, from A's (`crc1`), B's (`crc2`) and B's length."""
    return _shift(crc1, length2) ^ crc2


def suffix(whole: int, head: int, length: int) -> int:
    """The CRC-32 of B, from that of A + B (`whole`), A's (`head`) and B's length."""
    return whole ^ _shift(head, length)


class RunningCrc:
    """The CRC-32 of a file's bytes from offset 0 on, taken from the writes
    that made them: `crc` is that of the first `end` bytes. A write that
    starts past `end` is kept aside (its own CRC, up to `MAX_AHEAD` of
    them) until the bytes before it are written; one that rewrites bytes
    already taken, or a truncation below `end`, makes it unknown for good
    (`end` None) but for a truncation to 0, which starts it again."""

    MAX_AHEAD = 64

    def __init__(self, known: bool = True):
        self.crc, self.end = 0, (0 if known else None)
        self._ahead: dict[int, tuple[int, int]] = {}  # offset: (length, crc) of writes past `end`

    def wrote(self, offset: int, data) -> None:
        if self.end is None or not len(data):
            return
        stop = offset + len(data)
        if offset < self.end or any(offset < at + length and at < stop for at, (length, _) in self._ahead.items()):
            self._lose()
        elif offset > self.end:
            self._ahead[offset] = (len(data), zlib.crc32(data))
            if len(self._ahead) > self.MAX_AHEAD:
                self._lose()
        else:
            self.crc, self.end = zlib.crc32(data, self.crc), stop
            while self.end in self._ahead:
                length, crc = self._ahead.pop(self.end)
                self.crc, self.end = combine(self.crc, crc, length), self.end + length

    def truncated(self, size: int) -> None:
        if size == 0:
            self.crc, self.end, self._ahead = 0, 0, {}
        elif self.end is not None and size < self.end:
            self._lose()
        else:  # what was written past the new end is gone
            self._ahead = {at: piece for at, piece in self._ahead.items() if at + piece[0] <= size}

    def _lose(self) -> None:
        self.crc, self.end, self._ahead = 0, None, {}

    def of_range(self, start: int, stop: int, size: int, read) -> int | None:
        """The CRC-32 of bytes [start, stop) of the file, now `size` bytes
        long, if the running CRC covers all of it to the end (`read(offset,
        length)` gives the `start` bytes before them); else None."""
        if self.end is None or self.end != size or stop != size or not 0 <= start <= stop:
            return None
        return suffix(self.crc, zlib.crc32(read(0, start)) if start else 0, stop - start)
