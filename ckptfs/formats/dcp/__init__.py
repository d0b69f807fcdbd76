"""torch.distributed.checkpoint directories: `.metadata` plus `.distcp` shards.

`.metadata` (or, for a save without rank coordination, one `__N.metadata`
per rank) is a pickle of `Metadata`, read by the inert interpreter. Each
chunk of a tensor is a byte range of a `.distcp` file holding a complete
torch.save zip of that chunk, possibly zstd-compressed, or a tensor of the
safetensors block the `safetensors` serialization format ends each file
with. Every tensor appears once, consolidated, at its fully qualified name;
each `.distcp` file also appears as a read-only folder of the chunks it stores.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass, field

from ...errors import EditRefused, FormatError, RepackError
from ...pickle.inert import Call, Global, InertUnpickler, PickleError
from ...pickle.pyobjects import to_yaml
from ...pickle.torch_classes import KNOWN, TensorRef, new_size, new_tensor
from ...pickle.torch_classes import storable as torch_storable
from ...sources.base import FileSource, Source
from ...sources.zstd import ZstdSource
from ...tree import names, npy
from ...tree.checkpoint import Checkpoint
from ...tree.dtypes import BY_NAME, BY_TORCH, DType
from ...tree.nodes import Content, Dir, Extent, File, LazyDir
from ...tree.rawfiles import raw_file
from ...tree.tensors import PlacedTensor, Tensor
from ...write.diff import below, is_edited, same_bytes
from ...write.output import write_new_file
from .. import safetensors, torchzip
from ..base import DirectoryFormat, DirectoryWriter, nested_writer
from .assemble import Assembled, Chunk, covers_exactly, row_pieces

METADATA = ".metadata"
_RANK_METADATA = re.compile(r"__(\d+)\.metadata")
#: Megatron-core's key for one shard of a ShardedObject: `key/shard_<offset>_<shape>`
_SHARDED_OBJECT = re.compile(r"(.+)/(shard_[0-9.]+_[0-9.]+)")


def is_metadata(name: str) -> bool:
    return name == METADATA or _RANK_METADATA.fullmatch(name) is not None


def metadata_names(file_names) -> list[str]:
    """The metadata files to read: the global `.metadata`, or else every
    rank's `__N.metadata` (a save with `use_collectives=False`), by rank."""
    if METADATA in file_names:
        return [METADATA]
    ranks = [n for n in file_names if _RANK_METADATA.fullmatch(n)]
    return sorted(ranks, key=lambda n: int(_RANK_METADATA.fullmatch(n).group(1)))


def sniff(path: str) -> bool:
    return any(is_metadata(n) and os.path.isfile(os.path.join(path, n)) for n in os.listdir(path))


def has_shards(path: str) -> bool:
    return any(name.endswith(".distcp") for name in os.listdir(path))


def open_dir(path: str) -> Checkpoint:
    st = os.stat(path)
    files = {
        name: FileSource(os.path.join(path, name))
        for name in sorted(os.listdir(path))
        if os.path.isfile(os.path.join(path, name))
    }
    chunks_of: dict = {}
    fqn_of: dict = {}
    root, placed, notes, audit = expand(path, files, chunks_of, fqn_of)
    raw = Dir()
    for name, source in files.items():
        leaf = names.file_parts(name)[0]
        raw.add(leaf, raw_file(source, 0, source.size, mtime_ns=source.stat.st_mtime_ns))
        if is_metadata(name) or name.endswith(".distcp") or leaf in root.children:
            continue
        # the directory's other files: Megatron's metadata.json as it is, common.pt expanded
        node, inner_tensors, inner_audit = _other_file(source, name, notes)
        root.add(leaf, node)
        placed += [PlacedTensor(f"{leaf}/{p.path}", p.tensor) for p in inner_tensors]
        audit += [g for g in inner_audit if g not in audit]
    ckpt = Checkpoint("torch.distributed.checkpoint", path, st, root, raw, placed, notes, audit)
    ckpt.writer = Writer(path, files, chunks_of, fqn_of)
    return ckpt


def _other_file(source: FileSource, name: str, notes: list[str]):
    """A file beside the shards: (node, its tensors, its pickle globals)."""
    expanded = torchzip.expand_nested(source, name, notes)
    if expanded is not None:
        return expanded
    return raw_file(source, 0, source.size, mtime_ns=source.stat.st_mtime_ns), [], []


