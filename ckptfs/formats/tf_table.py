"""The sorted string table (leveldb's SSTable, as TensorFlow writes it) that
a tensor bundle's `.index` file is: data blocks of prefix-compressed keys
and their values, a metaindex block, an index block (the last key of each
data block and its BlockHandle), then a 48-byte footer (the two handles as
varint64 pairs, padding, the magic 0xdb4775248b80fb57).

A block is `size` bytes, then a 1-byte compression type and the masked
CRC-32C of both. Its entries are `shared, unshared, value_length` (varint32)
then the key's unshared bytes and the value; its last 4 bytes count the
restart points before them (uint32 each). TensorFlow writes bundles
uncompressed (`kNoCompression`); a block in snappy is refused.

Nothing is trusted before it is checked: every block lies before the
footer, its CRC matches, its restart array fits in it, every key shares at
most the previous key's bytes and fits in its block; keys rise strictly;
the blocks read together hold at most max_header_bytes and their entries
at most max_members.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..sources.base import Source
from . import crc32c
from .protowire import decode_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
TRAILER_BYTES = 5
NO_COMPRESSION, SNAPPY = 0, 1
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Handle:
    """Where a block lies: its offset and size (the trailer after it not counted)."""

    offset: int
    size: int


class Table:
    """An SSTable in a source, its footer read and checked."""

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        if source.size < FOOTER_BYTES:
            raise FormatError(name, f"{plural(source.size, 'byte')}, shorter than a table's footer")
        footer = source.read_exact(source.size - FOOTER_BYTES, FOOTER_BYTES)
        lo, hi = struct.unpack_from("<II", footer, FOOTER_BYTES - 8)
        if hi << 32 | lo != MAGIC:
            raise FormatError(name, "not a TensorFlow table (no 0xdb4775248b80fb57 at its end)")
        self.metaindex, at = self._handle(footer, 0, "footer")
        self.index, _ = self._handle(footer, at, "footer")
        self._read = 0  # bytes of blocks read so far, against max_header_bytes

    def _handle(self, data: bytes, pos: int, where: str) -> tuple[Handle, int]:
        offset, used = decode_varint(data, pos, self.name, pos)
        size, more = decode_varint(data, pos + used, self.name, pos + used)
        handle = Handle(offset, size)
        if offset + size + TRAILER_BYTES > self.source.size - FOOTER_BYTES:
            raise FormatError(self.name, f"{where} points to a block at {offset} of {plural(size, 'byte')}, past "
                                         f"the end of the table ({self.source.size} bytes)")
        return handle, pos + used + more

    def block(self, handle: Handle) -> bytes:
        """A block's bytes, its trailer checked."""
        self._read += handle.size
        if self._read > LIMITS.header_bytes:
            raise FormatError(self.name, f"the table's blocks hold more than max_header_bytes ({LIMITS.header_bytes}) "
                                         "(-o max_header_bytes raises the limit)")
        raw = self.source.read_exact(handle.offset, handle.size + TRAILER_BYTES)
        kind, stored = raw[handle.size], _U32.unpack_from(raw, handle.size + 1)[0]
        if crc32c.value(memoryview(raw)[: handle.size + 1]) != crc32c.unmask(stored):
            raise FormatError(self.name, f"the block at {handle.offset} does not match its CRC-32C")
        if kind != NO_COMPRESSION:
            what = "snappy" if kind == SNAPPY else f"compression type {kind}"
            raise FormatError(self.name, f"the block at {handle.offset} is stored in {what}: TensorFlow writes "
                                         "bundles uncompressed, and ckptfs reads only those")
        return raw[: handle.size]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of the table, in order, data block by data block."""
        last, count = None, 0
        for _, encoded in self.entries(self.block(self.index), self.index.offset):
            handle, _ = self._handle(encoded, 0, "the index")
            for key, value in self.entries(self.block(handle), handle.offset):
                if last is not None and key <= last:
                    raise FormatError(self.name, f"key {key[:80]!r} does not come after {last[:80]!r}: "
                                                 "the table is not sorted")
                count += 1
                if count > LIMITS.members:
                    raise FormatError(self.name, f"more than {LIMITS.members} entries, the max_members "
                                                 "(-o max_members raises the limit)")
                last = key
                yield key, value

    def entries(self, block: bytes, offset: int) -> Iterator[tuple[bytes, bytes]]:
        """The entries of one block, their keys made whole."""
        if len(block) < 4:
            raise FormatError(self.name, f"the block at {offset} is too short to hold its restart count")
        restarts = _U32.unpack_from(block, len(block) - 4)[0]
        if restarts > (len(block) - 4) // 4:
            raise FormatError(self.name, f"the block at {offset} claims {restarts} restart points, more than "
                                         f"its {plural(len(block), 'byte')} hold")
        end = len(block) - 4 - 4 * restarts
        key, pos = b"", 0
        while pos < end:
            where = offset + pos
            shared, pos = _varint(block, pos, self.name, offset)
            unshared, pos = _varint(block, pos, self.name, offset)
            length, pos = _varint(block, pos, self.name, offset)
            if shared > len(key) or unshared + length > end - pos:
                raise FormatError(self.name, f"the entry at {where} runs past its block or shares more than the "
                                             "key before it")
            key = key[:shared] + block[pos : pos + unshared]
            pos += unshared
            yield key, block[pos : pos + length]
            pos += length


def _varint(data: bytes, pos: int, name: str, offset: int) -> tuple[int, int]:
    value, used = decode_varint(data, pos, name, offset + pos)
    if value >> 32:
        raise FormatError(name, f"varint32 at {offset + pos} is {value}, above 2**32")
    return value, pos + used
