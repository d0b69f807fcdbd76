"""NumPy `.npz` archives (`numpy.savez`, `numpy.savez_compressed`): a zip
whose records are `.npy` files, one per array.

Each record is shown as the `.npy` file it holds, at its own path: a stored
record is served straight from the archive, a deflated one through a
seekable inflater (`sources.deflate`). An array that is a tensor (a dtype
ckptfs knows, C order) is listed as one, under its key (the record's name
without `.npy`, as `np.load` names it).

Writable: the repack copies unchanged records as they are (compressed or
not, CRC kept) and writes edited and new files as stored records; a removed
file's record is left out. `np.load` reads the result as it reads what
`numpy.savez` writes.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile

from ..errors import EditRefused, FormatError, RepackError
from ..sources.base import FileSource, SeekableReader, Source
from ..tree import names, npy
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import PlacedTensor, Tensor, shape_text
from ..write.diff import is_edited
from .base import FileFormat, FileWriter
from .torchzip import LOCAL_HEADER, ZIP_MAGIC, record_extent, record_source
from .zipout import Record, ZipBlob

SUFFIX = ".npy"
#: the most of a record read for its NPY header
HEADER_BYTES = 65536


def sniff(head: bytes) -> bool:
    """A zip whose first record is a `.npy` file."""
    if head[:4] != ZIP_MAGIC or len(head) < LOCAL_HEADER.size:
        return False
    name_length = LOCAL_HEADER.unpack_from(head)[9]
    return head[LOCAL_HEADER.size : LOCAL_HEADER.size + name_length].endswith(SUFFIX.encode())


def records_of(source: Source, name: str) -> list[zipfile.ZipInfo]:
    """The records of the archive, folders left out."""
    try:
        records = [i for i in zipfile.ZipFile(SeekableReader(source)).infolist() if not i.filename.endswith("/")]
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, ValueError, OSError,
            struct.error) as e:
        raise FormatError(name, f"not a readable zip archive: {e}") from None
    return records


def read(source: Source, name: str) -> tuple[Dir, list[PlacedTensor], list[str]]:
    """The tree of an archive: every record at its path, its tensors, and notes."""
    records = records_of(source, name)
    root, placed, notes = Dir(), [], []
    for info in records:
        if not info.filename:
            notes.append("a record with no name left out")
            continue
        try:
            data = record_source(source, info, name)
            file, tensor = _record_file(data, info.filename, name)
            parts = names.file_parts(info.filename)
            root.subdir(parts[:-1]).add(parts[-1], file)
        except FormatError as e:
            notes.append(f"{info.filename} left out: {e.problem}")
            continue
        except PathConflict:
            notes.append(f"{info.filename} left out: another record needs the same path")
            continue
        if tensor is not None:
            placed.append(PlacedTensor("/".join(parts), tensor))
    return root, placed, notes


def _record_file(data: Source, record: str, name: str) -> tuple[File, Tensor | None]:
    file = File(Content([Extent(data, 0, data.size)]))
    if not record.endswith(SUFFIX):
        return file, None
    key = record[: -len(SUFFIX)]
    head = data.pread(0, min(data.size, HEADER_BYTES))
    try:
        descr, shape, start = npy.parse_header(head, record)
    except ValueError as e:
        raise FormatError(name, str(e)) from None
    dtype = npy.dtype_of(descr, None)
    nbytes = dtype.nbytes(math.prod(shape)) if dtype is not None else None
    if nbytes is None or start + nbytes != data.size:
        return file, None  # an array but no tensor (objects, strings, structured): the file as it is
    tensor = Tensor(key, dtype, tuple(shape), Extent(data, start, nbytes))
    # the same bytes, as every tensor's file holds them: its NPY header, then its data
    xattrs = {"ckptfs.name": key, "ckptfs.dtype": dtype.name, "ckptfs.shape": shape_text(shape)}
    return File(Content([head[:start], tensor.data]), xattrs=xattrs), tensor


class Writer(FileWriter):
    adds_tensors = True  # a new `.npy` file is a new array of the archive

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name

    def write(self, files: dict, before: dict, output) -> None:
        self._archive(files).write(output)

    def check(self, path: str, node: File) -> None:
        if path.endswith(SUFFIX):
            try:
                npy.parse_header(node.content.read(0, HEADER_BYTES), path)
            except ValueError as e:
                raise EditRefused(f"{e}; np.load could not read it from the archive") from None

    def _archive(self, files: dict) -> ZipBlob:
        """Unchanged records first, in the archive's order, then the rest by path."""
        originals = {"/".join(names.file_parts(i.filename)): i for i in records_of(self.source, self.name)}
        out, problems = [], []
        paths = [p for p in originals if p in files] + sorted(p for p in files if p not in originals)
        for path in paths:
            node = files[path]
            if isinstance(node, Dir):
                continue
            if not isinstance(node, File):
                problems.append(f"{path}: an archive holds files only")
                continue
            info = originals.get(path)
            if info is not None and not is_edited(node):
                extent = record_extent(self.source, info, self.name)
                out.append(Record(info.filename, extent.length, piece=extent, crc=info.CRC,
                                  method=info.compress_type, size=info.file_size))
            else:
                try:
                    record = "/".join(names.unescape(p) for p in path.split("/"))
                except ValueError as e:
                    problems.append(f"{path}: {e}")
                    continue
                out.append(Record(record, node.content.size, piece=node.content))
        if problems:
            raise RepackError(f"cannot write {self.name}: " + "; ".join(problems))
        return ZipBlob(out)


def open_file(source: FileSource, st: os.stat_result, cache_dir: str) -> Checkpoint:
    root, placed, notes = read(source, source.path)
    ckpt = Checkpoint("numpy .npz", source.path, st, root, raw_mirror(source), placed, notes)
    ckpt.writer = Writer(source, source.path)
    return ckpt


FORMAT = FileFormat("numpy .npz", sniff, open_file)
