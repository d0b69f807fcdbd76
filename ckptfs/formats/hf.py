"""Hugging Face model directories: safetensors shards, an index, other files.

Every `.safetensors` file appears expanded at its own name as a read-only
shard folder. The tensors named by `*.safetensors.index.json` (or, without an
index, those of all top-level `.safetensors` files) are merged into one tree at
the root. Every other file appears as it is.
"""

from __future__ import annotations

import json
import os

from .. import names
from ..checkpoint import Checkpoint
from ..errors import FormatError
from ..rawfiles import raw_file
from ..sources import FileSource
from ..tensors import Tensor, merge_into, tensor_tree
from ..tree import Dir
from . import safetensors

INDEX_SUFFIX = ".safetensors.index.json"


def sniff(path: str) -> bool:
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return any(e.endswith(".safetensors") or e.endswith(INDEX_SUFFIX) for e in entries)


def open_dir(path: str) -> Checkpoint:
    st = os.stat(path)
    root = Dir()
    raw = Dir()
    shards: dict[str, dict[str, Tensor]] = {}
    for rel in _files(path):
        parts = names.file_parts(rel)
        full = os.path.join(path, rel)
        source = FileSource(full)
        mtime = source.stat.st_mtime_ns
        raw.subdir(parts[:-1]).add(parts[-1], raw_file(source, 0, source.size, mtime_ns=mtime))
        if rel.endswith(".safetensors"):
            folder, _, by_name = safetensors.expand(source)
            folder.mtime_ns = mtime
            root.subdir(parts[:-1]).add(parts[-1], folder)
            shards[rel] = by_name
        else:
            root.subdir(parts[:-1]).add(parts[-1], raw_file(source, 0, source.size, mtime_ns=mtime))

    merged, notes = _merged_tensors(path, shards)
    tree, placed = tensor_tree(merged)
    placed = merge_into(root, tree, placed)
    return Checkpoint("huggingface (safetensors)", path, st, root, raw, placed, notes)


def _files(top: str) -> list[str]:
    """Relative paths of the regular files below `top` (symlinks to files
    followed, as in the Hugging Face cache), sorted."""
    found = []
    for here, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(here, f)
            if os.path.isfile(full):
                found.append(os.path.relpath(full, top))
    return found


def _merged_tensors(path: str, shards: dict[str, dict[str, Tensor]]) -> tuple[list[Tensor], list[str]]:
    """The tensors of the merged tree, and notes when there is none."""
    indexes = sorted(f for f in os.listdir(path) if f.endswith(INDEX_SUFFIX))
    if "model" + INDEX_SUFFIX in indexes:
        indexes = ["model" + INDEX_SUFFIX]
    if len(indexes) == 1:
        return _from_index(os.path.join(path, indexes[0]), shards), []
    if len(indexes) > 1:
        return [], [f"several index files ({', '.join(indexes)}) and none is model{INDEX_SUFFIX}; no merged tree"]
    merged: dict[str, Tensor] = {}
    for rel, tensors in sorted(shards.items()):
        if "/" in rel:
            continue  # only top-level files make up the model without an index
        clash = merged.keys() & tensors.keys()
        if clash:
            return [], [f"tensor {sorted(clash)[0]!r} is in more than one shard and there is no index; no merged tree"]
        merged.update(tensors)
    return list(merged.values()), []


def _from_index(index_path: str, shards: dict[str, dict[str, Tensor]]) -> list[Tensor]:
    try:
        with open(index_path, "rb") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise FormatError(index_path, f"cannot read the index: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(index_path, "index has no 'weight_map' object")
    merged = []
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or shard not in shards:
            raise FormatError(index_path, f"tensor {name!r} is mapped to shard {shard!r}, which is missing")
        tensor = shards[shard].get(name)
        if tensor is None:
            raise FormatError(index_path, f"tensor {name!r} is not in its shard {shard!r}")
        merged.append(tensor)
    return merged
