"""torch.save zip archives (.pt, .pth, .bin, .ckpt, model_weights.ckpt).

The records are those torch.load finds (`torchzip_records`, miniz's rules);
an archive that other zip readers would read otherwise is refused. The
pickle `data.pkl` is read by the inert interpreter; each storage is a
STORED record `data/<key>` whose bytes are served straight from the archive,
unchecked, as torch.load serves them. A view with strides is gathered on
read (`gather.Gather`).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..pack.changes import changes, is_edited
from ..pack.crc import combine
from ..pack.output import COPY_BLOCK
from ..pickle.inert import Global, InertUnpickler, PickleError
from ..pickle.objtree import ObjectTree
from ..pickle.torch_classes import KNOWN, TensorRef, persistent_load, storable
from ..sources.base import Source
from ..sources.deflate import DeflateSource
from ..tree import npy, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.gather import Gather
from ..tree.nodes import Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import PiecedTensor, PlacedTensor
from .base import FileFormat, FileWriter, Opening, Pickles, WriterKind
from .torchzip_records import DESCRIPTOR, STORED, Entry, ZipRecords, read_records

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def sniff(head: bytes) -> bool:
    return head[:4] == ZIP_MAGIC


class NotTorchZip(FormatError):
    """A zip archive that is not a torch.save checkpoint."""


class PickledCheckpoint:
    """A torch.save checkpoint read inertly: `obj` and `globals` from its
    pickle, `storage(key)` for the bytes of each storage. Subclasses read one
    container format (zip, legacy)."""

    source: Source
    name: str
    obj: object
    globals: list[Global]

    def storage(self, key: str) -> Extent:
        raise NotImplementedError

    def storage_keys(self) -> list[str]:
        raise NotImplementedError

    def tensor_piece(self, ref: TensorRef, name: str):
        """The C-order bytes of a tensor: an `Extent` of its storage when the
        view is contiguous, a `Gather` when it has strides; and the storage."""
        storage = self.storage(ref.storage.key)
        itemsize = ref.dtype.bits // 8
        if ref.dtype.bits % 8 or itemsize == 0:
            raise FormatError(self.name, f"tensor {name!r}: dtype {ref.dtype.name} has no byte layout")
        numel = math.prod(ref.shape)
        needed = (ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) + 1) * itemsize if numel else 0
        if needed > storage.length:
            raise FormatError(
                self.name, f"tensor {name!r} needs {needed} bytes of storage {ref.storage.key!r}, which holds {storage.length}"
            )
        if _is_c_contiguous(ref.shape, ref.stride):
            return Extent(storage.source, storage.offset + ref.offset * itemsize, numel * itemsize), storage
        return Gather(storage.source, storage.offset, itemsize, ref.offset, ref.shape, ref.stride), storage

    def tensor(self, ref: TensorRef, name: str) -> PiecedTensor:
        """The record of the tensor `ref` at key `name`: its piece, and
        where its storage lies."""
        piece, storage = self.tensor_piece(ref, name)
        start = storage.offset + ref.offset * (ref.dtype.bits // 8)
        path, first = storage.source.locate(storage.offset)
        facts = ((xattrs.SOURCE, path), (xattrs.RANGE, f"{first}-{first + storage.length}"),
                 (xattrs.STORAGE, f"{ref.storage.key} offset {ref.offset} stride {list(ref.stride)}"))
        return PiecedTensor(name, ref.dtype, ref.shape, Extent(storage.source, start, piece.length), (piece,), facts)

    def tree(self) -> tuple[Dir, list[PlacedTensor]]:
        builder = ObjectTree(self.tensor)
        try:
            root = builder.build(self.obj)
        except RecursionError:
            raise FormatError(self.name, "data.pkl: containers nested too deeply to show") from None
        except PathConflict as e:
            raise FormatError(self.name, f"data.pkl: two keys need the same path {e}") from None
        return root, builder.placed


class TorchZip(PickledCheckpoint):
    """The records and the pickle of one torch.save archive, found as
    torch.load finds them (`torchzip_records`); an archive that other zip
    readers would read otherwise is refused (`ReadDifferently`)."""

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        archive = read_records(source, name)
        archive.require_agreement()
        folder = archive_folder(archive, name)
        self.prefix = archive.entries[0].filename.partition("/")[0] + "/"  # as the names in `records` are decoded
        pickled = archive.find(folder + b"data.pkl")
        if any(entry.name_bytes == folder + b"constants.pkl" for entry in archive.entries):  # as torch.load tells them
            raise NotTorchZip(name, "a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
        if pickled is None:
            raise NotTorchZip(name, "zip archive without data.pkl: not a torch.save checkpoint")
        byteorder = archive.find(folder + b"byteorder")
        if byteorder is not None:
            order = archive.read(byteorder, 16)
            archive.check_crc(byteorder, order)
            archive.require_agreement()
            if order != b"little":
                raise FormatError(name, "big-endian torch checkpoint: not supported" if order == b"big" else
                                        f"byteorder record holds {order!r}, which torch.load refuses")
        if pickled.file_size > LIMITS.pickle_bytes:
            raise FormatError(name, f"{pickled.filename} is {plural(pickled.file_size, 'byte')}, above the limit of "
                                    f"{LIMITS.pickle_bytes} (-o max_pickle_bytes raises it)")
        data = archive.read(pickled, LIMITS.pickle_bytes)
        archive.check_crc(pickled, data)
        archive.require_agreement()
        self.archive, self.pickle_name = archive, pickled.filename
        self.records = {entry.filename: entry for entry in archive.entries}
        try:
            unpickler = InertUnpickler(data, persistent_load=persistent_load, known=KNOWN)
            self.obj = unpickler.load()
        except PickleError as e:
            raise FormatError(name, f"data.pkl: {e}") from None
        self.globals: list[Global] = unpickler.globals
        self._folder = folder
        self._storages: dict[str, Extent] = {}

    def storage(self, key: str) -> Extent:
        """The bytes of storage `key`: the record torch.load reads for it."""
        if key in self._storages:
            return self._storages[key]
        entry = self.archive.find(self._folder + f"data/{key}".encode())
        if entry is None:
            raise FormatError(self.name, f"storage {key!r} has no record data/{key}")
        if entry.compress_type != STORED:
            raise FormatError(self.name, f"storage {key!r} is compressed; torch.save writes it stored")
        extent = self._storages[key] = self.record_data(entry)
        return extent

    def storage_keys(self) -> list[str]:
        storages = self.prefix + "data/"
        return [name[len(storages) :] for name in self.records if name.startswith(storages)]

    def record_data(self, entry: Entry) -> Extent:
        """A record's stored bytes, where its local header (read once, when
        the archive was opened) says they start."""
        return Extent(self.source, entry.data_offset, entry.compress_size)


def archive_folder(archive: ZipRecords, name: str) -> bytes:
    """The archive's folder, with its slash: the first record's, every record
    in it (torch.load refuses an archive with a record elsewhere)."""
    first = archive.entries[0].name_bytes if archive.entries else b""
    if b"/" not in first:
        raise NotTorchZip(name, "zip archive whose first record is in no folder: not a torch.save checkpoint")
    folder = first.partition(b"/")[0] + b"/"
    stray = next((entry for entry in archive.entries if not entry.name_bytes.startswith(folder)), None)
    if stray is not None:
        raise FormatError(name, f"{stray.filename!r} is outside the folder {archive.entries[0].filename.partition('/')[0]!r}"
                                " of the archive's first record, so torch.load refuses the archive")
    return folder


def record_extent(source: Source, info: zipfile.ZipInfo, name: str) -> Extent:
    """The stored (maybe compressed) bytes of a zip record, located through
    its local header; FormatError naming `name` if they are not there."""
    header = source.read_exact(info.header_offset, LOCAL_HEADER.size)
    fields = LOCAL_HEADER.unpack(header)
    if fields[0] != ZIP_MAGIC:
        raise FormatError(name, f"{info.filename}: no local header at offset {info.header_offset}")
    start = info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10]
    if start + info.compress_size > source.size:
        raise FormatError(name, f"{info.filename} runs past the end of the archive (truncated?)")
    return Extent(source, start, info.compress_size)


def find_record(records: dict[str, zipfile.ZipInfo], name: str) -> str | None:
    """The record `torch.load` reads for `name`: that name, or one that
    differs only in case (miniz's lookup ignores case)."""
    if name in records:
        return name
    return next((n for n in records if n.lower() == name.lower()), None)


def record_source(source: Source, info: zipfile.ZipInfo, name: str) -> Source:
    """A record's uncompressed bytes: a slice of the archive, or an inflater over one."""
    extent = record_extent(source, info, name)
    stored = source.slice(extent.offset, extent.length)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise FormatError(name, f"{info.filename}: stored record of {plural(info.compress_size, 'byte')} claims "
                                    f"{info.file_size}")
        return stored
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return DeflateSource(stored, info.file_size, f"{name}:{info.filename}")
    raise FormatError(name, f"{info.filename}: compression method {info.compress_type} is not supported "
                            "(ckptfs reads stored and deflated records, which torch and numpy write)")


def expand_nested(source: Source, name: str, notes: list[str]):
    """A torch.save zip inside another checkpoint (`FileFormat.nest`, once
    `sniff` said yes), expanded: (folder, its tensors, its pickle globals),
    or None to keep it a plain file. One that looks like a torch zip but
    cannot be read stays plain, and `notes` says why."""
    try:
        archive = TorchZip(source, f"{source.path}:{name}")
        folder, tensors = archive.tree()
    except NotTorchZip:
        return None
    except FormatError as e:
        notes.append(f"{name} is shown as a plain file: {e.problem}")
        return None
    folder.writer = Writer(source, archive.name)  # the outer format's writer asks it for the member's bytes
    return folder, tensors, [g.path for g in archive.globals]


def _is_c_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


# ---------------------------------------------------------------- the writer

DESCRIPTOR_MAGIC = b"PK\x07\x08"


class Writer(FileWriter):
    """Writes an edited tree of a torch.save zip. Tensor files rewritten with
    the same shape and dtype (np.save, `mmap` writes) are patched in: the
    archive is copied as it is but for those storage bytes and the CRC-32
    of their records (in the data descriptor, the central directory and,
    where set, the local header). Any other edit (tensors added, removed or
    reshaped, YAML views changed) rewrites data.pkl and the archive
    (`torch_rewrite`)."""

    adds_tensors = True

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name

    def check(self, path: str, node: File) -> None:
        from .torch_rewrite import check  # written only at repack: not imported at mount

        check(lambda: TorchZip(self.source, self.name), path, node, storable, "torch.save")

    def check_move(self, moved: list) -> None:
        from .torch_rewrite import check_move  # written only at repack: not imported at mount

        check_move(lambda: TorchZip(self.source, self.name), moved)

    def write(self, files: dict, before: dict, output) -> None:
        blob = self.blob(files, before)
        if blob is None:
            output.copy(self.source, 0, self.source.size)
        else:
            blob.write(output)

    def blob(self, files: dict, before: dict):
        """The edited archive's bytes, or None if nothing in it changed."""
        from .torch_rewrite import rewrite_blob  # written only at repack: not imported at mount

        changed = changes(before, files)
        if not changed:
            return None
        patches = self.patches(files, before, changed)
        if patches is not None:
            return _Patched(self, patches)
        return rewrite_blob(TorchZip(self.source, self.name), files, before, changed)

    def patches(self, files: dict, before: dict, changed: list[str]) -> dict[int, tuple[int, object, int]] | None:
        """{offset in the archive: (length, edited content, where its data
        starts)} for the `changed` paths, or None if one is not a same-layout
        tensor rewrite."""
        patches = {}
        for path in changed:
            after = files.get(path)
            if path not in before or not is_edited(after):
                return None
            try:
                offset, length, start = _tensor_patch(path, before[path][1], after.content)
            except ValueError:
                return None
            patches[offset] = (length, after.content, start)
        ends = sorted((o, o + p[0]) for o, p in patches.items())
        if any(b < a for (_, a), (b, _) in zip(ends, ends[1:])):
            return None  # views of one storage: each gets its own in a rewrite
        return patches

    def write_patches(self, patches: dict, output) -> None:
        replacements = [(o, length, ("data", content, start)) for o, (length, content, start) in patches.items()]
        for record_start, record_end, crc_fields in self._records():
            inside = [o for o in patches if record_start <= o < record_end]
            if inside:
                crc = self._crc(record_start, record_end, patches, inside)
                replacements += [(f, 4, ("bytes", struct.pack("<I", crc))) for f in crc_fields]
        position = 0
        for offset, length, (kind, *what) in sorted(replacements, key=lambda r: r[0]):
            output.copy(self.source, position, offset - position)
            if kind == "bytes":
                output.write(what[0])
            else:
                output.copy_content(what[0], what[1], length)
            position = offset + length
        output.copy(self.source, position, self.source.size - position)

    def _records(self):
        """(data start, data end, offsets of its CRC fields) for every record."""
        for entry in read_records(self.source, self.name).entries:
            fields = [entry.central_offset + 16]  # the central directory's CRC
            if entry.local_crc or not entry.flag_bits & DESCRIPTOR:
                fields.append(entry.header_offset + 14)  # the local header's CRC, when it carries one
            if entry.flag_bits & DESCRIPTOR:
                magic = self.source.read_exact(entry.end, 4) == DESCRIPTOR_MAGIC
                fields.append(entry.end + 4 if magic else entry.end)
            yield entry.data_offset, entry.end, fields

    def _crc(self, start: int, end: int, patches: dict, inside: list[int]) -> int:
        crc, position = 0, start
        for offset in sorted(inside) + [end]:
            for pos in range(position, offset, COPY_BLOCK):
                crc = zlib.crc32(self.source.read_exact(pos, min(COPY_BLOCK, offset - pos)), crc)
            if offset == end:
                break
            length, content, data = patches[offset]
            crc = _content_crc(content, data, length, crc)
            position = offset + length
        return crc


def _content_crc(content, offset: int, length: int, crc: int) -> int:
    """`crc` carried on over `length` bytes of an edited file from `offset`:
    from the CRC-32 taken as they were written when there is one, else read."""
    known = getattr(content, "crc32", None)
    taken = known(offset, length) if known is not None else None
    if taken is not None:
        return combine(crc, taken, length)
    for pos in range(0, length, COPY_BLOCK):
        crc = zlib.crc32(content.read(offset + pos, min(COPY_BLOCK, length - pos)), crc)
    return crc


class _Patched:
    def __init__(self, writer: Writer, patches: dict):
        self.writer, self.patches, self.size = writer, patches, writer.source.size

    def write(self, output) -> None:
        self.writer.write_patches(self.patches, output)


def _tensor_patch(path: str, original: Content, edited) -> tuple[int, int, int]:
    """Where an edited tensor file's data goes: (archive offset, length, data
    start in the edited file). ValueError unless shape, dtype and layout stay."""
    pieces = original.pieces if isinstance(original, Content) else []
    if not (path.endswith(".npy") and len(pieces) == 2 and isinstance(pieces[1], Extent)):
        raise ValueError(f"{path}: not a tensor stored in one piece")
    piece = pieces[1]
    old_descr, old_shape, _ = npy.parse_header(pieces[0], path)
    descr, shape, start = npy.parse_header(edited.read(0, 65536), path)
    same_type = descr == old_descr or (descr[1:2] == "V" and edited.size - start == piece.length)
    if shape != old_shape or not same_type or edited.size - start != piece.length:
        raise ValueError(f"{path}: not of the shape and dtype it had")
    return piece.offset, piece.length, start


def open_pickled(archive: PickledCheckpoint, fmt: str, st: os.stat_result) -> Checkpoint:
    """The checkpoint of a torch.save file, zip or legacy."""
    root, placed = archive.tree()
    pickle_globals = [g.path for g in archive.globals]
    return Checkpoint(fmt, archive.source.path, st, root, raw_mirror(archive.source), placed, pickle_globals=pickle_globals)


def open_file(opening: Opening) -> Checkpoint:
    source, st = opening.source, opening.stat
    ckpt = open_pickled(TorchZip(source, source.path), "torch (zip)", st)
    ckpt.writer = Writer(source, source.path)
    return ckpt


FORMAT = FileFormat("torch.save (zip)", sniff, open_file, "torch.save files (.pt, .pth, .bin, Lightning .ckpt)",
                    WriterKind.FILE, nest=expand_nested, pickles=Pickles.ZIP)
