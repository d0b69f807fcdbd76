"""Writes a zip archive the way torch.save lays one out: every stored
record's data aligned to 64 bytes by an "FB" padding field (so
`torch.load(mmap=True)` maps aligned tensors), the CRC in a data descriptor
after the data, zip64 fields where sizes or offsets pass 4 GiB, and zero
timestamps so the same records give the same bytes.

A record may also be deflated while it is written (`Deflated`, as
zipfile's ZIP_DEFLATED writer compresses what `numpy.savez_compressed`
gives it): its compressed length is known only once written, so a
`ZipStream` lays records out as it goes. A `ZipBlob` holds known lengths
only and plans the layout first (`size` is known before a byte is written,
for a tar member header).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import ClassVar

from ..pack.output import COPY_BLOCK

ALIGN = 64
FLAGS = 0x0808  # data descriptor, UTF-8 names
LOCAL = struct.Struct("<4sHHHHHIIIHH")
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
END = struct.Struct("<4sHHHHIIH")
END64 = struct.Struct("<4sQHHIIQQQQ")
LOCATOR64 = struct.Struct("<4sIQI")
MASK = 0xFFFFFFFF  # a 32-bit field whose value is in the zip64 extra field
ZIP64_AT = 0xFFFFFFFF


@dataclass
class Record:
    """One record whose length in the archive is known: its name and where
    its bytes come from: `data`; or a record copied as it was, an `Extent`
    `piece` with its `crc` (and its `method` and uncompressed `size` if
    compressed); or `piece`, anything with `read(offset, length)`, from
    `start`, its CRC computed while writing."""

    name: str
    length: int
    data: bytes | None = None
    piece: object = None
    start: int = 0
    crc: int | None = None
    method: int = zipfile.ZIP_STORED
    size: int | None = None  # the uncompressed size, when it differs from `length`

    @property
    def most(self) -> int:
        """The most its sizes can be: what decides zip64 before it is written."""
        return max(self.length, self.size or 0)

    def write(self, output) -> tuple[int, int]:
        """Writes the record's bytes; returns their CRC-32 and length."""
        if self.data is not None:
            output.write(self.data)
            return zlib.crc32(self.data), self.length
        if self.crc is not None:
            output.copy(self.piece.source, self.piece.offset, self.length)
            return self.crc, self.length
        known = getattr(self.piece, "crc32", None)  # an edited file's, taken as it was written
        crc = known(self.start, self.length) if known is not None else None
        if crc is not None:
            output.copy_content(self.piece, self.start, self.length)
            return crc, self.length
        crc = 0
        for pos in range(0, self.length, COPY_BLOCK):
            block = self.piece.read(self.start + pos, min(COPY_BLOCK, self.length - pos))
            crc = zlib.crc32(block, crc)
            output.write(block)
        return crc, self.length

    @property
    def uncompressed(self) -> int:
        return self.size if self.size is not None else self.length


@dataclass
class Deflated:
    """A record deflated while it is written: `size` bytes of `piece`
    (anything with `read(offset, length)`), fed block by block to a raw
    deflate stream at zlib's default level, as zipfile's ZIP_DEFLATED writer
    does, its CRC-32 computed on the way. Memory stays within a block."""

    name: str
    size: int
    piece: object
    method: ClassVar[int] = zipfile.ZIP_DEFLATED

    @property
    def most(self) -> int:
        """Deflate may grow incompressible bytes a little: zipfile allows 5%
        before it writes zip64 fields, and so does this."""
        return self.size + self.size // 20

    def write(self, output) -> tuple[int, int]:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        crc = length = 0
        for pos in range(0, self.size, COPY_BLOCK):
            block = self.piece.read(pos, min(COPY_BLOCK, self.size - pos))
            crc = zlib.crc32(block, crc)
            packed = compressor.compress(block)
            output.write(packed)
            length += len(packed)
        packed = compressor.flush()
        output.write(packed)
        return crc, length + len(packed)

    @property
    def uncompressed(self) -> int:
        return self.size


