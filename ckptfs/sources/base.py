"""Byte sources: something with a size and `pread`.

A slice of a source is a source, so a member of a tar inside a gzip stream is
still just (source, offset, length) and reads of it are byte-range reads of
the file underneath. Nothing here knows about checkpoint formats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SourceChangedError
from ..humanize import plural
from . import readahead

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class Source:
    """Random-access bytes. Subclasses set `path` and `size` and define `pread`."""

    path: str
    size: int
    #: True when a read may take long (decompression): the FUSE layer then
    #: runs it in a worker thread instead of the event loop.
    slow: bool = False

    def pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def read_exact(self, offset: int, length: int) -> bytes:
        """`pread` that treats a short read as a changed or truncated source."""
        data = self.pread(offset, length)
        if len(data) != length:
            raise SourceChangedError(
                f"{self.path}: expected {plural(length, 'byte')} at offset {offset}, got {len(data)}"
                " (was the file truncated or replaced while mounted?)"
            )
        return data

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        """Fill `buffers` in turn with the bytes from `offset` on."""
        scatter(self.read_exact(offset, sum(map(len, buffers))), buffers)

    def slice(self, offset: int, length: int) -> SliceSource:
        return SliceSource(self, offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        """Start getting these bytes ready for a read soon (a remote source
        fetches them); by default nothing."""

    def locate(self, offset: int) -> tuple[str, int]:
        """The file on disk and the offset in it (or in its decompressed stream)."""
        return self.path, offset

    @property
    def origin(self) -> FileSource | None:
        """The file on disk whose bytes these are, for its owner and mode
        (None where there is no such file, or it is the checkpoint's own)."""
        return None


class FileSource(Source):
    """A regular file, read with `os.pread`.

    The daemon serves one request at a time, so a sequential reader of a file
    that is not yet in the page cache would wait for the disk on every
    request. When reads are sequential, the next stretch is requested from
    the kernel ahead of time (POSIX_FADV_WILLNEED, as far as the read-ahead
    policy says: sources/readahead.py), which keeps the disk busy while the
    current request is answered.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.stat = st
        self._ahead = readahead.LOCAL.reader()

    def close(self) -> None:
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            os.close(fd)

    __del__ = close  # a tree dropped (a commit's old one, a refused file) closes its files

    @property
    def origin(self) -> FileSource:
        return self

    def _prefetch(self, offset: int, length: int) -> None:
        """Ask the kernel for what the read-ahead policy wants ahead of this read."""
        wanted = self._ahead.advance(offset, length, self.size)
        if wanted is not None:
            os.posix_fadvise(self.fd, *wanted, os.POSIX_FADV_WILLNEED)

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        self._prefetch(offset, length)
        data = os.pread(self.fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]  # a short read from a regular file: keep reading until EOF
        got = len(data)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        """`os.preadv`: the kernel copies straight into the buffers, which
        saves a copy when a read is scattered (column shards)."""
        total = sum(map(len, buffers))
        self._prefetch(offset, total)
        for start in range(0, len(buffers), IOV_MAX):
            batch = buffers[start : start + IOV_MAX] if len(buffers) > IOV_MAX else buffers
            want = sum(map(len, batch)) if batch is not buffers else total
            if os.preadv(self.fd, batch, offset) != want:
                scatter(self.read_exact(offset, want), batch)  # short: at EOF, or a signal
            offset += want


def scatter(data: bytes, buffers: list[memoryview]) -> None:
    """Copy `data` into `buffers`, one after the other."""
    view, pos = memoryview(data), 0
    for b in buffers:
        b[:] = view[pos : pos + len(b)]
        pos += len(b)


class BytesSource(Source):
    """Bytes already read (a record of an index), as a source for the
    parsers that walk sources (formats/protowire.py)."""

    def __init__(self, data: bytes, path: str):
        self.data, self.size, self.path = data, len(data), path

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass(frozen=True)
class SliceSource(Source):
    """`length` bytes of `parent` starting at `offset`."""

    parent: Source
    offset: int
    length: int

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.parent.path

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.length

    @property
    def slow(self) -> bool:  # type: ignore[override]
        return self.parent.slow

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.length - offset))
        return self.parent.pread(self.offset + offset, length)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        if offset + sum(map(len, buffers)) > self.length:
            raise ValueError(f"{self.path}: read past the end of a {self.length}-byte range at {offset}")
        self.parent.readv(self.offset + offset, buffers)

    def slice(self, offset: int, length: int) -> SliceSource:
        return SliceSource(self.parent, self.offset + offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        self.parent.prefetch(self.offset + offset, max(0, min(length, self.length - offset)))

    def locate(self, offset: int) -> tuple[str, int]:
        return self.parent.locate(self.offset + offset)

    @property
    def origin(self) -> FileSource | None:
        return self.parent.origin


class SeekableReader:
    """A read-only file object over a source, for parsers that want one (tarfile)."""

    def __init__(self, source: Source):
        self.source = source
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.source.size - self.pos
        data = self.source.pread(self.pos, n)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.source.size}[whence]
        if base + offset < 0:  # as io.BytesIO says it: an archive's offsets may point anywhere
            raise ValueError(f"negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True
