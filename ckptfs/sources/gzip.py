"""The decompressed stream of a gzip file, with random access through a seek
index (rapidgzip's).

rapidgzip decompresses with threads, and threads do not survive the daemon's
fork: every reader is closed before a fork, and the daemon opens its own from
the in-memory index on its first read.
"""

from __future__ import annotations

import atexit
import io
import os
import threading

from .base import FileSource, SeekableReader, Source


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


class GzipSource(Source):
    """The decompressed stream of a gzip file, read through a seek index."""

    slow = True

    def __init__(self, compressed: Source, size: int, index: bytes):
        self.compressed = compressed
        self.path = compressed.path
        self.size = size
        self._index = index
        self._reader = None
        self._lock = threading.Lock()
        # The reader's threads would not survive the daemon's fork: close it
        # before any fork; whoever reads next opens a new one.
        os.register_at_fork(before=self.close)
        atexit.register(self.close)  # and stop its threads before Python stops

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        with self._lock:
            if self._reader is None:
                self._reader = open_gzip(self.compressed)
                self._reader.import_index(io.BytesIO(self._index))
            self._reader.seek(offset)
            return self._reader.read(length)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
