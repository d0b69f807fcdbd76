"""A tensor's bytes in its data shard, checked against the CRC-32C its
bundle entry keeps, without giving up zero-copy reads.

Each read is served from the shard as it is. Reads that follow one another
from the tensor's first byte (`cat`, `cp`, an export, a loader reading the
file through) extend a running CRC; when they reach its last byte, the CRC
must match the entry's. If it does not, that read fails, and every later
one: the mount answers EIO, logs one line naming the file and the tensor
and puts it in the file's `user.ckptfs.problem`; a command prints that line. A read that starts elsewhere is served
unchecked and the run waits for a read from the start. So a whole pass
costs one CRC of the bytes it reads anyway, a partial read nothing, and a
tensor once found whole is not checked again.
"""

from __future__ import annotations

import threading

from ..errors import FormatError
from ..sources.base import FileSource, SliceSource, Source
from ..tree import xattrs
from . import crc32c

DAMAGED = "its bytes do not match the CRC-32C its bundle entry keeps (the data shard is damaged)"


class Run:
    """The check of one tensor's bytes: `size` bytes whose CRC-32C must be
    `crc` (unmasked), followed as reads of them come."""

    def __init__(self, size: int, crc: int, label: str):
        self.size, self.crc, self.label = size, crc, label
        #: (bytes checked from the start, their CRC), or None between runs
        self._run: tuple[int, int] | None = None
        self.checked = size == 0
        self.damaged = False
        self._lock = threading.Lock()  # reads of a slow source come from worker threads
        #: the attributes of the file that shows these bytes, which get its
        #: `user.ckptfs.problem` when they are found damaged
        self.shown_by: dict[str, str] | None = None

    def refuse_damaged(self) -> None:
        if self.damaged:
            raise FormatError(self.label, DAMAGED)

    def follow(self, offset: int, data: bytes | memoryview) -> None:
        """Bytes read at `offset`: the run goes on if they come next."""
        if self.checked or not data:
            return
        with self._lock:
            self._follow(offset, data)

    def _follow(self, offset: int, data: bytes | memoryview) -> None:
        if offset == 0:
            self._run = (0, 0)
        if self._run is None or self._run[0] != offset:
            self._run = None
            return
        done, crc = self._run
        done, crc = done + len(data), crc32c.value(data, crc)
        if done < self.size:
            self._run = (done, crc)
            return
        self._run = None
        if crc != self.crc:
            self.damaged = True
            if self.shown_by is not None:
                self.shown_by[xattrs.PROBLEM] = f"{self.label}: {DAMAGED}"
            self.refuse_damaged()
        self.checked = True


class CheckedSource(Source):
    """A tensor's bytes (`inner`, a slice of its shard) read through their
    `Run`. Not a SliceSource: writers and maps that reach through slices to
    the file underneath (copy_file_range, mmap) would skip the check."""

    def __init__(self, inner: SliceSource, run: Run):
        self.inner, self.run, self.size = inner, run, inner.size

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.inner.path

    @property
    def slow(self) -> bool:  # type: ignore[override]
        return self.inner.slow

    def pread(self, offset: int, length: int) -> bytes:
        self.run.refuse_damaged()
        data = self.inner.pread(offset, length)
        self.run.follow(offset, data)
        return data

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        self.run.refuse_damaged()
        self.inner.readv(offset, buffers)
        for buffer in buffers:
            self.run.follow(offset, buffer)
            offset += len(buffer)

    def prefetch(self, offset: int, length: int) -> None:
        self.inner.prefetch(offset, length)

    def locate(self, offset: int) -> tuple[str, int]:
        return self.inner.locate(offset)

    @property
    def origin(self) -> FileSource | None:
        return self.inner.origin


def checked(parent: Source, offset: int, length: int, crc: int, label: str) -> CheckedSource:
    """A tensor's bytes, checked against `crc` (unmasked) as they are read through."""
    return CheckedSource(parent.slice(offset, length), Run(length, crc, label))
