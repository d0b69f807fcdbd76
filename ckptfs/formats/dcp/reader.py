"""The tree of a distributed checkpoint: every tensor consolidated at its
fully qualified name (assembled from its chunks on read), every bytes item
as a file, every shard as a read-only folder of the chunks it stores."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ...errors import FormatError
from ...humanize import plural
from ...limits import LIMITS
from ...pickle.pyobjects import to_yaml
from ...sources.base import Source
from ...sources.zstd import ZstdSource
from ...tree import names, xattrs
from ...tree.dtypes import DType
from ...tree.nodes import Content, Dir, Extent, File, LazyDir
from ...tree.npy import MAX_FILE_SIZE
from ...tree.tensors import PiecedTensor, PlacedTensor, TensorFile, shape_text
from .. import torchzip
from .assemble import Chunk, assembled_tensor, covers_exactly
from .chunks import ChunkRecord, LazyChunk
from .metadata import SHARDED_OBJECT, Metadata, TensorMeta


def expand(name: str, files: dict[str, Source], chunks_of: dict | None = None, fqn_of: dict | None = None):
    """The tree of a distributed checkpoint whose files are `files` (by their
    names in its directory): a directory on disk, or members of a tar.
    Returns (folder, placed tensors, notes, pickle globals). For the writer,
    `chunks_of`, if given, receives each tensor file's chunks, and `fqn_of`
    the key of each tensor and item file (by id of the file)."""
    metadata = Metadata.read(name, files)
    reader = Reader(name, files)
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
                parts = item_path(fqn, suffix)
                root.subdir(parts[:-1]).add(parts[-1], file)
        except FormatError as e:
            notes.append(f"{fqn}: {e}")
    notes += metadata.notes
    for shard, chunks in sorted(reader.shard_chunks.items()):
        subdirs = len({c.parts[0] for c in chunks if len(c.parts) > 1})
        folder = LazyDir(functools.partial(_fill_shard, chunks), subdirs, read_only=True)
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
        stored = Extent(piece.record.raw, 0, piece.length)  # where the chunk lies
        tensor = PiecedTensor(c.fqn, c.dtype, sizes, stored, (piece,), ((xattrs.OFFSETS, shape_text(offsets)),))
        leaf = names.escape(c.parts[-1], f"@{'_'.join(map(str, offsets))}.npy")
        parent = folder.subdir([names.escape(p) for p in c.parts[:-1]])
        parent.add(leaf, TensorFile(tensor))


def item_path(fqn: str, suffix: str) -> list[str]:
    """Path parts of a non-tensor item. A Megatron ShardedObject shard
    (`decoder.layers.x._extra_state/shard_0.1_1.4`) is a file named after the
    shard in the folder of its key."""
    sharded = SHARDED_OBJECT.fullmatch(fqn)
    if sharded:
        return names.tensor_path(sharded.group(1), suffix="") + [names.escape(sharded.group(2), suffix)]
    return names.tensor_path(fqn, suffix=suffix)


class Reader:
    def __init__(self, name: str, files: dict[str, Source]):
        self.path = name
        self.files = files
        self.shard_chunks: dict[str, list[ShardChunk]] = {}
        self.blocks: dict = {}
        self.chunks_of: dict[int, tuple] = {}  # id(tensor file) -> (dtype, shape, chunks), for the writer
        self.fqn_of: dict[int, str] = {}  # id(tensor or item file) -> its key, for the writer
        self.yaml_budget = [LIMITS.yaml_values]  # values left to render, for every pickled item

    def source(self, relative: str) -> Source:
        if relative not in self.files:
            raise FormatError(f"{self.path}/{relative}", "shard file named by the metadata is missing")
        return self.files[relative]

    def record(self, fqn: str, info: dict) -> ChunkRecord:
        """The stored bytes of one chunk or item."""
        try:
            relative, start, length = str(info["relative_path"]), int(info["offset"]), int(info["length"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(self.path, f"{fqn}: its storage entry in the metadata is incomplete "
                                         f"({type(e).__name__}: {e})") from None
        shard = self.source(relative)
        label = f"{self.path}/{relative}"
        if start < 0 or length < 0 or start + length > shard.size:
            raise FormatError(label, f"{fqn}: bytes {start}-{start + length} lie outside the file "
                                     f"({plural(shard.size, 'byte')})")
        raw = shard.slice(start, length)
        data: Source = raw
        for descriptor in info.get("transform_descriptors") or ():
            name, _, version = str(descriptor).partition("/")
            if name != "stream.zstd" or version.partition(".")[0] != "1":
                raise FormatError(label, f"{fqn}: unknown stream transform {descriptor!r}")
            data = ZstdSource(data, f"{label}: {fqn}")
        return ChunkRecord(label, shard, start, raw, data)

    def tensor(self, fqn: str, meta: TensorMeta, storage: dict):
        dtype, shape = meta.dtype, meta.shape
        itemsize = dtype.bits // 8
        if any(n < 0 for n in shape) or math.prod(shape) * itemsize >= MAX_FILE_SIZE:
            raise FormatError(self.path, f"tensor {fqn!r}: shape {list(shape)} is more than a file can hold")
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
        first = Extent(chunks[0].piece.record.raw, 0, math.prod(shape) * itemsize)
        tensor = assembled_tensor(fqn, dtype, shape, chunks, first)
        file = TensorFile(tensor)
        self.chunks_of[id(file)] = (dtype, shape, chunks)
        self.fqn_of[id(file)] = fqn
        return file, tensor

    def item_storage(self, fqn: str, storage: dict) -> dict:
        """The storage entry of a non-tensor item."""
        info = storage.get((fqn, None)) or next((v for (name, _), v in storage.items() if name == fqn), None)
        if info is None:
            raise FormatError(self.path, f"item {fqn!r} has no storage")
        return info

    def bytes_item(self, fqn: str, storage: dict) -> tuple[str, File]:
        data = self.record(fqn, self.item_storage(fqn, storage)).data
        suffix, file = ".bin", File(Content([Extent(data, 0, data.size)]))
        if torchzip.sniff(data.pread(0, 4)):
            try:
                value = torchzip.TorchZip(data, f"{data.path}:{fqn}").obj
                suffix, file = ".yaml", File(Content([to_yaml(value, self.yaml_budget).encode("utf-8")]))
            except FormatError:
                pass
        self.fqn_of[id(file)] = fqn
        return suffix, file
