"""Folders of per-rank torch.save files holding `ShardedTensor`s
(`torch.distributed._shard`): FSDP1's SHARDED_STATE_DICT saved with
torch.save on every rank, as older FSDP runs and OLMo's legacy sharded
checkpoints keep them. torch.load cannot open such a file without the
process group it was saved from.

Every file is shown as it is, each expanded as its pickled tree, and
`assembled/` holds the state as one: the tree of the first rank's file
with each ShardedTensor in it whole, assembled on read from the local
shards of every rank's file, as a distributed checkpoint's chunks are
(`dcp.assemble`): a shard's place comes from its `ShardMetadata`
(offsets and sizes), and the shards must tile the tensor's size, no gap,
no overlap. The checkpoint's tensors (what `info`, `export` and `diff`
see) are those of `assembled/`. Read-only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from dataclasses import dataclass

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..pickle.inert import Call, Global, PickleError
from ..pickle.objtree import ObjectTree
from ..pickle.torch_classes import Size, TensorRef, dtype_of
from ..sources.base import SeekableReader, Source
from ..sources.directory import Directory
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Access, Extent, PathConflict
from ..tree.rawfiles import LINKS_OUTSIDE
from ..tree.tensors import Tensor
from .base import DirectoryFormat
from .dcp.assemble import Chunk, assembled_tensor, covers_exactly
from .nested import Grafts, show_directory
from .torchzip import ZIP_MAGIC, TorchZip, find_record

SHARDED = b"ShardedTensor"
SNIFF_PICKLE_BYTES = 16 << 20
ASSEMBLED = "assembled"
_WRAPPER = "torch._utils._rebuild_wrapper_subclass"
_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"


def _holds_sharded(source: Source) -> bool:
    """A torch.save zip whose pickle names ShardedTensor (a look at its
    bytes, not a parse)."""
    if source.size < 4 or source.pread(0, 4) != ZIP_MAGIC:
        return False
    try:
        archive = zipfile.ZipFile(SeekableReader(source))
        records = {info.filename: info for info in archive.infolist()}
        name = find_record(records, next(iter(records), "").partition("/")[0] + "/data.pkl")
        if name is None or records[name].compress_type != zipfile.ZIP_STORED:
            return False
        with archive.open(records[name]) as f:
            return SHARDED in f.read(SNIFF_PICKLE_BYTES)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
        return False


def _rank_files(directory: Directory) -> list[str]:
    files = [n for n in directory.names() if directory.is_file(n)]
    return sorted((n for n in files if _holds_sharded(directory.open(n))), key=names.natural_key)


def sniff(directory: Directory) -> bool:
    """At the first file that holds ShardedTensors: detection tries this on
    every directory no earlier format took (Hugging Face folders of .bin files)."""
    return any(directory.is_file(n) and _holds_sharded(directory.open(n)) for n in directory.names())


@dataclass
class Sharded:
    """One rank's view of a ShardedTensor: its global size and dtype, the
    shards this rank holds, and every shard's place."""

    size: tuple[int, ...]
    dtype: object
    local: list[tuple[tuple[int, ...], tuple[int, ...], TensorRef]]
    places: list[tuple[tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class WholeRef(TensorRef):
    """Where `assembled/` shows a ShardedTensor whole; `key_path` finds the
    shards of every rank."""

    key_path: tuple = ()


def _state(call: Call):
    """`ShardedTensor`'s pickled state, or None for any other object."""
    if not (isinstance(call, Call) and call.path == _FROM_TYPE and len(call.args) == 4):
        return None
    func, new_type, _, state = call.args
    if not (isinstance(func, Global) and func.path == _WRAPPER and isinstance(new_type, Global)
            and new_type.name == "ShardedTensor"):
        return None
    return state


def _sharded(call: Call, where: str, name: str) -> Sharded | None:
    state = _state(call)
    if state is None:
        return None
    if not (isinstance(state, tuple) and len(state) >= 2 and isinstance(state[0], list)):
        raise FormatError(name, f"{where}: a ShardedTensor whose state is not (local shards, metadata, ...)")
    metadata = _attrs(state[1], where, name)
    size = metadata.get("size")
    if not _is_shape(size):
        raise FormatError(name, f"{where}: ShardedTensor size {size!r} is no list of sizes")
    places = [_place(_attrs(m, where, name), where, name) for m in metadata.get("shards_metadata") or []]
    wrapper = call.args[2]  # (ShardedTensor, dtype, size, stride, ...), what torch makes the wrapper of
    try:
        dtype = dtype_of(wrapper[1] if isinstance(wrapper, tuple) and len(wrapper) > 1 else None)
    except PickleError:
        raise FormatError(name, f"{where}: a ShardedTensor of no dtype ckptfs knows") from None
    local = []
    for shard in state[0]:
        attrs = _attrs(shard, where, name)
        tensor = attrs.get("tensor")
        if not isinstance(tensor, TensorRef):
            raise FormatError(name, f"{where}: a local shard without its tensor")
        offsets, sizes = _place(_attrs(attrs.get("metadata"), where, name), where, name)
        if tuple(tensor.shape) != sizes:
            raise FormatError(name, f"{where}: a shard of shape {list(tensor.shape)} where its metadata says {list(sizes)}")
        if tensor.dtype != dtype:
            raise FormatError(name, f"{where}: a {tensor.dtype.name} shard of a {dtype.name} ShardedTensor")
        local.append((offsets, sizes, tensor))
    return Sharded(tuple(size), dtype, local, places)


def _attrs(obj, where: str, name: str) -> dict:
    """The attributes a pickled object was given (`__setstate__` of a dict,
    or of (None, dict) for a dataclass with slots)."""
    state = obj.state if isinstance(obj, Call) else None
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = state[1]
    if not isinstance(state, dict):
        raise FormatError(name, f"{where}: ShardedTensor metadata that is no object with attributes")
    return state


def _place(attrs: dict, where: str, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    offsets, sizes = attrs.get("shard_offsets"), attrs.get("shard_sizes")
    if not (_is_shape(offsets) and _is_shape(sizes) and len(offsets) == len(sizes)):
        raise FormatError(name, f"{where}: shard offsets {offsets!r} and sizes {sizes!r} do not fit together")
    return tuple(offsets), tuple(sizes)


def _is_shape(value) -> bool:
    return isinstance(value, (list, tuple, Size)) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)


def _walk(obj, path: tuple, replace, seen: set) -> object:
    """`obj` with containers copied (shared ones once) and every other value
    `v` at key path `p` put through `replace(v, p)`."""
    if id(obj) in seen or len(path) > LIMITS.pickle_nesting:
        return obj
    if isinstance(obj, dict):
        seen.add(id(obj))
        copy = type(obj)() if type(obj) is not dict else {}
        for key, value in obj.items():
            copy[key] = _walk(value, (*path, key), replace, seen)
        if hasattr(obj, "pickled"):
            copy.pickled = obj.pickled
        return copy
    if isinstance(obj, list):
        seen.add(id(obj))
        return [_walk(v, (*path, i), replace, seen) for i, v in enumerate(obj)]
    return replace(obj, path)


def _sharded_of(archive: TorchZip) -> dict[tuple, Sharded]:
    """Every ShardedTensor of a rank's file, by key path."""
    found: dict[tuple, Sharded] = {}

    def collect(value, path):
        sharded = _sharded(value, ".".join(map(str, path)), archive.name) if isinstance(value, Call) else None
        if sharded is not None:
            found[path] = sharded
        return value

    _walk(archive.obj, (), collect, set())
    return found


def open_dir(directory: Directory) -> Checkpoint:
    grafts, views = Grafts(), Grafts()  # the files as saved; assembled/ apart, its tensors the checkpoint's
    shown = show_directory(directory, grafts)
    root, raw, outside = shown.root, shown.raw, shown.outside
    label, rank_files = ASSEMBLED, _rank_files(directory)
    if ASSEMBLED in root.children:
        grafts.notes.append(f"{label}: the folder already holds a file of that name; tensors not assembled")
    else:
        try:
            folder, placed = _assembled(directory, rank_files, grafts.notes)
        except FormatError as e:
            grafts.notes.append(f"{label}: tensors not assembled: {e}")
        else:
            # assembled from every rank's file: readable by whom all of them are
            folder.access = Access.of_all([directory.open(n).origin.stat for n in rank_files])
            views.graft(root, ASSEMBLED, ASSEMBLED, folder, placed)
    ckpt = Checkpoint("sharded torch.save (FSDP1)", directory.path, directory.stat(), root, raw, views.placed,
                      grafts.notes, grafts.pickle_globals)
    if outside:
        root.xattrs[xattrs.READ_ONLY] = LINKS_OUTSIDE.format(", ".join(outside))
    return ckpt  # no writer: read-only


def _assembled(directory: Directory, rank_files: list[str], notes: list[str]):
    """The tree of the first rank's file, each ShardedTensor whole; one that
    cannot be assembled stays as the first rank's file shows it, with a note."""
    archives = [TorchZip(directory.open(n), f"{directory.path}/{n}") for n in rank_files]
    per_rank = [_sharded_of(a) for a in archives]
    first = archives[0]
    wholes = {}
    for path in per_rank[0]:
        try:
            wholes[path] = _whole(path, archives, per_rank)
        except FormatError as e:
            where = os.path.basename(e.path) + ": " if e.path != first.name else ""
            notes.append(f"{ASSEMBLED}: {'.'.join(map(str, path))} not assembled: {where}{e.problem}")

    def whole_ref(value, path):
        if path not in wholes:
            return value
        size = per_rank[0][path].size
        stride = tuple(math.prod(size[i + 1:]) for i in range(len(size)))
        return WholeRef(None, per_rank[0][path].dtype, 0, size, stride, path)

    def tensor_of(ref: TensorRef, name: str) -> Tensor:
        if isinstance(ref, WholeRef):
            return dataclasses.replace(wholes[ref.key_path], name=name)
        return first.tensor(ref, name)

    builder = ObjectTree(tensor_of)
    try:
        folder = builder.build(_walk(first.obj, (), whole_ref, set()))
    except RecursionError:
        raise FormatError(first.name, "containers nested too deeply to show") from None
    except PathConflict as e:
        raise FormatError(first.name, f"two keys need the same path {e}") from None
    return folder, builder.placed


def _whole(path: tuple, archives: list[TorchZip], per_rank: list[dict]) -> Tensor:
    """The record of a ShardedTensor, whole (named by its key path): every
    rank's local shards laid in place. FormatError naming the tensor when
    they do not tile it."""
    where = ".".join(map(str, path))
    base = per_rank[0][path]
    chunks = []
    for archive, found in zip(archives, per_rank):
        sharded = found.get(path)
        if sharded is None:
            raise FormatError(archive.name, "no ShardedTensor here, where the first rank's file has one")
        if sharded.size != base.size or sharded.dtype != base.dtype:
            raise FormatError(archive.name, f"size {list(sharded.size)} {sharded.dtype.name}, where the first "
                                            f"rank's file says {list(base.size)} {base.dtype.name}")
        for offsets, sizes, ref in sharded.local:
            piece, _ = archive.tensor_piece(ref, where)
            chunks.append(Chunk(offsets, sizes, piece))
    problem = covers_exactly(base.size, chunks)
    if problem:
        raise FormatError(archives[0].name, f"the shards of {plural(len(archives), 'file')} do not tile it: {problem}")
    nbytes = math.prod(base.size) * (base.dtype.bits // 8)
    # where its first shard lies, for the index (.ckptfs/tensors.tsv); the file reads every shard
    first = chunks[0].piece if chunks else Extent(archives[0].source, 0, 0)
    extent = Extent(first.source, first.offset if isinstance(first, Extent) else first.base, nbytes)
    return assembled_tensor(where, base.dtype, base.size, chunks, extent)


FORMAT = DirectoryFormat("sharded torch.save (FSDP1)", sniff, open_dir,
                         "FSDP1 folders of per-rank torch.save files", writes=None)