def expand(name: str, files: dict[str, Source], chunks_of: dict | None = None, fqn_of: dict | None = None):
    """The tree of a distributed checkpoint whose files are `files` (by their
    names in its directory): a directory on disk, or members of a tar.
    Returns (folder, placed tensors, notes, pickle globals). For the writer,
    `chunks_of`, if given, receives each tensor file's chunks, and `fqn_of`
    the key of each tensor and item file (by id of the file)."""
    metadata = _Metadata.read(name, files)
    reader = _Reader(name, files)
    if chunks_of is not None:
        reader.chunks_of = chunks_of
    if fqn_of is not None:
        reader.fqn_of = fqn_of
    root = Dir()
    notes: list[str] = []
    placed: list[PlacedTensor] = []
    for fqn in sorted(metadata.items):
        item = metadata.items[fqn]
        try:
            if isinstance(item, TensorMeta):
                file, tensor = reader.tensor(fqn, item, metadata.storage)
                parts = names.tensor_path(fqn)
                root.subdir(parts[:-1]).add(parts[-1], file)
                placed.append(PlacedTensor("/".join(parts), tensor))
            else:
                suffix, file = reader.bytes_item(fqn, metadata.storage)
                parts = _item_path(fqn, suffix)
                root.subdir(parts[:-1]).add(parts[-1], file)
        except FormatError as e:
            notes.append(f"{fqn}: {e}")
    notes += metadata.notes
    for shard, chunks in sorted(reader.shard_chunks.items()):
        subdirs = len({c.parts[0] for c in chunks if len(c.parts) > 1})
        folder = LazyDir(functools.partial(_fill_shard, chunks), subdirs, readonly=True)
        root.add(names.file_parts(shard)[0], folder)
    return root, placed, notes, metadata.globals


@dataclass(frozen=True)
class ShardChunk:
    """One chunk as its shard folder shows it."""

    parts: list[str]  # its tensor's name split at dots, not yet escaped
    fqn: str
    chunk: Chunk
    dtype: DType


def _fill_shard(chunks: list[ShardChunk], folder: Dir) -> None:
    """The chunk files of one shard folder, each at its tensor's path with
    its global offsets in its name: `weight@10_0.npy`."""
    for c in chunks:
        offsets, sizes, piece = c.chunk.offsets, c.chunk.sizes, c.chunk.piece
        xattrs = {"ckptfs.name": c.fqn, "ckptfs.dtype": c.dtype.name, "ckptfs.shape": _json_list(sizes),
                  "ckptfs.offsets": _json_list(offsets)}
        header = npy.header(*npy.served_layout(c.dtype, sizes, piece.length))
        leaf = names.escape(c.parts[-1], f"@{'_'.join(map(str, offsets))}.npy")
        parent = folder.subdir([names.escape(p) for p in c.parts[:-1]])
        parent.add(leaf, File(Content([header, piece]), xattrs=xattrs))


def _item_path(fqn: str, suffix: str) -> list[str]:
    """Path parts of a non-tensor item. A Megatron ShardedObject shard
    (`decoder.layers.x._extra_state/shard_0.1_1.4`) is a file named after the
    shard in the folder of its key."""
    sharded = _SHARDED_OBJECT.fullmatch(fqn)
    if sharded:
        return names.tensor_path(sharded.group(1), suffix="") + [names.escape(sharded.group(2), suffix)]
    return names.tensor_path(fqn, suffix=suffix)


@dataclass
class TensorMeta:
    dtype: DType
    shape: tuple[int, ...]
    #: chunk offsets -> sizes, in the order the metadata lists them
    chunks: dict[tuple[int, ...], tuple[int, ...]] = field(default_factory=dict)


@dataclass
class _Metadata:
    """What the metadata file(s) say: each item (a TensorMeta, or None for a
    bytes item) and where each chunk or item is stored."""

    items: dict[str, TensorMeta | None]
    storage: dict[tuple[str, tuple[int, ...] | None], dict]
    globals: list[str]
    notes: list[str]

    @classmethod
    def read(cls, name: str, files: dict[str, Source]) -> _Metadata:
        found = metadata_names(files)
        if not found:
            raise FormatError(f"{name}/{METADATA}", "missing")
        merged = cls({}, {}, [], [])
        for metadata_name in found:
            path = f"{name}/{metadata_name}"
            source = files[metadata_name]
            try:
                unpickler = InertUnpickler(source.read_exact(0, source.size), known=KNOWN)
                merged._add(path, _fields(unpickler.load()))
            except (PickleError, KeyError, TypeError, AttributeError, ValueError, OSError) as e:
                raise FormatError(path, f"not a readable distributed checkpoint metadata file ({e})") from None
            merged.globals += [g.path for g in unpickler.globals if g.path not in merged.globals]
        return merged

    def _add(self, path: str, metadata: dict) -> None:
        for index, info in metadata["storage_data"].items():
            index, info = _fields(index), _fields(info)
            offset = tuple(index["offset"]) if index.get("offset") is not None else None
            self.storage.setdefault((index["fqn"], offset), info)
        for fqn, item in metadata["state_dict_metadata"].items():
            if not (isinstance(item, Call) and item.path.endswith("TensorStorageMetadata")):
                self.items.setdefault(fqn, None)
                continue
            meta = _tensor_meta(path, fqn, _fields(item))
            known = self.items.setdefault(fqn, meta)
            if known is None or (known.dtype, known.shape) != (meta.dtype, meta.shape):
                self.notes.append(f"{fqn}: {path} disagrees with an earlier metadata file on type or shape; kept the first")
                continue
            for offsets, sizes in meta.chunks.items():
                known.chunks.setdefault(offsets, sizes)


