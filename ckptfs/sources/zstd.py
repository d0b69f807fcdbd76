"""A zstd stream as a random-access source, in bounded memory.

torch.distributed.checkpoint's `stream.zstd` transform compresses each
chunk's torch.save zip into one zstd stream. zstd cannot seek, so reads
decompress forward from where the last one stopped, keeping the most recent
WINDOW bytes for readers that go back a little (the kernel's read-ahead
sends requests slightly out of order); a read further back starts the stream
over. Sequential reads cost one pass; nothing is decompressed to disk.
"""

from __future__ import annotations

import threading

try:
    from compression import zstd  # Python 3.14 and later
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd

from ..errors import FormatError
from .base import Source

MAGIC = b"\x28\xb5\x2f\xfd"


class ZstdSource(Source):
    """The decompressed bytes of `compressed`, one or more zstd frames."""

    slow = True
    WINDOW = 8 << 20
    IN_STEP = 1 << 20
    OUT_STEP = 4 << 20  # a bound per call, so a small stream cannot inflate at once

    def __init__(self, compressed: Source, name: str):
        self.compressed = compressed
        self.name = name
        self._lock = threading.Lock()
        self._size: int | None = None
        self._restart()

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.compressed.path

    @property
    def size(self) -> int:  # type: ignore[override]
        """Known only by decompressing to the end once (frames may not record it)."""
        if self._size is None:
            with self._lock:
                while not self._finished:
                    self._advance(self._out_end)
                self._size = self._out_end
        return self._size

    def locate(self, offset: int) -> tuple[str, int]:
        return self.compressed.locate(0)

    @property
    def origin(self):
        return self.compressed.origin

    def pread(self, offset: int, length: int) -> bytes:
        with self._lock:
            if offset < self._out_end - len(self._window):
                self._restart()
            end = offset + length
            while self._out_end < end and not self._finished:
                self._advance(offset)
            start = self._out_end - len(self._window)
            return bytes(self._window[max(0, offset - start) : max(0, min(end, self._out_end) - start)])

    def _restart(self) -> None:
        self._decompressor = zstd.ZstdDecompressor()
        self._in_pos = 0
        self._out_end = 0
        self._window = bytearray()
        self._finished = False

    def _advance(self, keep_from: int) -> None:
        """Decompress the next stretch; keep the bytes from `keep_from` or the
        last WINDOW bytes, whichever is more."""
        d = self._decompressor
        data = b""
        if d.needs_input:
            if self._in_pos >= self.compressed.size:
                raise FormatError(self.name, "zstd stream ends early (truncated?)")
            data = self.compressed.read_exact(self._in_pos, min(self.IN_STEP, self.compressed.size - self._in_pos))
            self._in_pos += len(data)
        try:
            out = d.decompress(data, self.OUT_STEP)
        except zstd.ZstdError as e:
            raise FormatError(self.name, f"not a valid zstd stream ({e})") from None
        if not (data or out or d.eof):
            raise FormatError(self.name, "zstd stream makes no progress")
        self._window += out
        self._out_end += len(out)
        if d.eof:
            rest = d.unused_data
            if not rest and self._in_pos >= self.compressed.size:
                self._finished = True
            else:  # another frame follows
                self._decompressor = zstd.ZstdDecompressor()
                self._in_pos -= len(rest)
        drop = len(self._window) - max(self.WINDOW, self._out_end - keep_from)
        if drop > 0:
            del self._window[:drop]
