"""NumPy `.npz` archives (`numpy.savez`, `numpy.savez_compressed`): a zip
whose records are `.npy` files, one per array.

Each record is shown as the `.npy` file it holds, at its own path: a stored
record is served straight from the archive, a deflated one through a
seekable inflater (`sources.deflate`). An array that is a tensor (a dtype
ckptfs knows, C order) is listed as one, under its key (the record's name
without `.npy`, as `np.load` names it). Records are taken as np.load takes
them, through zipfile: of two records of one name, the last; a record
whose name no path can hold beside the others is left out alone.

Writable: the repack copies unchanged records as they are (compressed or
not, CRC kept), and those the mount left out; an edited record keeps its
compression (deflated while it is written, in blocks, if it was deflated),
and a new file takes the archive's: deflated in an archive of at least
as many deflated records as stored ones (`numpy.savez_compressed` deflates
them all), stored otherwise. A removed file's record is left out. `np.load` reads the result
as it reads what `numpy.savez` and `numpy.savez_compressed` write, and the
archive stays about the size its writer made it.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass

from ..errors import EditRefused, FormatError, RepackError
from ..humanize import plural
from ..limits import LIMITS
from ..pack.changes import is_edited
from ..sources.base import SeekableReader, Source
from ..tree import names, npy
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import PiecedTensor, PlacedTensor, Tensor, TensorFile
from .base import FileFormat, FileWriter, Opening, Pickles, WriterKind
from .torchzip import LOCAL_HEADER, ZIP_MAGIC, record_extent, record_source
from .zipout import Deflated, Record, ZipStream

SUFFIX = ".npy"
CENTRAL_SIGNATURE = b"PK\x01\x02"
#: what np.load looks for to read a record as an array (numpy.lib.format.MAGIC_PREFIX)
NPY_PREFIX = b"\x93NUMPY"
#: the most of a record read for its NPY header
HEADER_BYTES = 65536


def sniff(head: bytes) -> bool:
    """A zip whose first record is a `.npy` file."""
    if head[:4] != ZIP_MAGIC or len(head) < LOCAL_HEADER.size:
        return False
    name_length = LOCAL_HEADER.unpack_from(head)[9]
    return head[LOCAL_HEADER.size : LOCAL_HEADER.size + name_length].endswith(SUFFIX.encode())


def records_of(source: Source, name: str) -> list[zipfile.ZipInfo]:
    """Every record of the archive, in its order, as zipfile reads them
    (a name cut at its first NUL, as `np.load` sees it)."""
    try:
        return zipfile.ZipFile(_Bounded(source, name)).infolist()
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, ValueError, OSError,
            struct.error) as e:
        raise FormatError(name, f"not a readable zip archive: {e}") from None


class _Bounded(SeekableReader):
    """The archive as zipfile reads it, within the budgets. zipfile reads
    the central directory in one piece before it makes a record of each
    entry: a read longer than `max_header_bytes`, or one holding more entry
    signatures (at least one each) than `max_members`, is refused first."""

    def __init__(self, source: Source, name: str):
        super().__init__(source)
        self.name = name

    def read(self, n: int = -1) -> bytes:
        wanted = self.source.size - self.pos if n is None or n < 0 else n
        if wanted > LIMITS.header_bytes:
            raise FormatError(self.name, f"a central directory of {plural(wanted, 'byte')}, more than max_header_bytes "
                                         "(-o max_header_bytes raises the limit)")
        data = super().read(n)
        if data.count(CENTRAL_SIGNATURE) > LIMITS.members:
            raise FormatError(self.name, f"more than {plural(LIMITS.members, 'record')} (-o max_members raises the limit)")
        return data


@dataclass
class Layout:
    """What a mount shows of an archive: the tree, its tensors, notes, and
    the records a repack writes, in the archive's order, each with the path
    it is shown at, or None for one left out (named in a note), which a
    repack keeps as it is."""

    root: Dir
    placed: list[PlacedTensor]
    notes: list[str]
    records: list[tuple[zipfile.ZipInfo, str | None]]


def read(source: Source, name: str) -> Layout:
    """Each record at its path, as `np.load` reads it: of two records of
    the same name, the last (zipfile's `getinfo` takes it); a record whose
    name no path can hold next to the others is left out alone."""
    records = records_of(source, name)
    latest = {info.filename: info for info in records}
    layout = Layout(Dir(), [], [], [])
    for info in records:
        if latest[info.filename] is not info:
            layout.notes.append(f"{info.filename!r}: a later record has the same name; np.load reads that one, "
                                "shown here, and a repack leaves this one out")
            continue
        path, problem = _place(layout, source, info, name)
        layout.records.append((info, path))
        if problem:
            layout.notes.append(f"{info.filename!r} left out: {problem}; a repack keeps it as it is")
    return layout


def _place(layout: Layout, source: Source, info: zipfile.ZipInfo, name: str) -> tuple[str | None, str]:
    """Put one record in the tree: (its path, "") or, when it cannot be,
    (None, why; empty for a folder record that holds nothing)."""
    if info.filename.endswith("/"):
        return None, "a folder record that holds bytes" if info.file_size else ""
    parts = names.file_parts(info.filename)
    try:
        file, tensor, unreadable = record_file(record_source(source, info, name), info.filename)
        layout.root.subdir(parts[:-1]).add(parts[-1], file)
    except FormatError as e:
        return None, e.problem
    except PathConflict:
        return None, "another record needs its path (a file where it needs a folder, or the reverse)"
    if unreadable:
        layout.notes.append(f"{info.filename!r} is shown as the plain file it is: {unreadable} (np.load cannot "
                            "read it)")
    path = "/".join(parts)
    if tensor is not None:
        layout.placed.append(PlacedTensor(path, tensor))
    return path, ""


def record_file(data: Source, record: str) -> tuple[File, Tensor | None, str]:
    """A record's file, its tensor when it is one, and why np.load cannot
    read it as an array when it starts as NPY does but cannot be (empty
    otherwise). np.load returns the bytes of a record that does not start
    as NPY does, so such a record is a plain file whatever its name."""
    file = File(Content([Extent(data, 0, data.size)]))
    if not record.endswith(SUFFIX):
        return file, None, ""
    head = data.pread(0, min(data.size, HEADER_BYTES))
    if not head.startswith(NPY_PREFIX):
        return file, None, ""
    try:
        descr, shape, start = npy.parse_header(head, record)
    except ValueError as e:
        return file, None, str(e)
    key = record[: -len(SUFFIX)]
    dtype = npy.dtype_of(descr, None)
    nbytes = dtype.nbytes(math.prod(shape)) if dtype is not None else None
    if nbytes is None or start + nbytes != data.size:
        return file, None, ""  # an array but no tensor (objects, strings, structured): the file as it is
    stored = Extent(data, start, nbytes)
    # the record's bytes as np.load reads them: its own NPY header, then its data
    tensor = PiecedTensor(key, dtype, tuple(shape), stored, (stored,), header=head[:start])
    return TensorFile(tensor), tensor, ""


class Writer(FileWriter):
    adds_tensors = True  # a new `.npy` file is a new array of the archive

    def __init__(self, source: Source, name: str, layout: Layout):
        self.source, self.name, self.records = source, name, layout.records

    def write(self, files: dict, before: dict, output) -> None:
        self._archive(files).write(output)

    def check(self, path: str, node: File) -> None:
        if path.endswith(SUFFIX):
            try:
                npy.parse_header(node.content.read(0, HEADER_BYTES), path)
            except ValueError as e:
                raise EditRefused(f"{e}; np.load could not read it from the archive") from None

    def _archive(self, files: dict) -> ZipStream:
        """The records shown (edited ones written anew, removed ones left
        out) and those left out of the mount, in the archive's order, then
        new files by path: np.load reads in the result what the mount
        showed."""
        shown = {path: info.filename for info, path in self.records if path is not None}
        new, problems = {}, []
        for path in sorted(files):
            node = files[path]
            if not isinstance(node, (File, Dir)):
                problems.append(f"{path}: an archive holds files only")
            elif isinstance(node, File) and (path not in shown or is_edited(node)):
                try:
                    new[path] = shown.get(path) or "/".join(names.unescape(p) for p in path.split("/"))
                except ValueError as e:
                    problems.append(f"{path}: {e}")
        if problems:
            raise RepackError(f"cannot write {self.name}: " + "; ".join(problems))
        taken = set(new.values())
        out = []
        for info, path in self.records:
            if path is None:  # left out of the mount: kept, unless a new file takes its name
                if info.filename not in taken:
                    out.append(self._copied(info))
            elif path in new:
                out.append(self._anew(new.pop(path), files[path], info.compress_type))
            elif path in files:
                out.append(self._copied(info))
        method = self._prevailing_method()
        out += [self._anew(record, files[path], method) for path, record in new.items()]
        return ZipStream(out)

    def _prevailing_method(self) -> int:
        """What a new record is written as: deflated in an archive of at
        least as many deflated records as stored ones (savez_compressed
        deflates them all), stored otherwise (savez, or no records)."""
        methods = [info.compress_type for info, _ in self.records]
        deflated = methods.count(zipfile.ZIP_DEFLATED)
        return zipfile.ZIP_DEFLATED if deflated and deflated >= methods.count(zipfile.ZIP_STORED) else zipfile.ZIP_STORED

    @staticmethod
    def _anew(record: str, node: File, method: int) -> Record | Deflated:
        """A file written anew, with the compression its record had (a
        shown record is stored or deflated: no other kind is read)."""
        if method == zipfile.ZIP_DEFLATED:
            return Deflated(record, node.content.size, node.content)
        return Record(record, node.content.size, piece=node.content)

    def _copied(self, info: zipfile.ZipInfo) -> Record:
        """A record as it is: compressed or not, its CRC kept."""
        extent = record_extent(self.source, info, self.name)
        return Record(info.filename, extent.length, piece=extent, crc=info.CRC, method=info.compress_type,
                      size=info.file_size)


def open_file(opening: Opening) -> Checkpoint:
    source, st = opening.source, opening.stat
    layout = read(source, source.path)
    ckpt = Checkpoint("numpy .npz", source.path, st, layout.root, raw_mirror(source), layout.placed, layout.notes)
    ckpt.writer = Writer(source, source.path, layout)
    return ckpt


FORMAT = FileFormat("numpy .npz", sniff, open_file, "NumPy .npz archives (savez, savez_compressed)", WriterKind.FILE,
                    pickles=Pickles.ZIP)