def _tensor_meta(path: str, fqn: str, meta: dict) -> TensorMeta:
    properties = meta["properties"]
    dtype_global = properties.state[0] if isinstance(properties.state, tuple) else _fields(properties)["dtype"]
    if not (isinstance(dtype_global, Global) and dtype_global.name in BY_TORCH):
        raise FormatError(path, f"tensor {fqn!r}: unknown dtype {dtype_global!r:.60}")
    chunks = {}
    for chunk_meta in meta["chunks"]:
        fields = _fields(chunk_meta)
        chunks[tuple(fields["offsets"])] = tuple(fields["sizes"])
    return TensorMeta(BY_TORCH[dtype_global.name], tuple(meta["size"]), chunks)


def _fields(value: object) -> dict:
    """The attributes of a pickled dataclass instance."""
    if isinstance(value, Call):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (__dict__, __slots__ values)
        if isinstance(state, dict):
            return state
    raise PickleError(f"expected a dataclass instance, found {value!r:.80}")


def _json_list(numbers: tuple[int, ...]) -> str:
    """`json.dumps(list(numbers))` for ints, without its cost per chunk."""
    return "[" + ", ".join(map(str, numbers)) + "]"


@dataclass(frozen=True)
class Record:
    """Where `_StorageInfo` puts one chunk or item: `raw` is its byte range,
    `start` onwards in the shard file, `data` the bytes after undoing the
    stream transforms. `label` names the shard file in messages."""

    label: str
    shard: Source
    start: int
    raw: Source
    data: Source


