"""torch.distributed.checkpoint directories: `.metadata` plus `.distcp` shards.

`.metadata` is a pickle of `Metadata`, read by the inert interpreter. Each
chunk of a tensor is a byte range of a `.distcp` file holding a complete
torch.save zip of that chunk. Every tensor appears once, consolidated, at its
fully qualified name; each `.distcp` file also appears as a read-only folder
of the chunks it stores.
"""

from __future__ import annotations

import json
import math
import os

from .. import names, npy
from ..assemble import Assembled, Chunk, covers_exactly, row_pieces
from ..checkpoint import Checkpoint
from ..dtypes import BY_TORCH
from ..errors import FormatError
from ..inert_pickle import Call, Global, InertUnpickler, PickleError
from ..pyobjects import to_yaml
from ..rawfiles import raw_file
from ..sources import FileSource, Source
from ..tensors import PlacedTensor, Tensor
from ..torch_pickle import TensorRef, recognize
from ..tree import Content, Dir, Extent, File
from . import torchzip

METADATA = ".metadata"


def sniff(path: str) -> bool:
    return os.path.isfile(os.path.join(path, METADATA))


def has_shards(path: str) -> bool:
    return any(name.endswith(".distcp") for name in os.listdir(path))


def _fields(value: object) -> dict:
    """The attributes of a pickled dataclass instance."""
    if isinstance(value, Call):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (__dict__, __slots__ values)
        if isinstance(state, dict):
            return state
    raise PickleError(f"expected a dataclass instance, found {value!r:.80}")


def open_dir(path: str) -> Checkpoint:
    st = os.stat(path)
    files = {
        name: FileSource(os.path.join(path, name))
        for name in sorted(os.listdir(path))
        if os.path.isfile(os.path.join(path, name))
    }
    root, placed, notes, audit = expand(path, files)
    raw = Dir()
    for name, source in files.items():
        leaf = names.file_parts(name)[0]
        raw.add(leaf, raw_file(source, 0, source.size, mtime_ns=source.stat.st_mtime_ns))
        if name == METADATA or name.endswith(".distcp") or leaf in root.children:
            continue
        # the directory's other files: Megatron's metadata.json as it is, common.pt expanded
        node, inner_tensors, inner_audit = _other_file(source, name, notes)
        root.add(leaf, node)
        placed += [PlacedTensor(f"{leaf}/{p.path}", p.tensor) for p in inner_tensors]
        audit += [g for g in inner_audit if g not in audit]
    return Checkpoint("torch.distributed.checkpoint", path, st, root, raw, placed, notes, audit)


def _other_file(source: FileSource, name: str, notes: list[str]):
    """A file beside the shards: (node, its tensors, its pickle globals)."""
    expanded = torchzip.expand_nested(source, name, notes)
    if expanded is not None:
        return expanded
    return raw_file(source, 0, source.size, mtime_ns=source.stat.st_mtime_ns), [], []


def expand(name: str, files: dict[str, Source]):
    """The tree of a distributed checkpoint whose files are `files` (by their
    names in its directory): a directory on disk, or members of a tar.
    Returns (folder, placed tensors, notes, pickle globals)."""
    metadata_path = f"{name}/{METADATA}"
    if METADATA not in files:
        raise FormatError(metadata_path, "missing")
    try:
        unpickler = InertUnpickler(files[METADATA].read_exact(0, files[METADATA].size), recognize=recognize)
        metadata = _fields(unpickler.load())
        items = metadata["state_dict_metadata"]
        storage = {}
        for index, info in metadata["storage_data"].items():
            index, info = _fields(index), _fields(info)
            offset = tuple(index["offset"]) if index.get("offset") is not None else None
            storage[index["fqn"], offset] = info
    except (PickleError, KeyError, TypeError, AttributeError, OSError) as e:
        raise FormatError(metadata_path, f"not a readable distributed checkpoint metadata file ({e})") from None
    reader = _Reader(name, files)
    root = Dir()
    notes: list[str] = []
    placed: list[PlacedTensor] = []
    for fqn in sorted(items):
        item = items[fqn]
        try:
            if isinstance(item, Call) and item.path.endswith("TensorStorageMetadata"):
                file, tensor, chunk_files = reader.tensor(fqn, _fields(item), storage)
                parts = names.tensor_path(fqn)
                root.subdir(parts[:-1]).add(parts[-1], file)
                placed.append(PlacedTensor("/".join(parts), tensor))
                for shard, chunk_parts, chunk_file in chunk_files:
                    reader.shard_dir(shard).subdir(chunk_parts[:-1]).add(chunk_parts[-1], chunk_file)
            else:
                parts = names.tensor_path(fqn, suffix="")
                suffix, file = reader.bytes_item(fqn, storage)
                root.subdir(parts[:-1]).add(parts[-1] + suffix, file)
        except FormatError as e:
            notes.append(f"{fqn}: {e}")
    for shard, folder in sorted(reader.shards.items()):
        root.add(names.file_parts(shard)[0], folder)
    return root, placed, notes, [g.path for g in unpickler.globals]


def _json_list(numbers: tuple[int, ...]) -> str:
    """`json.dumps(list(numbers))` for ints, without its cost per chunk."""
    return "[" + ", ".join(map(str, numbers)) + "]"


