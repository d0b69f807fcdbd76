"""Megatron-Core (and NeMo 1.x) distributed checkpoints saved with the
`zarr` backend: `metadata.json` saying `"sharded_backend": "zarr"`,
`common.pt` (the state that is not sharded, a torch.save file), and a
folder per sharded tensor key holding a zarr v2 array (formats/zarr_array.py):
`.zarray` and a chunk file per rank's shard, stored raw.

Every array is one `.npy` at its key split at dots, read chunk by chunk;
`metadata.json` shows as `metadata.yaml`; `common.pt` and the sharded
objects' `.pt` files are expanded as torch.save files are everywhere. The
array folders are found by listing (a folder holding `.zarray`), never by a
name read from a file. Read-only: Megatron no longer writes this backend.
"""

from __future__ import annotations

from ..errors import FormatError
from ..limits import LIMITS
from ..pickle.pyobjects import to_yaml
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Access, Content, Dir, File
from ..tree.rawfiles import LINKS_OUTSIDE, raw_file
from ..tree.tensors import PlacedTensor, Tensor, merge_into, own_access, tensor_tree
from .base import DirectoryFormat, Nest
from .jsontext import json_object
from .nested import Grafts, show_directory
from .zarr_array import MAX_META_BYTES, array_tensor, find_chunks, parse_meta

NAME = "Megatron zarr distributed checkpoint"
CONFIG = "metadata.json"
#: bytes of metadata.json read at most (Megatron writes four short fields)
MAX_CONFIG_BYTES = 1 << 16
ARRAY_META = ".zarray"
READ_ONLY = "ckptfs reads Megatron zarr checkpoints but does not write them"


def _config(directory: Directory) -> dict | None:
    """metadata.json, when it is a JSON object of at most MAX_CONFIG_BYTES."""
    if not directory.is_file(CONFIG):
        return None
    source = directory.open(CONFIG)
    if source.size > MAX_CONFIG_BYTES:
        return None
    try:
        return json_object(source.read_exact(0, source.size), source.path, MAX_CONFIG_BYTES, "a checkpoint's metadata")
    except FormatError:
        return None


def sniff(directory: Directory) -> bool:
    config = _config(directory)
    return config is not None and config.get("sharded_backend") == "zarr"


class Arrays:
    """The zarr arrays of a checkpoint's folder as tensors, each read from
    the files of its own folder; an array that cannot be read is left out
    with a note naming it."""

    def __init__(self, directory: Directory):
        self.directory = directory
        self.tensors: list[Tensor] = []
        self.notes: list[str] = []

    def take(self, rel: str, parts: list[str], root: Dir, raw: Dir) -> bool:
        """`show_directory`'s `take_folder`: a folder holding `.zarray` is
        an array, its files shown in the raw mirror only."""
        directory = self.directory
        if not directory.is_file(f"{rel}/{ARRAY_META}"):
            return False
        inside, links = directory.walk(rel)
        if links:  # a chunk not followed would read as the fill value
            self.notes.append(f"{rel}: holds links that lead outside the checkpoint ({', '.join(links)}): not read")
        elif len(inside) > LIMITS.members:
            self.notes.append(f"{rel}: {len(inside)} files: more than max_members ({LIMITS.members})")
        else:
            files = {name[len(rel) + 1:]: directory.open(name) for name in inside}
            for name, source in files.items():
                where, mtime = names.file_parts(name), directory.mtime_ns(f"{rel}/{name}")
                raw.subdir(parts + where[:-1]).add(where[-1], raw_file(source, 0, source.size, mtime_ns=mtime))
            self.add(rel, files)
        return True

    def add(self, key: str, files: dict[str, Source]) -> None:
        """The array of the key `key`, whose folder's files are `files` (by
        path relative to it)."""
        label = f"{self.directory.path}/{key}"
        try:
            meta_source = files[ARRAY_META]
            meta = parse_meta(meta_source.pread(0, MAX_META_BYTES + 1), label)  # a longer one is refused
            self.tensors.append(array_tensor(key, meta, find_chunks(meta, files), label, meta_source))
        except FormatError as e:
            self.notes.append(f"{key}: {e.problem}" if e.path == label else f"{key}: {e}")

    def placed(self, root: Dir) -> list[PlacedTensor]:
        """Put the tensors' files into `root` (a name a file of the folder
        holds already gets its first character escaped)."""
        tree, placed = tensor_tree(self.tensors)
        return merge_into(root, tree, placed)


def open_dir(directory: Directory) -> Checkpoint:
    config = _config(directory)
    if config is None:
        raise FormatError(directory.path, f"{CONFIG} is no longer a JSON object")
    grafts, arrays = Grafts(), Arrays(directory)
    shown = show_directory(directory, grafts, take_folder=arrays.take)
    root = shown.root
    _config_as_yaml(root, config)
    placed = arrays.placed(root)
    own_access(root, placed, Access.of(directory.stat()))
    ckpt = Checkpoint(NAME, directory.path, directory.stat(), root, shown.raw, [*grafts.placed, *placed],
                      [*arrays.notes, *grafts.notes], grafts.pickle_globals)
    root.xattrs[xattrs.READ_ONLY] = LINKS_OUTSIDE.format(", ".join(shown.outside)) if shown.outside else READ_ONLY
    return ckpt


def _config_as_yaml(root: Dir, config: dict) -> None:
    """metadata.json as metadata.yaml (the raw mirror keeps the JSON)."""
    shown = root.children.pop(CONFIG, None)
    yaml_file = File(Content([to_yaml(config).encode("utf-8")]))
    yaml_file.mtime_ns = shown.mtime_ns if shown is not None else None
    root.add("metadata.yaml", yaml_file)


def open_in_archive(members: Directory) -> Checkpoint:
    """The checkpoint in a folder of an archive (a NeMo 1.x `.nemo`'s
    `model_weights/`), every file below the folder shown by it, read-only
    in a writable mount of the archive."""
    ckpt = open_dir(members)
    ckpt.root.read_only = True
    return ckpt


FORMAT = DirectoryFormat("megatron-zarr", sniff, open_dir,
                         "Megatron-Core / NeMo distributed checkpoints, zarr backend", None,
                         nest=Nest(open_in_archive, lambda name: True, deep=True))
