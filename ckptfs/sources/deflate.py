"""A raw deflate stream (a deflated zip record) as a random-access source.

Deflate cannot seek, but zlib's inflater can be copied: while a read
inflates forward, the inflater's state is kept every SPACING bytes of
output (a copy holds its 32 KiB window), so a later read starts from the
nearest kept state instead of the start. The state where the last read
stopped is kept too, so sequential reads inflate each byte once. Memory: a
state per SPACING of output, about 1% of it.
"""

from __future__ import annotations

import bisect
import threading
import zlib

from ..errors import FormatError
from ..humanize import plural
from .base import Source


class DeflateSource(Source):
    """The `size` inflated bytes of `compressed`, a raw deflate stream."""

    slow = True
    SPACING = 4 << 20
    IN_STEP = 64 << 10
    OUT_STEP = 1 << 20

    def __init__(self, compressed: Source, size: int, name: str):
        self.compressed, self.size, self.name = compressed, size, name
        self._lock = threading.Lock()
        # kept states, by output offset: (output offset, next input offset, inflater, input read but not yet used)
        self._points: list[tuple[int, int, object, bytes]] = [(0, 0, zlib.decompressobj(-zlib.MAX_WBITS), b"")]
        self._cursor: tuple[int, int, object, bytes] | None = None

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.compressed.path

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        with self._lock:
            return self._read(offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        index = bisect.bisect_right([p[0] for p in self._points], offset) - 1
        out_pos, in_pos, inflater, pending = self._points[index]
        if self._cursor is not None and out_pos <= self._cursor[0] <= offset:
            out_pos, in_pos, inflater, pending = self._cursor  # on from where the last read stopped
        else:
            inflater = inflater.copy()
        self._cursor = None
        end = offset + length
        out = bytearray()
        while out_pos < end:
            if not pending:
                pending = self.compressed.pread(in_pos, self.IN_STEP)
                in_pos += len(pending)
                if not pending:
                    raise FormatError(self.name, f"deflate stream ends after {out_pos} of {plural(self.size, 'byte')}")
            # never past `end`: the state then stops exactly where the next sequential read starts
            want = min(self.OUT_STEP, end - out_pos) if out_pos >= offset else min(self.OUT_STEP, offset - out_pos)
            try:
                block = inflater.decompress(pending, want)
            except zlib.error as e:
                raise FormatError(self.name, f"corrupt deflate stream ({e})") from None
            pending = inflater.unconsumed_tail
            if not block and inflater.eof:
                raise FormatError(self.name, f"deflate stream ends after {out_pos} of {plural(self.size, 'byte')}")
            if out_pos >= offset:
                out += block
            out_pos += len(block)
            if out_pos >= self._points[-1][0] + self.SPACING:
                self._points.append((out_pos, in_pos, inflater.copy(), pending))
        self._cursor = (out_pos, in_pos, inflater, pending)
        return bytes(out)
