"""A tensor's bytes in its data shard, checked against the CRC-32C its
bundle entry keeps, without giving up zero-copy reads.

Each read is served from the shard as it is. Reads that follow one another
from the tensor's first byte (`cat`, `cp`, an export, a loader reading the
file through) extend a running CRC; when they reach its last byte, the CRC
must match the entry's. If it does not, that read fails, and every later
one: the mount answers EIO and logs one line naming the file and the
tensor, a command prints that line. A read that starts elsewhere is served
unchecked and the run waits for a read from the start. So a whole pass
costs one CRC of the bytes it reads anyway, a partial read nothing, and a
tensor once found whole is not checked again.
"""

from __future__ import annotations

from ..errors import FormatError
from ..sources.base import FileSource, Source
from . import crc32c


class CheckedSource(Source):
    """`length` bytes of `parent` from `offset`, whose CRC-32C must be `crc` (unmasked)."""

    def __init__(self, parent: Source, offset: int, length: int, crc: int, label: str):
        self.parent, self.offset, self.size = parent, offset, length
        self.crc, self.label = crc, label
        #: (bytes checked from the start, their CRC), or None between runs
        self._run: tuple[int, int] | None = None
        self.checked = length == 0
        self.damaged = False

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.parent.path

    @property
    def slow(self) -> bool:  # type: ignore[override]
        return self.parent.slow

    def pread(self, offset: int, length: int) -> bytes:
        self._refuse_damaged()
        data = self.parent.pread(self.offset + offset, max(0, min(length, self.size - offset)))
        self._follow(offset, data)
        return data

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        self._refuse_damaged()
        if offset + sum(map(len, buffers)) > self.size:
            raise ValueError(f"{self.path}: read past the end of a {self.size}-byte tensor at {offset}")
        self.parent.readv(self.offset + offset, buffers)
        for buffer in buffers:
            self._follow(offset, buffer)
            offset += len(buffer)

    def prefetch(self, offset: int, length: int) -> None:
        self.parent.prefetch(self.offset + offset, max(0, min(length, self.size - offset)))

    def locate(self, offset: int) -> tuple[str, int]:
        return self.parent.locate(self.offset + offset)

    @property
    def origin(self) -> FileSource | None:
        return self.parent.origin

    def _refuse_damaged(self) -> None:
        if self.damaged:
            raise FormatError(self.label, "its bytes do not match the CRC-32C its bundle entry keeps (the data "
                                          "shard is damaged)")

    def _follow(self, offset: int, data: bytes | memoryview) -> None:
        if self.checked or not data:
            return
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
            self._refuse_damaged()
        self.checked = True
