"""The records of a zip archive as torch.load finds them, and the ways other
zip readers would find others.

torch.load reads a zip through miniz (caffe2/serialize/inline_container.cc
over third_party/miniz-3.x), whose rules this module follows:

- the end record is the last "PK\\5\\6" with 22 bytes after it, in the last
  64 KiB or so; a zip64 locator just before it sends miniz to the zip64 end
  record at the offset the locator gives;
- the central directory is where the end record says, taken as written: no
  allowance for data before the archive. Its entries are read by count;
- a record is found by its name ignoring ASCII case (a sorted index of
  lowercased names, searched in halves);
- its bytes start after the local header's name and extra field, whose
  lengths are all miniz reads there; the central directory gives method and
  sizes. A record marked as a folder (a name ending in "/", or the DOS folder
  attribute) yields no bytes at all;
- CRCs are never checked: torch builds miniz with
  MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS.

Python's zipfile (and np.load and the scanners built on it) reads the same
bytes by other rules: it finds the directory relative to the end record and
shifts every offset by any data before the archive, reads entries until the
directory's size is used up, cuts names at a NUL, keeps the last of two
names, refuses a local header naming another record or a record whose CRC
does not match. A reader walking local headers from the start of the file
trusts their names and sizes. Wherever these readings could part, the
archive is one whose content depends on who reads it: `disagreements` says
how, and TorchZip refuses it; `ckptfs scan` calls it dangerous. Every byte of
an archive read here belongs to one record (header, data, data descriptor),
the central directory or the end records, in that order.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..sources.base import Source
from ..sources.deflate import DeflateSource

STORED, DEFLATED = 0, 8
END = struct.Struct("<4s4H2IH")
END64 = struct.Struct("<4sQ2H2I4Q")
LOCATOR = struct.Struct("<4sIQI")
CENTRAL = struct.Struct("<4s6H3I5H2I")
LOCAL = struct.Struct("<4s5H3I2H")
END_MAGIC, END64_MAGIC, LOCATOR_MAGIC = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
CENTRAL_MAGIC, LOCAL_MAGIC = b"PK\x01\x02", b"PK\x03\x04"
#: a 32-bit field whose value is in the zip64 extra field
MASK = 0xFFFFFFFF
ZIP64_EXTRA = 0x0001
#: general purpose flags: encrypted, data descriptor, compressed patch, strong encryption, UTF-8 name, masked header
ENCRYPTED, DESCRIPTOR, PATCH, STRONG, UTF8, MASKED = 0x1, 0x8, 0x20, 0x40, 0x800, 0x2000
DOS_FOLDER = 0x10
#: what a data descriptor may take after a record's data: with or without its signature, 32- or 64-bit sizes
DESCRIPTOR_SIZES = (12, 16, 20, 24)
#: what every refusal of an archive read differently ends with
CONSEQUENCE = "torch.load would read other records than other zip readers"


class ReadDifferently(FormatError):
    """A zip archive whose records depend on the reader."""


@dataclass(eq=False)
class Entry:
    """One record. The field names are zipfile.ZipInfo's, so the helpers that
    take either read alike."""

    #: the name as Python's zipfile decodes it (UTF-8 if flagged, else cp437)
    filename: str
    #: the name's bytes, which miniz compares
    name_bytes: bytes
    flag_bits: int
    compress_type: int
    CRC: int
    compress_size: int
    file_size: int
    header_offset: int
    external_attr: int
    #: where its central directory entry starts (its CRC field is 16 bytes on)
    central_offset: int
    #: where its stored bytes start, after the local header's name and extra field
    data_offset: int = -1
    #: the CRC its local header carries (0 when a data descriptor follows the data)
    local_crc: int = 0

    @property
    def marked_folder(self) -> bool:
        return self.name_bytes.endswith(b"/") or bool(self.external_attr & DOS_FOLDER)

    @property
    def end(self) -> int:
        return self.data_offset + self.compress_size


class ZipRecords:
    """The entries of one archive in central directory order, and the ways
    other readers would read it otherwise (empty for an ordinary archive)."""

    def __init__(self, source: Source, name: str, entries: list[Entry], disagreements: list[str]):
        self.source, self.name, self.entries, self.disagreements = source, name, entries, disagreements
        self._by_key: dict[bytes, Entry] = {}
        for entry in entries:
            self._by_key.setdefault(entry.name_bytes.lower(), entry)

    def find(self, name_bytes: bytes) -> Entry | None:
        """The record miniz finds for the name `name_bytes`: ASCII case ignored."""
        return self._by_key.get(name_bytes.lower())

    def require_agreement(self) -> None:
        if self.disagreements:
            raise ReadDifferently(self.name, f"{self.disagreements[0]}: {CONSEQUENCE}")

    def contents(self, entry: Entry) -> Source:
        """A record's bytes as a source: a slice of the archive, or an
        inflater over one (read as far as asked, not checked)."""
        stored = self.source.slice(entry.data_offset, entry.compress_size)
        if self._method(entry) == STORED:
            return stored
        return DeflateSource(stored, entry.file_size, f"{self.name}:{entry.filename}")

    def read(self, entry: Entry, limit: int) -> bytes:
        """A whole record as torch.load's getRecord returns it: its stored
        bytes, or a deflate stream that ends having made exactly the size
        the directory gives. Its CRC is checked apart (`check_crc`)."""
        if entry.file_size > limit:
            raise FormatError(self.name, f"{entry.filename} is {entry.file_size} bytes, above the limit of {limit}")
        stored = self.source.slice(entry.data_offset, entry.compress_size)
        if self._method(entry) == STORED:
            return stored.read_exact(0, entry.compress_size)
        return _inflate_exactly(stored, entry.file_size, f"{self.name}: {entry.filename}")

    def check_crc(self, entry: Entry, data: bytes) -> None:
        """Counts a record whose whole bytes do not match its CRC among the
        disagreements: torch.load loads them all the same, zipfile refuses them."""
        if zlib.crc32(data) != entry.CRC:
            self.disagreements.append(f"{entry.filename!r} does not match its CRC, which torch.load does not check "
                                      "and zipfile does")

    def _method(self, entry: Entry) -> int:
        if entry.compress_type not in (STORED, DEFLATED):
            raise FormatError(self.name, f"{entry.filename}: compression method {entry.compress_type}, which "
                                         "torch.load cannot read")
        return entry.compress_type


def _inflate_exactly(stored: Source, size: int, label: str) -> bytes:
    inflater, out, position = zlib.decompressobj(-zlib.MAX_WBITS), bytearray(), 0
    try:
        while not inflater.eof and position < stored.size:
            chunk = stored.read_exact(position, min(DeflateSource.IN_STEP, stored.size - position))
            position += len(chunk)
            while chunk and not inflater.eof and len(out) <= size:
                out += inflater.decompress(chunk, size + 1 - len(out))
                chunk = inflater.unconsumed_tail
    except zlib.error as e:
        raise FormatError(label, f"corrupt deflate stream ({e})") from None
    if not inflater.eof or len(out) != size:
        raise FormatError(label, f"inflates to {'more than ' if len(out) > size else ''}{plural(len(out), 'byte')}, not the "
                                 f"{size} its directory entry gives")
    return bytes(out)


def read_records(source: Source, name: str) -> ZipRecords:
    """The records of the zip archive in `source` as torch.load finds them.
    FormatError if torch.load could not read the archive at all."""
    disagreements: list[str] = []
    directory = _directory(source, name, disagreements)
    entries = _entries(source, name, directory, disagreements)
    for entry in entries:
        _read_local_header(source, name, entry, disagreements)
    _check_layout(entries, directory, disagreements)
    return ZipRecords(source, name, entries, disagreements)


def _unreadable(name: str, problem: str) -> FormatError:
    return FormatError(name, f"not a readable zip archive: {problem}")


@dataclass
class _Directory:
    """The central directory as the end records give it: `count` entries
    in `size` bytes at `offset`, on disk number `disk`."""

    offset: int
    size: int
    count: int
    disk: int


def _directory(source: Source, name: str, disagreements: list[str]) -> _Directory:
    """Where the central directory is, from the end records, as miniz's
    mz_zip_reader_read_central_dir finds it."""
    end_at, fields = _end_record(source, name, disagreements)
    directory_end, zip64_problem = end_at, None
    zip64 = _zip64_end_record(source, name, end_at)
    if zip64 is not None:
        end64_at, fields = zip64
        directory_end = end_at - LOCATOR.size - END64.size
        if end64_at != directory_end:
            zip64_problem = (f"the zip64 locator points at {end64_at}, but zipfile reads the zip64 end record right "
                             f"before it, at {directory_end}")
    disk, directory_disk, on_this_disk, count, directory_size, directory_offset = fields
    if count != on_this_disk or ((disk | directory_disk) != 0 and (disk, directory_disk) != (1, 1)):
        raise _unreadable(name, "an archive spanning several disks")
    if directory_size < count * CENTRAL.size or directory_offset + directory_size > source.size:
        raise _unreadable(name, f"a central directory of {plural(count, 'entry', 'entries')} in "
                                f"{plural(directory_size, 'byte')} at offset "
                                f"{directory_offset} does not fit in the archive (truncated?)")
    if count > LIMITS.members:
        raise FormatError(name, f"more than {plural(LIMITS.members, 'record')} (-o max_members raises the limit)")
    if directory_size > LIMITS.header_bytes:
        raise FormatError(name, f"a central directory of {plural(directory_size, 'byte')}, above the limit of "
                                f"{LIMITS.header_bytes} (-o max_header_bytes raises it)")
    shift = directory_end - directory_offset - directory_size
    if shift > 0:
        disagreements.append(f"the central directory ends at {directory_offset + directory_size}, {plural(shift, 'byte')} "
                             "before the end records (two archives concatenated?): zipfile takes those bytes for "
                             "data before the archive and reads every record that much further on")
    elif shift < 0:
        disagreements.append(f"the central directory runs {plural(-shift, 'byte')} into the end records")
    if zip64_problem:
        disagreements.append(zip64_problem)
    return _Directory(directory_offset, directory_size, count, disk)


def _end_record(source: Source, name: str, disagreements: list[str]) -> tuple[int, tuple]:
    """The end record's offset and its (disk, directory disk, entries on
    this disk, entries, directory size, directory offset): the last
    signature with a whole record after it, searched for over the longest
    comment back from the end, as miniz (and, but for the cases noted, zipfile)."""
    size = source.size
    tail_start = max(0, size - END.size)
    tail = source.read_exact(tail_start, size - tail_start)
    if not (tail.startswith(END_MAGIC) and tail.endswith(b"\0\0")):  # not an end record without a comment
        tail_start = max(0, size - END.size - 0xFFFF)
        tail = source.read_exact(tail_start, size - tail_start)
    at = tail.rfind(END_MAGIC, 0, max(0, len(tail) - END.size + len(END_MAGIC)))
    if at < 0:
        raise _unreadable(name, "no end of central directory record (truncated, or not a zip?)")
    end_at = tail_start + at
    _, *fields, comment = END.unpack_from(tail, at)
    if tail.find(END_MAGIC, at + 1) >= 0:
        disagreements.append("an end-record signature after the end record, which zipfile takes for the end record")
    elif end_at + END.size + comment != size:
        disagreements.append(f"{plural(size - end_at - END.size, 'byte')} after the end record, whose comment is "
                             f"{plural(comment, 'byte')} long")
    return end_at, tuple(fields)


def _zip64_end_record(source: Source, name: str, end_at: int) -> tuple[int, tuple] | None:
    """Where the zip64 end record is and its fields (as `_end_record`'s), if
    a locator just before the end record finds one where it points."""
    if end_at < LOCATOR.size + END64.size or source.read_exact(end_at - LOCATOR.size, 4) != LOCATOR_MAGIC:
        return None
    _, locator_disk, end64_at, disks = LOCATOR.unpack(source.read_exact(end_at - LOCATOR.size, LOCATOR.size))
    if end64_at > source.size - END64.size:
        raise _unreadable(name, "a zip64 locator pointing past the end of the archive")
    magic, record_size, _, _, *fields = END64.unpack(source.read_exact(end64_at, END64.size))
    if magic != END64_MAGIC:
        return None
    if record_size < END64.size - 12:
        raise _unreadable(name, "a zip64 end record that is too short")
    if disks != 1 or locator_disk != 0:
        raise _unreadable(name, "an archive spanning several disks")
    if max(fields[2:5]) > MASK:
        raise _unreadable(name, "a central directory larger than miniz reads")
    return end64_at, tuple(fields)


def _entries(source: Source, name: str, directory: _Directory, disagreements: list[str]) -> list[Entry]:
    """The `count` entries of the central directory, checked as miniz checks them."""
    data = source.read_exact(directory.offset, directory.size)
    entries, names, position = [], {}, 0
    for index in range(directory.count):
        if position + CENTRAL.size > len(data) or data[position : position + 4] != CENTRAL_MAGIC:
            raise _unreadable(name, f"central directory entry {index} is damaged")
        (_, _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length, comment_length, disk, _,
         external_attr, header_offset) = CENTRAL.unpack_from(data, position)
        start = position + CENTRAL.size
        after = start + name_length + extra_length + comment_length
        if after > len(data):
            raise _unreadable(name, f"central directory entry {index} runs past the directory")
        name_bytes = data[start : start + name_length]
        label = name_bytes.decode("utf-8", "replace")
        if MASK in (compressed, size, header_offset):
            extra = data[start + name_length : start + name_length + extra_length]
            size, compressed, header_offset = _zip64_values(extra, (size, compressed, header_offset), name, label)
        if (method == STORED and compressed != size) or (size and not compressed):
            raise _unreadable(name, f"{label}: {plural(compressed, 'byte')} on disk cannot hold its {size}")
        if disk == 0xFFFF or disk not in (directory.disk, 1):
            raise _unreadable(name, f"{label}: on another disk")
        if header_offset + LOCAL.size + compressed > source.size:
            raise _unreadable(name, f"{label} runs past the end of the archive (truncated?)")
        if flags & (MASKED | ENCRYPTED | STRONG | PATCH):
            raise _unreadable(name, f"{label} is encrypted or a patch, which torch.load cannot read")
        try:
            filename = name_bytes.decode("utf-8") if flags & UTF8 else name_bytes.decode("cp437")
        except UnicodeDecodeError:
            filename = label
            disagreements.append(f"{label!r} is flagged UTF-8 but is not, and zipfile cannot decode it")
        entry = Entry(filename, name_bytes, flags, method, crc, compressed, size, header_offset, external_attr,
                      directory.offset + position)
        if b"\0" in name_bytes:
            disagreements.append(f"{filename!r} holds a NUL, where zipfile cuts the name short")
        if entry.marked_folder and compressed:
            disagreements.append(f"{filename!r} is marked as a folder, for which torch.load reads none of its "
                                 f"{size} bytes")
        twin = names.setdefault(name_bytes.lower(), entry)
        if twin is not entry:
            alike = "" if twin.name_bytes == name_bytes else f" (and {twin.filename!r}, as miniz ignores case)"
            disagreements.append(f"two records named {filename!r}{alike}: miniz's lookup under torch.load and "
                                 "zipfile's (the last of them) may take different ones")
        entries.append(entry)
        position = after
    if position != len(data):
        counted = plural(directory.count, "directory entry", "directory entries")
        disagreements.append(f"the end record counts {counted}, which take {position} of "
                             f"its {plural(len(data), 'byte')}: zipfile reads entries on to the end")
    return entries


def _zip64_values(extra: bytes, values: tuple[int, int, int], name: str, label: str) -> tuple[int, int, int]:
    """(size, compressed size, local header offset), those that are MASK
    taken in turn from the zip64 field of `extra`; the first such field, as
    miniz and zipfile read it."""
    position = 0
    while position < len(extra):
        if position + 4 > len(extra):
            raise _unreadable(name, f"{label}: a damaged extra field")
        field, length = struct.unpack_from("<HH", extra, position)
        if position + 4 + length > len(extra):
            raise _unreadable(name, f"{label}: a damaged extra field")
        if field == ZIP64_EXTRA:
            found, stored = [], extra[position + 4 : position + 4 + length]
            for value in values:
                if value == MASK:
                    if len(stored) < 8:
                        raise _unreadable(name, f"{label}: a zip64 field too short for its sizes")
                    value, stored = struct.unpack_from("<Q", stored)[0], stored[8:]
                found.append(value)
            return found[0], found[1], found[2]
        position += 4 + length
    raise _unreadable(name, f"{label}: sizes or offset in a zip64 field it lacks")


def _read_local_header(source: Source, name: str, entry: Entry, disagreements: list[str]) -> None:
    """Where `entry`'s data starts, from its local header (read once), and
    whether that header tells a reader of local headers the same story."""
    head = source.pread(entry.header_offset, LOCAL.size + len(entry.name_bytes))
    if len(head) < LOCAL.size or head[:4] != LOCAL_MAGIC:
        raise _unreadable(name, f"{entry.filename}: no local header at offset {entry.header_offset}")
    _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length = LOCAL.unpack_from(head)
    entry.local_crc = crc
    entry.data_offset = entry.header_offset + LOCAL.size + name_length + extra_length
    if entry.end > source.size:
        raise _unreadable(name, f"{entry.filename} runs past the end of the archive (truncated?)")
    local_name = head[LOCAL.size : LOCAL.size + name_length]
    if name_length != len(entry.name_bytes) or local_name != entry.name_bytes or (flags ^ entry.flag_bits) & UTF8:
        disagreements.append(f"the local header of {entry.filename!r} names "
                             f"{local_name.decode('utf-8', 'replace')!r}{'...' if name_length > len(entry.name_bytes) else ''}")
    elif method != entry.compress_type:
        disagreements.append(f"the local header of {entry.filename!r} gives compression method {method}, the "
                             f"central directory {entry.compress_type}")
    elif not _same_sizes(entry, flags, crc, compressed, size):
        disagreements.append(f"the local header of {entry.filename!r} gives {compressed} bytes (CRC {crc:08x}), the "
                             f"central directory {entry.compress_size} (CRC {entry.CRC:08x})")


def _same_sizes(entry: Entry, flags: int, crc: int, compressed: int, size: int) -> bool:
    """Whether a local header's CRC and sizes agree with the central
    directory's: equal, or left for a data descriptor (zero, as torch.save
    writes them), or in a zip64 field (MASK)."""
    later = flags & DESCRIPTOR
    same_crc = crc == entry.CRC or (later and crc == 0)
    same_sizes = ((compressed, size) in ((entry.compress_size, entry.file_size), (MASK, MASK))
                  or (later and (compressed, size) == (0, 0)))
    return bool(same_crc and same_sizes)


def _check_layout(entries: list[Entry], directory: _Directory, disagreements: list[str]) -> None:
    """Records one after the other from the start of the archive, each
    followed by nothing but its data descriptor, then the central directory:
    no byte that two records share, or that none holds."""
    position, previous = 0, None
    for entry in [*sorted(entries, key=lambda e: e.header_offset), None]:
        start = directory.offset if entry is None else entry.header_offset
        gap = start - position
        what = "the central directory" if entry is None else repr(entry.filename)
        if gap < 0:
            disagreements.append(f"{what} starts inside {previous.filename!r}: two records share bytes")
            return
        allowed = (0, *DESCRIPTOR_SIZES) if previous is not None and previous.flag_bits & DESCRIPTOR else (0,)
        if gap not in allowed:
            place = "the start of the file" if previous is None else f"the end of {previous.filename!r}"
            disagreements.append(f"{gap} bytes between {place} and {what} belong to no record: a reader walking "
                                 "local headers from the start reads them")
            return
        if entry is not None:
            position, previous = entry.end, entry
