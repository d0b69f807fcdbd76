"""Writes a zip archive the way torch.save lays one out: every record
stored, its data aligned to 64 bytes by an "FB" padding field (so
`torch.load(mmap=True)` maps aligned tensors), the CRC in a data descriptor
after the data, zip64 fields where sizes or offsets pass 4 GiB, and zero
timestamps so the same records give the same bytes.

The layout is planned first (`size` is known before a byte is written, for
a tar member header) and streamed by `write`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..write.output import COPY_BLOCK

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
    """One record: its name and where its bytes come from: `data`; or a
    record copied as it was, an `Extent` `piece` with its `crc` (and its
    `method` and uncompressed `size` if compressed); or `piece`, anything
    with `read(offset, length)`, from `start`, its CRC computed while
    writing."""

    name: str
    length: int
    data: bytes | None = None
    piece: object = None
    start: int = 0
    crc: int | None = None
    method: int = 0
    size: int | None = None  # the uncompressed size, when it differs from `length`


class ZipBlob:
    """`zip64_at`: sizes and offsets from which zip64 fields are used (lower
    it to test them without writing 4 GiB)."""

    def __init__(self, records: list[Record], zip64_at: int = ZIP64_AT):
        self.records, self.zip64_at = records, zip64_at
        self.offsets: list[int] = []
        position = 0
        for record in records:
            self.offsets.append(position)
            position += len(self._local(record, position)) + record.length + self._descriptor_size(record, position)
        self.directory_offset = position
        self.directory_size = sum(CENTRAL.size + len(r.name.encode()) + len(self._zip64_central(r, o))
                                  for r, o in zip(records, self.offsets))
        self.size = position + self.directory_size + len(self._end())

    def _needs_zip64(self, record: Record, offset: int) -> bool:
        return max(record.length, record.size or 0) >= self.zip64_at or offset >= self.zip64_at

    def _field(self, n: int) -> int:
        return MASK if n >= self.zip64_at else n

    def _local(self, record: Record, offset: int, crc: int = 0) -> bytes:
        name = record.name.encode()
        zip64 = self._needs_zip64(record, offset)
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        unpadded = offset + LOCAL.size + len(name) + len(extra) + 4
        extra += struct.pack("<HH", 0x4246, -unpadded % ALIGN) + b"Z" * (-unpadded % ALIGN)
        sizes = MASK if zip64 else 0
        version = 45 if zip64 else 20
        return LOCAL.pack(b"PK\x03\x04", version, FLAGS, record.method, 0, 0, 0, sizes, sizes, len(name), len(extra)) + \
            name + extra

    def _descriptor_size(self, record: Record, offset: int) -> int:
        return 24 if self._needs_zip64(record, offset) else 16

    def _zip64_central(self, record: Record, offset: int) -> bytes:
        fields = [n for n in (record.size if record.size is not None else record.length, record.length, offset)
                  if n >= self.zip64_at]
        return struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""

    def _end(self) -> bytes:
        count, size, offset = len(self.records), self.directory_size, self.directory_offset
        if count < 0xFFFF and size < self.zip64_at and offset < self.zip64_at:
            return END.pack(b"PK\x05\x06", 0, 0, count, count, size, offset, 0)
        end64 = END64.pack(b"PK\x06\x06", END64.size - 12, 45, 45, 0, 0, count, count, size, offset)
        locator = LOCATOR64.pack(b"PK\x06\x07", 0, offset + size, 1)
        entries = min(count, 0xFFFF)
        return end64 + locator + END.pack(b"PK\x05\x06", 0, 0, entries, entries, self._field(size), self._field(offset), 0)

    def write(self, output) -> None:
        crcs = []
        for record, offset in zip(self.records, self.offsets):
            output.write(self._local(record, offset))
            crcs.append(self._data(record, output))
            usize = record.size if record.size is not None else record.length
            if self._needs_zip64(record, offset):
                output.write(struct.pack("<4sIQQ", b"PK\x07\x08", crcs[-1], record.length, usize))
            else:
                output.write(struct.pack("<4sIII", b"PK\x07\x08", crcs[-1], record.length, usize))
        for record, offset, crc in zip(self.records, self.offsets, crcs):
            name = record.name.encode()
            zip64 = self._zip64_central(record, offset)
            usize = record.size if record.size is not None else record.length
            output.write(CENTRAL.pack(
                b"PK\x01\x02", 45 if zip64 else 20, 45 if zip64 else 20, FLAGS, record.method, 0, 0, crc,
                self._field(record.length), self._field(usize), len(name), len(zip64), 0, 0, 0, 0, self._field(offset),
            ) + name + zip64)
        output.write(self._end())

    @staticmethod
    def _data(record: Record, output) -> int:
        """Writes the record's bytes; returns their CRC-32."""
        if record.data is not None:
            output.write(record.data)
            return zlib.crc32(record.data)
        if record.crc is not None:
            output.copy(record.piece.source, record.piece.offset, record.length)
            return record.crc
        crc = 0
        for pos in range(0, record.length, COPY_BLOCK):
            block = record.piece.read(record.start + pos, min(COPY_BLOCK, record.length - pos))
            crc = zlib.crc32(block, crc)
            output.write(block)
        return crc
