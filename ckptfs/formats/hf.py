"""Hugging Face model directories: safetensors shards, an index, other files.

Every `.safetensors` file appears expanded at its own name as a read-only
shard folder. The tensors named by `*.safetensors.index.json` (or, without an
index, those of all top-level `.safetensors` files) are merged into one tree at
the root. Every other file appears as it is.
"""

from __future__ import annotations

import json
import math
import os

from ..errors import CkptfsError, EditRefused, FormatError
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names, npy
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME
from ..tree.nodes import Access, Dir, File
from ..tree.rawfiles import LINKS_OUTSIDE, add_links, raw_file
from ..tree.tensors import Tensor, merge_into, tensor_tree
from ..write.diff import is_edited
from . import safetensors
from .base import DirectoryFormat, DirectoryWriter

INDEX_SUFFIX = ".safetensors.index.json"


def sniff(directory: Directory) -> bool:
    return any(e.endswith(".safetensors") or e.endswith(INDEX_SUFFIX) for e in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    path = directory.path
    root = Dir()
    raw = Dir()
    shards: dict[str, dict[str, Tensor]] = {}
    metadata: dict[str, dict | None] = {}
    originals: dict[int, str] = {}  # the plain files, for the writer
    sources: dict[str, Source] = {}  # every file, by relative path, for the writer to keep
    links = False
    found, outside = directory.walk()
    for rel in found:  # links to files followed, as in the Hugging Face cache
        parts = names.file_parts(rel)
        links = links or directory.is_link(rel)
        source = sources[rel] = directory.open(rel)
        mtime = directory.mtime_ns(rel)
        raw.subdir(parts[:-1]).add(parts[-1], raw_file(source, 0, source.size, mtime_ns=mtime))
        if rel.endswith(".safetensors"):
            folder, _, by_name, metadata[rel] = safetensors.expand(source)
            folder.mtime_ns = mtime
            folder.read_only = True  # tensors are edited in the merged tree
            folder.access = Access.of(source.stat)
            root.subdir(parts[:-1]).add(parts[-1], folder)
            shards[rel] = by_name
        else:
            node = root.subdir(parts[:-1]).add(parts[-1], raw_file(source, 0, source.size, mtime_ns=mtime))
            originals[id(node)] = rel

    indexes = [f for f in directory.names() if f.endswith(INDEX_SUFFIX)]
    merged, notes = _merged_tensors(directory, indexes, shards)
    tree, placed = tensor_tree(merged)
    _own_access(tree, placed, Access.of(directory.stat()))
    placed = merge_into(root, tree, placed)
    add_links(directory, outside, root, raw)
    ckpt = Checkpoint("huggingface (safetensors)", path, directory.stat(), root, raw, placed, notes)
    if outside:
        root.xattrs["ckptfs.read_only"] = LINKS_OUTSIDE.format(", ".join(outside))
    elif links:
        root.xattrs["ckptfs.read_only"] = "a Hugging Face cache snapshot (symlinks into blobs/): copy it to edit"
    elif not shards or notes or len(indexes) > 1:
        root.xattrs["ckptfs.read_only"] = "no single index or set of files names the model's tensors to write back"
    else:
        ckpt.writer = Writer(sources, shards, metadata, indexes[0] if indexes else None, originals,
                             sum(t.numel for t in merged))
    return ckpt


def _own_access(tree: Dir, placed: list, default: Access) -> None:
    """Each tensor is readable by whom its shard file is, where that is not
    the directory's owner and read bits."""
    for p in placed:
        access = Access.of(p.tensor.data.source.origin.stat)
        if access != default:
            parts = p.path.split("/")
            tree.subdir(parts[:-1]).children[parts[-1]].access = access


def _merged_tensors(directory: Directory, indexes: list[str],
                    shards: dict[str, dict[str, Tensor]]) -> tuple[list[Tensor], list[str]]:
    """The tensors of the merged tree, and notes when there is none."""
    if "model" + INDEX_SUFFIX in indexes:
        indexes = ["model" + INDEX_SUFFIX]
    if len(indexes) == 1:
        return _from_index(directory, indexes[0], shards), []
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


def _from_index(directory: Directory, index_name: str, shards: dict[str, dict[str, Tensor]]) -> list[Tensor]:
    index_path = os.path.join(directory.path, index_name)
    try:
        index = json.loads(directory.read(index_name))
    except (OSError, ValueError, CkptfsError) as e:
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


# ---------------------------------------------------------------- the writer


class Writer(DirectoryWriter):
    """Writes an edited Hugging Face directory as a new directory beside it
    (swapped in by the caller). Tensors are edited in the merged tree; each
    goes back to the shard that held it (new ones to the last shard). A shard
    whose tensors are all unchanged, and every unchanged file, is hard-linked
    from the source; a changed shard is written anew, and the index's
    weight_map and total_size follow."""

    adds_tensors = True  # a new `.npy` in the merged tree is a new tensor

    def __init__(self, sources: dict[str, Source], shards: dict[str, dict[str, Tensor]], metadata: dict,
                 index: str | None, originals: dict[int, str], elements: int):
        self.sources, self.shards, self.metadata, self.index = sources, shards, metadata, index
        self.elements = elements  # of the merged tensors at mount
        self.shard_of = {name: rel for rel, tensors in shards.items() for name in tensors}
        self.originals = originals  # id(node) -> relative path, for the files of the source

    def check(self, path: str, node: File) -> None:
        if not path.endswith(".npy"):
            self.check_file_name(path)
        elif id(node) not in self.originals:
            like = BY_NAME.get(node.xattrs.get("ckptfs.dtype", ""))
            try:
                npy.edited_layout(node.content, path, like, safetensors.storable, "safetensors")
            except ValueError as e:
                raise EditRefused(str(e)) from None

    def write_dir(self, files: dict, before: dict, out: str) -> None:
        tensors, plain = {}, {}
        for path, node in files.items():
            if any(path == s or path.startswith(s + "/") for s in map(_tree_path, self.shards)):
                continue  # the read-only shard folders
            if isinstance(node, File) and path.endswith(".npy") and id(node) not in self.originals:
                name = node.xattrs.get("ckptfs.name") or ".".join(names.unescape(p) for p in path[:-4].split("/"))
                tensors[name] = node
            elif isinstance(node, File):  # folders are made for the files they hold, not for tensors
                plain[path] = node
        last = sorted(self.shards)[-1]
        home = {name: self.shard_of.get(name, last) for name in tensors}
        rewritten = False
        for rel, originals in sorted(self.shards.items()):
            mine = {n: tensors[n] for n in tensors if home[n] == rel}
            if set(mine) == set(originals) and not any(is_edited(n) for n in mine.values()):
                out.keep(self.sources[rel], rel)
                continue
            rewritten = True
            shard_files = {"/".join(names.tensor_path(n)): node for n, node in mine.items()}
            writer = safetensors.Writer(originals, self.metadata.get(rel))
            out.write(rel, lambda output: writer.write(shard_files, {}, output), like=self.sources[rel])
        for path, node in sorted(plain.items()):
            rel = self.originals.get(id(node))
            target = names.disk_path(path)
            if rel is not None and rel == self.index and rewritten and not is_edited(node):
                out.write(target, lambda output: output.write(self._index(tensors, home)), like=self.sources[rel])
            else:
                out.put(target, node, rel and self.sources[rel])

    def _index(self, tensors: dict, home: dict) -> bytes:
        """The index as transformers writes it: weight_map, and the metadata's
        total_size (bytes of all tensors) and total_parameters (which counts
        what transformers calls parameters, not every tensor; it moves by
        the elements added or removed)."""
        source = self.sources[self.index]
        index = json.loads(source.read_exact(0, source.size))
        index["weight_map"] = {name: home[name] for name in sorted(tensors)}
        metadata = index.get("metadata")
        if isinstance(metadata, dict):
            sizes = {name: _layout(node, name) for name, node in tensors.items()}
            if "total_size" in metadata:
                metadata["total_size"] = sum(nbytes for nbytes, _ in sizes.values())
            if isinstance(metadata.get("total_parameters"), int):
                metadata["total_parameters"] += sum(numel for _, numel in sizes.values()) - self.elements
        return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def _layout(node: File, name: str) -> tuple[int, int]:
    """(bytes of data, elements) of a tensor's `.npy` file."""
    _, shape, start = npy.parse_header(node.content.read(0, 65536), name)
    return node.content.size - start, math.prod(shape)


def _tree_path(rel: str) -> str:
    return "/".join(names.file_parts(rel))


FORMAT = DirectoryFormat("Hugging Face directory", sniff, open_dir, "Hugging Face model directories", writable=True)
