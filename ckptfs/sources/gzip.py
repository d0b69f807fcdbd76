"""The decompressed stream of a gzip file, with random access through a seek
index (rapidgzip's), every byte served checked.

A gzip stream's own CRC covers the whole stream, so it can only be checked
by inflating it whole, front to back: `Inflated` does that once, at the
first mount, and on its way takes a CRC-32 of each `SPAN` bytes of the
inflated stream (`SpanSums`). A later read inflates whole spans from the
nearest seek point and serves a span only if its CRC is the one taken then:
a file damaged after it was indexed (its time put back) answers EIO, never
other bytes.

rapidgzip decompresses with threads, and threads do not survive the daemon's
fork: every reader is closed before a fork, and the daemon opens its own from
the in-memory index on its first read.
"""

from __future__ import annotations

import atexit
import io
import os
import sys
import threading
import zlib
from array import array
from collections import OrderedDict

from ..errors import FormatError
from ..humanize import plural
from .base import FileSource, SeekableReader, Source
from .gzip_reads import ReadLog

#: bytes of the inflated stream checked together (the last span is shorter)
SPAN = 1 << 20
#: verified spans a source keeps for the next reads (a sequential reader
#: reads each span in several requests)
KEPT_SPANS = 4


class _FileObject(SeekableReader):
    """What rapidgzip takes for a file object: it also asks for `write` and `close`."""

    def write(self, data: bytes) -> int:
        raise io.UnsupportedOperation("a checkpoint's gzip stream is read-only")

    def close(self) -> None:
        """The source stays open: the tree's other files read it too."""


def open_gzip(compressed: Source):
    """A rapidgzip reader of the gzip file `compressed`, decompressing on
    every core: a local file by its path, anything else (a remote object)
    through a file object over the source."""
    import rapidgzip  # imported only for gzip sources: it is slow to import

    target = compressed.path if isinstance(compressed, FileSource) else _FileObject(compressed)
    return rapidgzip.open(target, parallelization=os.cpu_count() or 1)