class LazyChunk:
    """One chunk's C-order bytes, found in its record on the first read.

    The record is parsed then, not at mount: mount time then depends on the
    metadata alone, however many chunks the shards hold. A chunk that turns
    out to be broken fails its reads (EIO, logged with the file and tensor),
    and the rest of the checkpoint stays readable.
    """

    def __init__(self, record: Record, fqn: str, dtype: DType, offsets: tuple[int, ...], sizes: tuple[int, ...],
                 blocks: dict):
        self.record, self.fqn, self.dtype, self.sizes = record, fqn, dtype, sizes
        self.length = math.prod(sizes) * (dtype.bits // 8)
        self.name = f"{record.label}: {fqn} chunk at {list(offsets)}"
        self._blocks = blocks  # safetensors blocks already parsed, shared by the chunks of a checkpoint
        self._piece = None

    @property
    def source(self) -> Source:
        return self.record.data

    def read(self, offset: int, length: int) -> bytes:
        return self._resolved().read(offset, length)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        self._resolved().readv(offset, buffers)

    def _resolved(self):
        if self._piece is None:
            self._piece = self._resolve()
        return self._piece

    def _resolve(self):
        head = self.record.data.pread(0, 4)
        if torchzip.sniff(head):
            piece = self._from_torch_zip()
        elif self.record.data is self.record.raw:
            piece = self._from_safetensors_block()
        else:
            raise FormatError(self.name, "the record is not a torch.save zip")
        if piece.length != self.length:
            raise FormatError(self.name, f"holds {piece.length} bytes where the metadata promises {self.length}")
        return piece

    def _from_torch_zip(self):
        archive = torchzip.TorchZip(self.record.data, self.name)
        ref = archive.obj
        if not isinstance(ref, TensorRef) or tuple(ref.shape) != self.sizes:
            raise FormatError(self.name, f"does not hold a {list(self.sizes)} tensor")
        return archive.tensor_piece(ref, self.name)[0]

    def _from_safetensors_block(self):
        """SerializationFormat.SAFETENSORS: the record's offset is where a
        safetensors block starts, which runs to the end of the shard file and
        holds this rank's chunk under the tensor's name."""
        key = (self.record.label, self.record.start)
        if key not in self._blocks:
            shard, start = self.record.shard, self.record.start
            block = shard.slice(start, shard.size - start)
            if not safetensors.sniff(block.pread(0, safetensors.MAGIC_LENGTH)):
                raise FormatError(self.name, "the record is neither a torch.save zip nor a safetensors block")
            self._blocks[key] = {t.name: t for t in safetensors.read(block)[1]}
        tensor = self._blocks[key].get(self.fqn)
        if tensor is None or tensor.shape != self.sizes or tensor.dtype != self.dtype:
            wanted = f"{self.dtype.name} {list(self.sizes)}"
            raise FormatError(self.name, f"the safetensors block holds no {wanted} tensor of that name")
        return tensor.data


class _Reader:
    def __init__(self, name: str, files: dict[str, Source]):
        self.path = name
        self.files = files
        self.shard_chunks: dict[str, list[ShardChunk]] = {}
        self.blocks: dict = {}
        self.chunks_of: dict[int, tuple] = {}  # id(tensor file) -> (dtype, shape, chunks), for the writer
        self.fqn_of: dict[int, str] = {}  # id(tensor or item file) -> its key, for the writer

    def source(self, relative: str) -> Source:
        if relative not in self.files:
            raise FormatError(f"{self.path}/{relative}", "shard file named by the metadata is missing")
        return self.files[relative]

    def record(self, fqn: str, info: dict) -> Record:
        """The stored bytes of one chunk or item."""
        shard = self.source(str(info["relative_path"]))
        label = f"{self.path}/{info['relative_path']}"
        start, length = int(info["offset"]), int(info["length"])
        if start < 0 or length < 0 or start + length > shard.size:
            raise FormatError(label, f"{fqn}: bytes {start}-{start + length} lie outside the file ({shard.size} bytes)")
        raw = shard.slice(start, length)
        data: Source = raw
        for descriptor in info.get("transform_descriptors") or ():
            name, _, version = str(descriptor).partition("/")
            if name != "stream.zstd" or version.partition(".")[0] != "1":
                raise FormatError(label, f"{fqn}: unknown stream transform {descriptor!r}")
            data = ZstdSource(data, f"{label}: {fqn}")
        return Record(label, shard, start, raw, data)

    def tensor(self, fqn: str, meta: TensorMeta, storage: dict):
        dtype, shape = meta.dtype, meta.shape
        itemsize = dtype.bits // 8
        chunks = []
        parts = names.split_dotted(fqn)
        for offsets, sizes in meta.chunks.items():
            info = storage.get((fqn, offsets))
            if info is None:
                raise FormatError(self.path, f"tensor {fqn!r}: no storage for the chunk at {list(offsets)}")
            record = self.record(fqn, info)
            piece = LazyChunk(record, fqn, dtype, offsets, sizes, self.blocks)
            chunk = Chunk(offsets, sizes, piece)
            chunks.append(chunk)
            self.shard_chunks.setdefault(str(info["relative_path"]), []).append(ShardChunk(parts, fqn, chunk, dtype))
        problem = covers_exactly(shape, chunks)
        if problem:
            raise FormatError(self.path, f"tensor {fqn!r}: {problem}")
        pieces = row_pieces(shape, chunks) or [Assembled(shape, itemsize, tuple(chunks))]
        nbytes = math.prod(shape) * itemsize
        header = npy.header(*npy.served_layout(dtype, shape, nbytes))
        xattrs = {"ckptfs.name": fqn, "ckptfs.dtype": dtype.name, "ckptfs.shape": json.dumps(list(shape)),
                  "ckptfs.chunks": json.dumps([[list(c.offsets), list(c.sizes)] for c in chunks])}
        first = chunks[0].piece.record.raw  # where the tensor's first chunk lies, for the index
        tensor = Tensor(fqn, dtype, shape, Extent(first, 0, nbytes))
        file = File(Content([header, *pieces]), xattrs=xattrs)
        self.chunks_of[id(file)] = (dtype, shape, chunks)
        self.fqn_of[id(file)] = fqn
        return file, tensor

    def bytes_item(self, fqn: str, storage: dict) -> tuple[str, File]:
        info = storage.get((fqn, None)) or next((v for (name, _), v in storage.items() if name == fqn), None)
        if info is None:
            raise FormatError(self.path, f"item {fqn!r} has no storage")
        data = self.record(fqn, info).data
        suffix, file = ".bin", File(Content([Extent(data, 0, data.size)]))
        if torchzip.sniff(data.pread(0, 4)):
            try:
                value = torchzip.TorchZip(data, f"{data.path}:{fqn}").obj
                suffix, file = ".yaml", File(Content([to_yaml(value).encode("utf-8")]))
            except FormatError:
                pass
        self.fqn_of[id(file)] = fqn
        return suffix, file


# ---------------------------------------------------------------- the writer


class Writer(DirectoryWriter):
    """Writes an edited distributed checkpoint as a new directory beside it
    (swapped in by the caller). Consolidated tensors rewritten with the same
    shape and dtype are split back into their chunks, each patched inside its
    shard's torch.save record (CRCs included). Removed tensors and items
    leave the metadata (`.metadata` pickled again) and their shards (the
    records after them move up). New tensors, and tensors of a new shape or
    dtype, are stored whole in a new shard. Every other file, and every
    shard without a change, is hard-linked from the source."""

    adds_tensors = True  # a new `.npy` is a new tensor

    def __init__(self, path: str, files: dict[str, FileSource], chunks_of: dict, fqn_of: dict):
        self.path, self.files, self.chunks_of, self.fqn_of = path, files, chunks_of, fqn_of

    def write_dir(self, files: dict, before: dict, out: str) -> None:
        new = {**self.new_files(files, before), **self._other_files(files, before)}
        for name, source in self.files.items():
            if name not in new:
                os.link(source.path, os.path.join(out, name))
        for name, made in new.items():
            if made is not None:
                write_new_file(os.path.join(out, name), made.write)

    def _other_files(self, files: dict, before: dict) -> dict[str, NewFile | None]:
        """The directory's files beside the checkpoint (Megatron's
        metadata.json, common.pt) that the edits change or remove."""
        changed: dict[str, NewFile | None] = {}
        for name, source in self.files.items():
            leaf = names.file_parts(name)[0]
            node = files.get(leaf)
            if is_metadata(name) or name.endswith(".distcp") or leaf not in before:
                continue
            if node is None:
                changed[name] = None
            elif nested_writer(node) is not None:  # common.pt, shown expanded
                blob = nested_writer(node).blob(*below(leaf, files, before))
                if blob is not None:
                    changed[name] = blob
            elif is_edited(node):
                changed[name] = NewFile(node.content.size, functools.partial(_write_content, node.content))
        return changed

    def new_files(self, files: dict, before: dict) -> dict[str, NewFile | None]:
        """What the edits make of the checkpoint's files, by name: a `NewFile`
        for a changed one, None for one left out; unchanged ones are not
        listed. RepackError naming every edit that cannot be written."""
        patches: dict[str, dict[int, list]] = {}  # shard -> record start -> [(offset, length, reader, 0)]
        problems: list[str] = []
        removed: set[str] = set()
        added: dict[str, tuple] = {}  # fqn -> (content, data start, dtype, shape): new and reshaped tensors
        beside = {p for p, n in files.items() if nested_writer(n) is not None}  # common.pt, shown expanded
        for path, node in sorted(files.items()):
            if path not in before and not isinstance(node, Dir) and not any(path.startswith(f + "/") for f in beside):
                self._guarded(problems, self._added, path, node, added)
        for path, (node, content) in sorted(before.items()):
            if id(node) not in self.fqn_of:
                continue  # a folder, or a file beside the checkpoint: written as it is (`_other_files`, the tar)
            after = files.get(path)
            if after is None:
                removed.add(self.fqn_of[id(node)])
            elif is_edited(after) and not same_bytes(after.content, content):
                if id(node) not in self.chunks_of:
                    problems.append(f"{path}: a non-tensor item of a distributed checkpoint cannot be edited yet")
                elif not self._patched_in_place(path, node, after.content, patches):
                    removed.add(self.fqn_of[id(node)])  # stored anew, whole
                    self._guarded(problems, self._added, path, after, added)
        layout = None
        if (removed or added) and not problems:
            try:
                layout = _Rewrite(self.files, removed, added, self._stores_torch_records())
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise RepackError(f"cannot write {self.path}: " + "; ".join(problems))
        new: dict[str, NewFile | None] = {}
        for name, source in self.files.items():
            shard_patches = patches.get(name, {})
            if layout is not None and name in layout.metadata:
                data = layout.metadata[name]
                new[name] = NewFile(len(data), functools.partial(_write_bytes, data))
            elif layout is not None and name in layout.files:
                size = sum(length for _, length in layout.files[name])
                new[name] = NewFile(size, functools.partial(layout.write, name, source, shard_patches))
            elif layout is not None and name in layout.emptied:
                new[name] = None
            elif shard_patches:
                new[name] = NewFile(source.size, functools.partial(_patched, source, shard_patches))
        if layout is not None and layout.added is not None:
            new[layout.new_shard] = NewFile(layout.added.size, layout.added.write)
        return new

    def _stores_torch_records(self) -> bool:
        """Whether tensor chunks are torch.save records, or else (the
        safetensors serialization format) tensors of a safetensors block."""
        for _, _, chunks in self.chunks_of.values():
            record = chunks[0].piece.record
            return torchzip.sniff(record.data.pread(0, 4))
        return True

    @staticmethod
    def _guarded(problems: list[str], step, *args) -> None:
        try:
            step(*args)
        except ValueError as e:
            problems.append(str(e))

    def _added(self, path: str, node: File, added: dict) -> None:
        """A new tensor file (or one of a new shape or dtype), to be stored whole."""
        if not path.endswith(".npy"):
            raise ValueError(f"{path}: a distributed checkpoint takes new tensors (.npy) only")
        fqn = self.fqn_of.get(id(node)) or ".".join(names.unescape(p) for p in path[: -len(".npy")].split("/"))
        like = BY_NAME.get(node.xattrs.get("ckptfs.dtype", ""))
        dtype, shape, start, _ = npy.edited_layout(node.content, path, like, torch_storable, "a distributed checkpoint")
        added[fqn] = (node.content, start, dtype, tuple(shape))

    def _patched_in_place(self, path: str, node: File, edited, patches: dict) -> bool:
        """Whether an edited tensor of its old shape and dtype could be patched
        into its chunks' records; False for another shape or dtype, or chunks
        that are compressed or not torch.save records."""
        mine: dict = {}
        try:
            self._split(path, node, edited, mine)
        except ValueError:
            return False
        for shard, by_record in mine.items():
            for start, (record, record_patches) in by_record.items():
                patches.setdefault(shard, {}).setdefault(start, (record, {}))[1].update(record_patches)
        return True

    def check(self, path: str, node: File) -> None:
        if path.endswith(".npy"):
            try:
                self._added(path, node, {})
            except ValueError as e:
                raise EditRefused(str(e)) from None

    def _layout(self, path: str, node: File, edited) -> tuple:
        """(dtype, shape, chunks, data start) of an edited consolidated tensor."""
        if id(node) not in self.chunks_of:
            raise ValueError(f"{path}: only consolidated tensors of a distributed checkpoint can be edited yet")
        dtype, shape, chunks = self.chunks_of[id(node)]
        descr, new_shape, start = npy.parse_header(edited.read(0, 65536), path)
        itemsize = dtype.bits // 8
        served = npy.served_layout(dtype, shape, math.prod(shape) * itemsize)
        if tuple(new_shape) != served[1] or not (descr == served[0] or descr[1:2] == "V"):
            raise ValueError(f"{path}: keeps its shape {list(shape)} and dtype {dtype.name} in this version")
        if edited.size - start != math.prod(shape) * itemsize:
            raise ValueError(f"{path}: {edited.size - start} bytes of data for shape {list(shape)}")
        return dtype, shape, chunks, start

    def _split(self, path: str, node: File, edited, patches: dict) -> None:
        dtype, shape, chunks, start = self._layout(path, node, edited)
        itemsize = dtype.bits // 8
        for chunk in chunks:
            lazy = chunk.piece
            record = lazy.record
            if record.data is not record.raw:
                raise ValueError(f"{path}: its chunks are compressed; rewriting them is not supported yet")
            piece = lazy._resolved()
            if not isinstance(piece, Extent) or piece.source is not record.raw:
                raise ValueError(f"{path}: a chunk that is not a plain torch.save record cannot be rewritten yet")
            box = _Box(edited, start, shape, itemsize, chunk.offsets, chunk.sizes)
            by_record = patches.setdefault(record.label.rpartition("/")[2], {})
            by_record.setdefault(record.start, (record.raw, {}))[1][piece.offset] = (piece.length, box, 0)


def _write_bytes(data: bytes, output) -> None:
    output.write(data)


def _write_content(content, output) -> None:
    output.copy_content(content)


@dataclass(frozen=True)
class NewFile:
    """A file of the checkpoint as the edits make it: `write(output)` writes
    its `size` bytes."""

    size: int
    write: object


def _patched(source: FileSource, patches: dict, output) -> None:
    """A shard copied with some of its records patched."""
    position = 0
    for start, (record, record_patches) in sorted(patches.items()):
        output.copy(source, position, start - position)
        torchzip.Writer(record, record.path).write_patches(record_patches, output)
        position = start + record.size
    output.copy(source, position, source.size - position)


class _Rewrite:
    """The layout of a distributed checkpoint with keys removed and tensors
    added: the metadata pickled again (every rank's, for a checkpoint saved
    with one metadata file per rank); each shard that held a removed key
    written without its records (the later records move up, and the
    metadata says where), a shard left empty not written, a shard with
    bytes besides its records (a safetensors-format one) kept as it was;
    the added tensors stored whole in a new shard `__0_<n>.distcp` as DCP
    stores chunks (torch.save records, or one safetensors block), with
    metadata made like the other tensors'."""

    def __init__(self, files: dict[str, FileSource], removed: set[str], added: dict[str, tuple], torch_records: bool):
        from ...pickle import writer as pickle_writer  # written only at repack: not imported at mount

        graphs = {name: InertUnpickler(files[name].read_exact(0, files[name].size), known=KNOWN).load()
                  for name in metadata_names(files)}
        fields = {name: _fields(graph) for name, graph in graphs.items()}
        templates = [_Templates(f["state_dict_metadata"], f["storage_data"], f.get("planner_data")) for f in fields.values()]
        records: dict[str, list[tuple[int, int, object, bool]]] = {}  # shard -> [(start, length, info, removed)]
        for f in fields.values():
            items, storage, planner = f["state_dict_metadata"], f["storage_data"], f.get("planner_data")
            for fqn in removed:
                items.pop(fqn, None)
                if isinstance(planner, dict):
                    planner.pop(fqn, None)
            for index in list(storage):
                where = _fields(storage[index])
                gone = _fields(index)["fqn"] in removed
                records.setdefault(str(where["relative_path"]), []).append(
                    (int(where["offset"]), int(where["length"]), storage[index], gone))
                if gone:
                    del storage[index]
        self.files: dict[str, list[tuple[int, int]]] = {}  # rewritten shard -> the (start, length) of its kept records
        self.emptied: set[str] = set()
        for name, in_shard in records.items():
            if not any(gone for *_, gone in in_shard):
                continue
            in_shard.sort(key=lambda r: r[0])
            ends = [0] + [start + length for start, length, *_ in in_shard]
            if [r[0] for r in in_shard] != ends[:-1] or name not in files or ends[-1] != files[name].size:
                continue  # bytes besides the records: the shard stays as it is, its removed records unread
            kept = [(start, length, info) for start, length, info, gone in in_shard if not gone]
            if not kept:
                self.emptied.add(name)
                continue
            position = 0
            for start, length, info in kept:
                _set_field(info, "offset", position)
                position += length
            self.files[name] = [(start, length) for start, length, _ in kept]
        self.new_shard = _free_shard_name(files)
        self.added: _NewShard | None = None
        if added:
            pattern = next((t for t in templates if t.tensor is not None and t.index is not None), None)
            if pattern is None:
                raise ValueError(f"{', '.join(sorted(added))}: no tensor in the checkpoint to make new ones' metadata like")
            ordered = sorted(added.items())
            self.added = (_torch_records if torch_records else _safetensors_block)(ordered)
            for (fqn, (_, _, dtype, shape)), (offset, length) in zip(ordered, self.added.places):
                for own in templates:  # every rank's metadata lists it: each rank reads its own
                    own.add(fqn, dtype, shape, self.new_shard, offset, length, pattern)
        self.metadata = {name: pickle_writer.dumps(graph) for name, graph in graphs.items()}

    def write(self, name: str, source: FileSource, patches: dict, output) -> None:
        """Shard `name` without its removed records; `patches` by record start."""
        for start, length in self.files[name]:
            if start in patches:
                record, record_patches = patches[start]
                torchzip.Writer(record, record.path).write_patches(record_patches, output)
            else:
                output.copy(source, start, length)


class _Templates:
    """Metadata for new tensors, made like the checkpoint's own: each object
    copies one of the same class from the metadata, with new fields."""

    def __init__(self, items: dict, storage: dict, planner):
        self.items, self.storage, self.planner = items, storage, planner
        self.tensor = next((v for v in items.values() if isinstance(v, Call) and v.path.endswith("TensorStorageMetadata")), None)
        self.index, self.info = next(iter(storage.items()), (None, None))

    def add(self, fqn: str, dtype: DType, shape: tuple[int, ...], shard: str, offset: int, length: int,
            pattern: _Templates) -> None:
        """Metadata of a tensor stored whole at `offset` of `shard`; made like
        this file's own objects, or `pattern`'s where it has none."""
        tensor, index, info = self.tensor or pattern.tensor, self.index or pattern.index, self.info or pattern.info
        zeros = new_size([0] * len(shape))
        properties = _copy(tensor.state["properties"])
        if isinstance(properties.state, tuple):
            properties.state = (Global("torch", dtype.torch), *properties.state[1:])
        else:
            properties.state["dtype"] = Global("torch", dtype.torch)
        chunk = _copy(tensor.state["chunks"][0], offsets=zeros, sizes=new_size(list(shape)))
        self.items[fqn] = _copy(tensor, properties=properties, size=new_size(list(shape)), chunks=[chunk])
        info = _copy(info, relative_path=shard, offset=offset, length=length)
        if "transform_descriptors" in info.state:
            info.state["transform_descriptors"] = None
        self.storage[_copy(index, fqn=fqn, offset=zeros, index=0)] = info
        if isinstance(self.planner, dict):
            self.planner[fqn] = _planner_path(self.planner, fqn)


def _copy(call: Call, **fields) -> Call:
    """A pickled dataclass instance like `call`, with some fields changed."""
    state = call.state
    if isinstance(state, dict):
        state = {**state, **fields}
    elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = (state[0], {**state[1], **fields})
    return Call(call.func, call.args, dict(call.kwargs), state, kind=call.kind)


def _planner_path(planner: dict, fqn: str) -> tuple:
    """How DCP's planner unflattens a new key: like the key sharing the
    longest dotted prefix with it (`model.0.weight` -> ("model", "0.weight"))."""
    parts = fqn.split(".")

    def shared(other: str) -> int:
        return next((i for i, (a, b) in enumerate(zip(parts, other.split("."))) if a != b), len(parts))

    like = max(planner, key=shared, default=None)
    path = planner.get(like)
    if not (isinstance(path, tuple) and path and all(isinstance(p, str) for p in path)):
        return tuple(parts)
    depth = min(len(path), len(parts))
    return (*parts[: depth - 1], ".".join(parts[depth - 1 :]))


def _free_shard_name(files: dict) -> str:
    taken = [int(m.group(1)) for n in files if (m := re.fullmatch(r"__0_(\d+)\.distcp", n))]
    return f"__0_{max(taken, default=-1) + 1}.distcp"


class _NewShard:
    """The bytes of a new shard (`size`, `write(output)`) and where each
    tensor's storage info points (`places`: (offset, length), in order)."""

    def __init__(self, parts: list, places: list[tuple[int, int]]):
        self.parts, self.places = parts, places
        self.size = sum(part.size for part in parts)

    def write(self, output) -> None:
        for part in self.parts:
            part.write(output)


def _torch_records(added: list[tuple[str, tuple]]) -> _NewShard:
    """Each tensor as the torch.save zip DCP's writer makes of a chunk, one
    after the other."""
    from ...pickle import writer as pickle_writer
    from .. import zipout

    records, places, position = [], [], 0
    for _, (content, start, dtype, shape) in added:
        pickle = pickle_writer.dumps(new_tensor("0", dtype, shape, None))
        record = zipout.ZipPlan([
            zipout.Record("archive/data.pkl", len(pickle), data=pickle),
            zipout.Record("archive/byteorder", 6, data=b"little"),
            zipout.Record("archive/data/0", math.prod(shape) * dtype.bits // 8, piece=content, start=start),
            zipout.Record("archive/version", 2, data=b"3\n"),
        ])
        records.append(record)
        places.append((position, record.size))
        position += record.size
    return _NewShard(records, places)


def _safetensors_block(added: list[tuple[str, tuple]]) -> _NewShard:
    """The tensors in one safetensors block, as the `safetensors`
    serialization format ends a shard: each record's offset is where the
    block starts, its length the tensor's bytes, its chunk found by name."""
    tensors = [(fqn, dtype, shape, (content, start), math.prod(shape) * dtype.bits // 8)
               for fqn, (content, start, dtype, shape) in added]
    sharding = {fqn: {"saved_offsets": [0] * len(shape)} for fqn, (_, _, _, shape) in added}
    block = safetensors.Block({"DCP_SHARDING_INFO": json.dumps(sharding), "DCP_VERSION": "1.0", "format": "pt"}, tensors)
    return _NewShard([block], [(0, length) for *_, length in tensors])


def _set_field(value: Call, name: str, new: object) -> None:
    """Sets an attribute of a pickled dataclass instance (see `_fields`)."""
    state = value.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict) and name in state[1]:
        state[1][name] = new
    elif isinstance(state, tuple) and isinstance(state[0], dict):
        state[0][name] = new
    else:
        state[name] = new


class _Box:
    """The C-order bytes of one chunk (a box of the tensor), read from the
    edited full tensor one run along the last dimension at a time."""

    def __init__(self, content, data_start: int, shape, itemsize: int, offsets, sizes):
        self.content, self.data_start, self.itemsize = content, data_start, itemsize
        self.shape, self.offsets, self.sizes = tuple(shape), tuple(offsets), tuple(sizes)

    def read(self, offset: int, length: int) -> bytes:
        if not self.shape:
            return self.content.read(self.data_start + offset, length)
        row = self.sizes[-1] * self.itemsize  # bytes of one run of the chunk
        parts, position, end = [], offset, offset + length
        while position < end:
            run, within = divmod(position, row)
            index = []
            for size in reversed(self.sizes[:-1]):
                run, i = divmod(run, size)
                index.append(i)
            element = 0
            for axis, i in enumerate(reversed(index)):
                element = element * self.shape[axis] + self.offsets[axis] + i
            element = element * self.shape[-1] + self.offsets[-1]
            take = min(row - within, end - position)
            parts.append(self.content.read(self.data_start + element * self.itemsize + within, take))
            position += take
        return b"".join(parts)


FORMAT = DirectoryFormat("torch.distributed.checkpoint", sniff, open_dir)