class ZipStream:
    """Writes `records` (`Record`s and `Deflated`s) one after another, then
    the central directory. `zip64_at`: sizes and offsets from which zip64
    fields are used (lower it to test them without writing 4 GiB)."""

    def __init__(self, records: list[Record | Deflated], zip64_at: int = ZIP64_AT):
        self.records, self.zip64_at = records, zip64_at

    def write(self, output) -> None:
        position, directory = 0, []
        for record in self.records:
            zip64 = self._needs_zip64(record, position)
            local = self._local(record, position, zip64)
            output.write(local)
            crc, length = record.write(output)
            usize = record.uncompressed
            output.write(struct.pack("<4sIQQ" if zip64 else "<4sIII", b"PK\x07\x08", crc, length, usize))
            directory.append(self._central(record, crc, length, position))
            position += len(local) + length + self._descriptor_size(zip64)
        for entry in directory:
            output.write(entry)
        output.write(self._end(len(directory), sum(map(len, directory)), position))

    def _needs_zip64(self, record: Record | Deflated, offset: int) -> bool:
        return record.most >= self.zip64_at or offset >= self.zip64_at

    def _field(self, n: int) -> int:
        return MASK if n >= self.zip64_at else n

    def _local(self, record: Record | Deflated, offset: int, zip64: bool) -> bytes:
        name = record.name.encode()
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        if record.method == zipfile.ZIP_STORED:  # only bytes served as they are gain from alignment
            unpadded = offset + LOCAL.size + len(name) + len(extra) + 4
            extra += struct.pack("<HH", 0x4246, -unpadded % ALIGN) + b"Z" * (-unpadded % ALIGN)
        sizes = MASK if zip64 else 0
        version = 45 if zip64 else 20
        return LOCAL.pack(b"PK\x03\x04", version, FLAGS, record.method, 0, 0, 0, sizes, sizes, len(name), len(extra)) + \
            name + extra

    @staticmethod
    def _descriptor_size(zip64: bool) -> int:
        return 24 if zip64 else 16

    def _central(self, record: Record | Deflated, crc: int, length: int, offset: int) -> bytes:
        name = record.name.encode()
        usize = record.uncompressed
        fields = [n for n in (usize, length, offset) if n >= self.zip64_at]
        zip64 = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
        version = 45 if zip64 else 20
        return CENTRAL.pack(b"PK\x01\x02", version, version, FLAGS, record.method, 0, 0, crc, self._field(length),
                            self._field(usize), len(name), len(zip64), 0, 0, 0, 0, self._field(offset)) + name + zip64

    def _end(self, count: int, size: int, offset: int) -> bytes:
        if count < 0xFFFF and size < self.zip64_at and offset < self.zip64_at:
            return END.pack(b"PK\x05\x06", 0, 0, count, count, size, offset, 0)
        end64 = END64.pack(b"PK\x06\x06", END64.size - 12, 45, 45, 0, 0, count, count, size, offset)
        locator = LOCATOR64.pack(b"PK\x06\x07", 0, offset + size, 1)
        entries = min(count, 0xFFFF)
        return end64 + locator + END.pack(b"PK\x05\x06", 0, 0, entries, entries, self._field(size), self._field(offset), 0)


class ZipBlob(ZipStream):
    """A `ZipStream` of `Record`s only, its `size` planned before a byte is
    written."""

    def __init__(self, records: list[Record], zip64_at: int = ZIP64_AT):
        super().__init__(records, zip64_at)
        position, directory = 0, 0
        for record in records:
            zip64 = self._needs_zip64(record, position)
            directory += len(self._central(record, 0, record.length, position))
            position += len(self._local(record, position, zip64)) + record.length + self._descriptor_size(zip64)
        self.size = position + directory + len(self._end(len(records), directory, position))