class SpanSums:
    """The CRC-32 of each `SPAN` bytes of an inflated stream, in order."""

    def __init__(self, sums: array | None = None):
        self.sums = array("I") if sums is None else sums
        self._crc = self._filled = 0

    def add(self, data: bytes) -> None:
        """Take in the next bytes of the stream."""
        view = memoryview(data)
        while view:
            take = min(len(view), SPAN - self._filled)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == SPAN:
                self.sums.append(self._crc)
                self._crc = self._filled = 0

    def finish(self) -> SpanSums:
        """The stream ended: its last, shorter span counts too."""
        if self._filled:
            self.sums.append(self._crc)
            self._crc = self._filled = 0
        return self

    def to_bytes(self) -> bytes:
        sums = array("I", self.sums)
        if sys.byteorder != "little":
            sums.byteswap()
        return sums.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, size: int) -> SpanSums:
        """The sums kept for a stream of `size` bytes; ValueError when they
        cannot be (a cache file cut short or of another stream)."""
        sums = array("I")
        sums.frombytes(data)
        if sys.byteorder != "little":
            sums.byteswap()
        if len(sums) != -(-size // SPAN):
            raise ValueError(f"{plural(len(sums), 'span checksum')} for a stream of {plural(size, 'byte')}")
        return cls(sums)


class Inflated:
    """The inflated stream read once, front to back, as a file object for
    `tarfile`: a seek forward inflates what it skips, a seek back stays
    within the last `KEEP` bytes. rapidgzip is never asked to seek, so it
    checks the stream's CRC and length as it ends (a seek would stop it);
    every byte also passes through `sums`. `read` takes at most `most`
    bytes at once: tarfile reads member data only by seeking over it, so a
    larger read is an extended header claiming gigabytes."""

    KEEP = 1 << 16
    STEP = 4 << 20

    def __init__(self, reader, sums: SpanSums, most: int):
        self._reader, self.sums, self._most = reader, sums, most
        self._pos = self._end = 0  # where this file object is; how far the stream was inflated
        self._kept = bytearray()  # the last bytes inflated (at least KEEP of them), ending at _end
        self._buffer = memoryview(bytearray(self.STEP))  # inflated into, over and over

    def _inflate(self, n: int) -> memoryview:
        """The next `n` (at most STEP) bytes of the stream, fewer only where
        it ends; valid until the next call."""
        got = 0
        while got < n:
            more = self._reader.readinto(self._buffer[got:n])
            if not more:
                break
            got += more
        data = self._buffer[:got]
        self.sums.add(data)
        self._end += got
        self._kept += data[-2 * self.KEEP:]
        if len(self._kept) > 2 * self.KEEP:
            del self._kept[:-self.KEEP]
        return data

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._most:
            raise OSError(f"a read of {n} bytes: no tar header is that long")
        while self._end < self._pos and self._inflate(min(self._pos - self._end, self.STEP)):
            pass  # sent forward: inflate what is skipped
        behind = self._end - self._pos
        if behind > len(self._kept):
            raise OSError(f"cannot go back {plural(behind, 'byte')} in a gzip stream read once")
        out = bytearray(self._kept[len(self._kept) - behind:][:n] if behind > 0 else b"")
        while len(out) < n:
            more = self._inflate(min(n - len(out), self.STEP))
            if not more:
                break
            out += more
        self._pos += len(out)
        return bytes(out)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence not in (os.SEEK_SET, os.SEEK_CUR):
            raise io.UnsupportedOperation("a gzip stream read once has no end to seek from")
        position = offset + (self._pos if whence == os.SEEK_CUR else 0)
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        return self._pos

    def to_end(self) -> int:
        """Inflate the rest of the stream (rapidgzip then checks its CRC and
        length); the stream's size."""
        while len(self._inflate(self.STEP)):
            pass
        self.sums.finish()
        return self._end


class GzipSource(Source):
    """The decompressed stream of a gzip file, read through a seek index, in
    whole spans, each checked against the CRC-32 taken when the stream was
    first inflated and checked whole."""

    slow = True

    def __init__(self, compressed: Source, size: int, index: bytes, sums: SpanSums):
        self.compressed = compressed
        self.path = compressed.path
        self.size = size
        self._index = index
        self._sums = sums.sums
        self._spans: OrderedDict[int, memoryview] = OrderedDict()  # the last spans served, checked
        self._reader = None
        self._lock = threading.Lock()
        self._kept: ReadLog | None = None  # the reads of an earlier mount's tree build, served while this one builds
        self._log: ReadLog | None = None  # the reads of this build, while it lasts
        self._missed = False
        # The reader's threads would not survive the daemon's fork: close it
        # before any fork; whoever reads next opens a new one.
        os.register_at_fork(before=self.close)
        atexit.register(self.close)  # and stop its threads before Python stops

    def record_reads(self, kept: ReadLog | None, fingerprint: int) -> None:
        """While a tree is built: keep every read, and serve those `kept`
        holds (the same build's reads at an earlier mount) without inflating."""
        self._kept, self._log, self._missed = kept, ReadLog(self.size, fingerprint), kept is None

    def recorded(self) -> ReadLog | None:
        """The tree is built: the reads it made, if they are not all those
        kept already (None then); later reads are all inflated and checked."""
        log, missed = self._log, self._missed
        self._kept = self._log = None
        return log if missed and log is not None and not log.full else None

    def pread(self, offset: int, length: int) -> bytes:
        if self._log is None:
            return self._pread(offset, length)
        length = max(0, min(length, self.size - offset))
        data = self._kept.find(offset, length) if self._kept is not None else None
        if data is None:
            data, self._missed = self._pread(offset, length), True
        self._log.add(offset, data)
        return data

    def _pread(self, offset: int, length: int) -> bytes:
        end = min(offset + max(0, length), self.size)
        pieces = []
        while offset < end:
            number = offset // SPAN
            start = number * SPAN
            pieces.append(self._span(number)[offset - start:end - start])
            offset += len(pieces[-1])
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    def _span(self, number: int) -> memoryview:
        with self._lock:
            span = self._spans.get(number)
            if span is None:
                span = self._inflate(number)
                self._spans[number] = span
                if len(self._spans) > KEPT_SPANS:
                    self._spans.popitem(last=False)
            else:
                self._spans.move_to_end(number)
            return span

    def _inflate(self, number: int) -> memoryview:
        start = number * SPAN
        span = memoryview(bytearray(min(SPAN, self.size - start)))
        try:
            if self._reader is None:
                self._reader = open_gzip(self.compressed)
                self._reader.import_index(io.BytesIO(self._index))
            self._reader.seek(start)
            got = 0
            while got < len(span):
                more = self._reader.readinto(span[got:])
                if not more:
                    break
                got += more
        except (OSError, ValueError, RuntimeError) as e:  # rapidgzip's words for a damaged stream
            self._close_reader()
            raise self._damaged(start, len(span), f"they do not inflate ({e})") from None
        if got != len(span) or zlib.crc32(span) != self._sums[number]:
            raise self._damaged(start, len(span), "they differ from those checked when the stream was first inflated")
        return span.toreadonly()

    def _damaged(self, start: int, length: int, why: str) -> FormatError:
        return FormatError(self.path, f"bytes {start}-{start + length} of the gzip stream: {why}; the file is "
                                      "damaged or changed since it was indexed")

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        with self._lock:
            self._close_reader()
            self._spans.clear()