class LazyChunk:
    """One chunk's C-order bytes, from the torch.save zip at its byte range.

    The zip is parsed on the first read, not at mount: mount time then
    depends on `.metadata` alone, however many chunks the shards hold. A
    chunk that turns out to be broken fails its reads (EIO, logged with the
    file and tensor), and the rest of the checkpoint stays readable.
    """

    def __init__(self, record, name: str, sizes: tuple[int, ...], length: int):
        self.record, self.name, self.sizes, self.length = record, name, sizes, length
        self._piece = None

    @property
    def source(self):
        return self.record

    def read(self, offset: int, length: int) -> bytes:
        if self._piece is None:
            self._piece = self._resolve()
        return self._piece.read(offset, length)

    def _resolve(self):
        archive = torchzip.TorchZip(self.record, self.name)
        ref = archive.obj
        if not isinstance(ref, TensorRef) or tuple(ref.shape) != self.sizes:
            raise FormatError(self.name, f"does not hold a {list(self.sizes)} tensor")
        piece, _ = archive.tensor_piece(ref, self.name)
        if piece.length != self.length:
            raise FormatError(self.name, f"holds {piece.length} bytes where .metadata promises {self.length}")
        return piece


class _Reader:
    def __init__(self, name: str, files: dict[str, Source]):
        self.path = name
        self.files = files
        self.shards: dict[str, Dir] = {}

    def source(self, relative: str) -> Source:
        if relative not in self.files:
            raise FormatError(f"{self.path}/{relative}", "shard file named by .metadata is missing")
        return self.files[relative]

    def shard_dir(self, relative: str) -> Dir:
        return self.shards.setdefault(relative, Dir())

    def _record(self, fqn: str, info: dict):
        """The torch.save zip of one chunk or item, as a source slice."""
        source = self.source(str(info["relative_path"]))
        start, length = int(info["offset"]), int(info["length"])
        if info.get("transform_descriptors"):
            raise FormatError(source.path, f"{fqn}: stream transforms {info['transform_descriptors']} are not supported yet")
        if start < 0 or length < 0 or start + length > source.size:
            raise FormatError(source.path, f"{fqn}: bytes {start}-{start + length} lie outside the file ({source.size} bytes)")
        return source, source.slice(start, length)

    def tensor(self, fqn: str, meta: dict, storage: dict):
        properties = meta["properties"]
        dtype_global = properties.state[0] if isinstance(properties.state, tuple) else _fields(properties)["dtype"]
        if not (isinstance(dtype_global, Global) and dtype_global.name in BY_TORCH):
            raise FormatError(self.path, f"tensor {fqn!r}: unknown dtype {dtype_global!r:.60}")
        dtype = BY_TORCH[dtype_global.name]
        shape = tuple(meta["size"])
        itemsize = dtype.bits // 8
        chunks, chunk_files = [], []
        parts = names.tensor_path(fqn, suffix="")
        last = fqn.split(".")[-1]
        for chunk_meta in meta["chunks"]:
            fields = _fields(chunk_meta)
            offsets, sizes = tuple(fields["offsets"]), tuple(fields["sizes"])
            info = storage.get((fqn, offsets))
            if info is None:
                raise FormatError(self.path, f"tensor {fqn!r}: no storage for the chunk at {list(offsets)}")
            _, record = self._record(fqn, info)
            piece = LazyChunk(record, f"{record.path}: {fqn} chunk at {list(offsets)}", sizes, math.prod(sizes) * itemsize)
            chunks.append(Chunk(offsets, sizes, piece))
            leaf = parts[:-1] + [names.escape(last, f"@{'_'.join(map(str, offsets))}.npy")]
            xattrs = {"ckptfs.name": fqn, "ckptfs.dtype": dtype.name, "ckptfs.shape": _json_list(sizes),
                      "ckptfs.offsets": _json_list(offsets)}  # fmt: skip
            header = npy.header(*npy.served_layout(dtype, sizes, piece.length))
            chunk_files.append((str(info["relative_path"]), leaf, File(Content([header, piece]), xattrs=xattrs)))
        problem = covers_exactly(shape, chunks)
        if problem:
            raise FormatError(self.path, f"tensor {fqn!r}: {problem}")
        pieces = row_pieces(shape, chunks) or [Assembled(shape, itemsize, tuple(chunks))]
        nbytes = math.prod(shape) * itemsize
        header = npy.header(*npy.served_layout(dtype, shape, nbytes))
        xattrs = {"ckptfs.name": fqn, "ckptfs.dtype": dtype.name, "ckptfs.shape": json.dumps(list(shape)),
                  "ckptfs.chunks": json.dumps([[list(c.offsets), list(c.sizes)] for c in chunks])}  # fmt: skip
        first = chunks[0].piece.record  # where the tensor's first chunk lies, for the index
        tensor = Tensor(fqn, dtype, shape, Extent(first.parent, first.offset, nbytes))
        return File(Content([header, *pieces]), xattrs=xattrs), tensor, chunk_files

    def bytes_item(self, fqn: str, storage: dict) -> tuple[str, File]:
        info = next((v for (name, _), v in storage.items() if name == fqn), None)
        if info is None:
            raise FormatError(self.path, f"item {fqn!r} has no storage")
        _, record = self._record(fqn, info)
        if torchzip.sniff(record.pread(0, 4)):
            try:
                value = torchzip.TorchZip(record, f"{record.path}:{fqn}").obj
                return ".yaml", File(Content([to_yaml(value).encode("utf-8")]))
            except FormatError:
                pass
        return ".bin", File(Content([Extent(record, 0, record.size)]))
