"""The bytes of a gzip stream a mount read to build its tree, kept beside the
seek index so that the next mount builds the same tree without inflating
a span of the stream.

Building the tree of a gzip `.nemo` reads a few hundred kilobytes spread
over the whole inflated stream: the torch zip's end record and central
directory, a local header per record (one every few megabytes, each in a
span of its own), `data.pkl`. Inflated from the seek index, those reads
cost half a gigabyte of inflating for a 1 GB `.nemo`. `ReadLog` records
them while the first mount builds its tree; the next mount serves the same
reads from it, and only while it builds its tree: every later read goes
through checked spans, as before.

The file is as hostile as the checkpoint: `parse` checks its magic and
version, its pieces (within the stream, in order, apart, at most
`MAX_PIECES` of them and `MAX_BYTES` in all) and a SHA-256 of the whole;
anything else is ValueError, and the caller indexes again.
"""

from __future__ import annotations

import bisect
import hashlib
import struct

from ..humanize import plural
from .base import Source

MAGIC = b"ckptfs gzip reads\n\0"
VERSION = 1
HEAD = struct.Struct("<IQQI")  # version, stream size, source fingerprint, piece count
PIECE = struct.Struct("<QI")  # offset in the inflated stream, length
DIGEST = 32
#: what a log keeps at most: reads beyond are not kept (the next mount
#: inflates them, as it would without a log)
MAX_PIECES = 1 << 20
MAX_BYTES = 64 << 20
#: bytes copied and pieces moved while merging, at most (a hostile order
#: of reads cannot make recording them quadratic)
WORK = 1 << 28
#: the largest file a log can take (a longer one is not read)
MAX_FILE = len(MAGIC) + HEAD.size + MAX_PIECES * PIECE.size + MAX_BYTES + DIGEST
#: bytes at each end of the compressed file its fingerprint covers
EDGE = 1 << 16


class ReadLog:
    """Pieces of an inflated stream, by offset: sorted, apart."""

    def __init__(self, size: int, fingerprint: int, pieces: list[tuple[int, bytes]] | None = None):
        self.size, self.fingerprint = size, fingerprint
        self._starts: list[int] = []
        self._data: list[bytes] = []
        self.full = False  # a read was not kept: past MAX_PIECES, MAX_BYTES or WORK
        self.bytes = 0
        self._work = 0
        for offset, data in pieces or ():
            self._starts.append(offset)
            self._data.append(data)
            self.bytes += len(data)

    def __len__(self) -> int:
        return len(self._starts)

    def find(self, offset: int, length: int) -> bytes | None:
        """The bytes [offset, offset + length) if one piece holds them all."""
        at = bisect.bisect_right(self._starts, offset) - 1
        if at < 0:
            return None
        start, data = self._starts[at], self._data[at]
        if offset + length > start + len(data):
            return None
        return bytes(data[offset - start : offset - start + length])

    def add(self, offset: int, data: bytes) -> None:
        """Keep the bytes read at `offset`, merged with the pieces they touch.
        A read that goes on from within one piece extends it in place (a
        reader going forward in small reads costs what it reads); any other
        merge copies the pieces it joins, and all of them together are
        bounded by `WORK`, past which the log is `full`."""
        if not data or self.full:
            return
        stop = offset + len(data)
        first = bisect.bisect_left(self._starts, offset)
        if first and self._starts[first - 1] + len(self._data[first - 1]) >= offset:
            first -= 1
        last = first
        while last < len(self._starts) and self._starts[last] <= stop:
            last += 1
        if last - first == 1 and self._starts[first] <= offset:
            self._extend(first, offset, data)
        else:
            self._merge(first, last, offset, data)

    def _extend(self, at: int, offset: int, data: bytes) -> None:
        start, piece = self._starts[at], self._data[at]
        grown = max(0, offset + len(data) - start - len(piece))
        if self.bytes + grown > MAX_BYTES or not self._spend(len(data)):
            self.full = True
            return
        if not isinstance(piece, bytearray):  # one a parsed log holds
            piece = self._data[at] = bytearray(piece)
        piece[offset - start : offset - start + len(data)] = data
        self.bytes += grown

    def _merge(self, first: int, last: int, offset: int, data: bytes) -> None:
        stop = offset + len(data)
        start = min([offset] + self._starts[first:first + 1])
        end = max(stop, self._starts[last - 1] + len(self._data[last - 1])) if last > first else stop
        grown = (end - start) - sum(map(len, self._data[first:last]))
        if (self.bytes + grown > MAX_BYTES or len(self) - (last - first) + 1 > MAX_PIECES
                or not self._spend(end - start + len(self) - last)):  # the bytes copied, the pieces moved along
            self.full = True
            return
        merged = bytearray(end - start)
        for piece_start, piece in zip(self._starts[first:last], self._data[first:last]):
            merged[piece_start - start : piece_start - start + len(piece)] = piece
        merged[offset - start : stop - start] = data
        self._starts[first:last] = [start]
        self._data[first:last] = [merged]
        self.bytes += grown

    def _spend(self, work: int) -> bool:
        self._work += work
        return self._work <= WORK

    def to_bytes(self) -> bytes:
        out = [MAGIC, HEAD.pack(VERSION, self.size, self.fingerprint, len(self))]
        out += [PIECE.pack(start, len(data)) for start, data in zip(self._starts, self._data)]
        out += self._data
        body = b"".join(out)
        return body + hashlib.sha256(body).digest()


def fingerprint(compressed: Source) -> int:
    """64 bits of a digest of the compressed file's first and last `EDGE`
    bytes: a log is kept for one file, and a file rewritten with its size
    and time put back seldom keeps both ends."""
    edge = min(EDGE, compressed.size)
    ends = compressed.read_exact(0, edge) + compressed.read_exact(compressed.size - edge, edge)
    return int.from_bytes(hashlib.blake2b(ends, digest_size=8).digest(), "little")


def parse(blob: bytes, size: int, fingerprint: int) -> ReadLog:
    """The log kept in `blob` for a stream of `size` bytes of a source whose
    fingerprint is `fingerprint`; ValueError for anything else."""
    fixed = len(MAGIC) + HEAD.size
    if len(blob) < fixed + DIGEST or not blob.startswith(MAGIC):
        raise ValueError("not a read log of ckptfs")
    body, digest = blob[:-DIGEST], blob[-DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("a read log whose checksum does not match (damaged)")
    version, stream_size, kept_fingerprint, count = HEAD.unpack_from(body, len(MAGIC))
    if version != VERSION:
        raise ValueError(f"a read log of version {version}, not {VERSION}")
    if (stream_size, kept_fingerprint) != (size, fingerprint):
        raise ValueError("a read log of another stream")
    if count > MAX_PIECES or fixed + count * PIECE.size > len(body):
        raise ValueError(f"a read log claiming {plural(count, 'piece')}")
    position, end, pieces = fixed + count * PIECE.size, 0, []
    for index in range(count):
        offset, length = PIECE.unpack_from(body, fixed + index * PIECE.size)
        if offset < end or (index and offset == end) or not length or offset + length > size:
            raise ValueError(f"piece {index} of a read log is out of order, empty or past the stream's end")
        pieces.append((offset, body[position : position + length]))
        position, end = position + length, offset + length
    if position != len(body) or position - fixed - count * PIECE.size > MAX_BYTES:
        raise ValueError("a read log whose pieces do not fill it")
    return ReadLog(size, fingerprint, pieces)
