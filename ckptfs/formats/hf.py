"""Hugging Face model directories: safetensors shards, an index, other files;
or, in a folder without safetensors (transformers picks those first),
torch.save weights (`pytorch_model.bin`, shards and their index: hf_torch.py).

Every `.safetensors` file (or torch.save weights file) appears expanded at
its own name as a read-only shard folder. The tensors named by the index
(`*.safetensors.index.json`, `*.bin.index.json`; without one, those of the
file the library loads by default, `model.safetensors` or
`diffusion_pytorch_model.safetensors` (`.bin`), where there is one beside
variants such as `model.fp16.safetensors`, else of all top-level weights
files) are merged into one tree at the root. Every other file appears as
it is.
"""

from __future__ import annotations

import json
import math
import os

from ..errors import CkptfsError, EditRefused, FormatError
from ..pack.changes import is_edited
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names, npy, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Access, Dir, File, Symlink
from ..tree.rawfiles import LINKS_OUTSIDE, add_links, raw_file
from ..tree.tensors import Tensor, dtype_before, merge_into, own_access, tensor_key, tensor_tree
from . import hf_torch, quantized, safetensors
from .base import DirectoryFormat, DirectoryWriter, WriterKind

INDEX_SUFFIX = ".safetensors.index.json"
#: the weights file transformers or diffusers loads without an index (and
#: without a `variant`), where one lies among others
DEFAULT_WEIGHTS = ("model.safetensors", "diffusion_pytorch_model.safetensors",
                   "pytorch_model.bin", "diffusion_pytorch_model.bin")


def sniff(directory: Directory) -> bool:
    return _holds_safetensors(directory) or any(
        hf_torch.is_weights(e) or e.endswith(hf_torch.INDEX_SUFFIX) for e in directory.names())


def _holds_safetensors(directory: Directory) -> bool:
    """Weights in safetensors: those are the model's, as transformers picks
    them, whatever `.bin` files lie beside them."""
    return any(e.endswith(".safetensors") or e.endswith(INDEX_SUFFIX) for e in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    path = directory.path
    root = Dir()
    raw = Dir()
    shards: dict[str, dict[str, Tensor]] = {}
    metadata: dict[str, dict | None] = {}
    torch_shards: dict[str, hf_torch.Shard] = {}
    originals: dict[int, str] = {}  # the plain files, for the writer
    sources: dict[str, Source] = {}  # every file, by relative path, for the writer to keep
    links = False
    in_torch = not _holds_safetensors(directory)
    suffix = hf_torch.INDEX_SUFFIX if in_torch else INDEX_SUFFIX
    indexes = [f for f in directory.names() if f.endswith(suffix)]
    weights = _torch_weights(directory, indexes) if in_torch else set()
    found, outside = directory.walk()
    for rel in found:  # links to files followed, as in the Hugging Face cache
        parts = names.file_parts(rel)
        links = links or directory.is_link(rel)
        source = sources[rel] = directory.open(rel)
        mtime = directory.mtime_ns(rel)
        raw.subdir(parts[:-1]).add(parts[-1], raw_file(source, 0, source.size, mtime_ns=mtime))
        folder = None
        if rel.endswith(".safetensors"):
            folder, _, by_name, metadata[rel] = safetensors.expand(source)
            shards[rel] = by_name
        elif rel in weights:
            shard = torch_shards[rel] = hf_torch.expand(source, os.path.join(path, rel))
            folder = shard.folder
        if folder is not None:
            folder.mtime_ns = mtime
            folder.read_only = True  # tensors are edited in the merged tree
            folder.access = Access.of(source.stat)
            root.subdir(parts[:-1]).add(parts[-1], folder)
        else:
            node = root.subdir(parts[:-1]).add(parts[-1], raw_file(source, 0, source.size, mtime_ns=mtime))
            originals[id(node)] = rel

    torch = None
    if in_torch:
        chosen, notes = _merged_tensors(directory, indexes, {rel: {n: (rel, n) for n in s.paths}
                                                            for rel, s in torch_shards.items()}, suffix)
        notes += [f"{rel} {s.problem}; no merged tree" for rel, s in torch_shards.items() if s.problem]
        by_shard: dict[str, list[str]] = {}
        for rel, name in [] if notes else chosen:
            by_shard.setdefault(rel, []).append(name)
        tree, placed, owner = hf_torch.merged_tree(torch_shards, by_shard)
        torch = hf_torch.TorchShards(torch_shards, by_shard, owner)
        aside = sorted(shards)  # safetensors files in subfolders
    else:
        merged, notes = _merged_tensors(directory, indexes, shards, suffix)
        tree, placed = tensor_tree(merged)
        used = {id(t) for t in merged}  # a sentence-transformers 2_Dense/model.safetensors holds none of them
        aside = sorted(rel for rel, by_name in shards.items() if not any(id(t) in used for t in by_name.values()))
    own_access(tree, placed, Access.of(directory.stat()))
    by_name = {p.tensor.name: p.tensor for p in placed}
    quantization_notes: list[str] = []  # not the notes that make the mount read-only
    dequantized, undequantized = quantized.shown(tree, by_name, quantized.model_config(directory, quantization_notes))
    placed = merge_into(root, tree, placed)
    add_links(directory, outside, root, raw)
    kind = "torch.save" if in_torch else "safetensors"
    pickle_globals = sorted({g for s in torch_shards.values() for g in s.globals})
    ckpt = Checkpoint(f"huggingface ({kind})", path, directory.stat(), root, raw, placed,
                      notes + quantization_notes + undequantized,
                      pickle_globals, quantized=dequantized, undequantized=undequantized)
    ckpt.pretrained_files = _beside_weights(root, weights | set(shards), {p.path.split("/")[0] for p in placed})
    if outside:
        root.xattrs[xattrs.READ_ONLY] = LINKS_OUTSIDE.format(", ".join(outside))
    elif links:
        root.xattrs[xattrs.READ_ONLY] = "a Hugging Face cache snapshot (symlinks into blobs/): copy it to edit"
    elif not (set(shards) - set(aside) or torch_shards) or notes or len(indexes) > 1:
        root.xattrs[xattrs.READ_ONLY] = "no single index or set of files names the model's tensors to write back"
    else:
        model = {rel: by_name for rel, by_name in shards.items() if rel not in aside}
        ckpt.writer = Writer(sources, model, metadata, indexes[0] if indexes else None, originals,
                             sum(p.tensor.numel for p in placed), torch, aside)
    return ckpt


def _beside_weights(root: Dir, weights: set[str], tensor_tops: set[str]) -> list[str]:
    """The top-level entries from_pretrained reads beside the weights: all
    but the merged tree's, the weights files (of either kind) and their indexes."""
    def is_weights(name: str) -> bool:
        return (name in weights or name.endswith((".safetensors", INDEX_SUFFIX, hf_torch.INDEX_SUFFIX))
                or hf_torch.is_weights(name))

    return sorted(n for n in root.children if n not in tensor_tops and not is_weights(n))


def _torch_weights(directory: Directory, indexes: list[str]) -> set[str]:
    """The torch.save weights files: those an index names, and the top-level
    files named as transformers names them (names only: a file of the walk
    whose path is one of them is read as weights)."""
    weights = {e for e in directory.names() if hf_torch.is_weights(e)}
    for index in indexes:
        weights |= {f for f in _weight_map(directory, index).values() if isinstance(f, str)}
    return weights


def _merged_tensors(directory: Directory, indexes: list[str], shards: dict[str, dict], suffix: str):
    """The tensors of the merged tree (the values of `shards`, by shard file
    and name), and notes when there is none."""
    preferred = ("pytorch_model" if suffix == hf_torch.INDEX_SUFFIX else "model") + suffix
    if preferred in indexes:
        indexes = [preferred]
    if len(indexes) == 1:
        return _from_index(directory, indexes[0], shards), []
    if len(indexes) > 1:
        return [], [f"several index files ({', '.join(indexes)}) and none is {preferred}; no merged tree"]
    default = [rel for rel in shards if rel in DEFAULT_WEIGHTS]
    if len(default) == 1:  # what the library loads; a variant beside it (`model.fp16.safetensors`) is not the model
        shards = {default[0]: shards[default[0]]}
    merged: dict[str, object] = {}
    for rel, tensors in sorted(shards.items()):
        if "/" in rel:
            continue  # only top-level files make up the model without an index
        clash = merged.keys() & tensors.keys()
        if clash:
            return [], [f"tensor {sorted(clash)[0]!r} is in more than one shard and there is no index; no merged tree"]
        merged.update(tensors)
    return list(merged.values()), []


def _weight_map(directory: Directory, index_name: str) -> dict:
    index_path = os.path.join(directory.path, index_name)
    try:
        index = json.loads(directory.read(index_name))
    except (OSError, ValueError, CkptfsError) as e:
        raise FormatError(index_path, f"cannot read the index: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(index_path, "index has no 'weight_map' object")
    return weight_map


def _from_index(directory: Directory, index_name: str, shards: dict[str, dict]) -> list:
    index_path = os.path.join(directory.path, index_name)
    merged = []
    for name, shard in _weight_map(directory, index_name).items():
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
    weight_map and total_size follow. Shards are safetensors files, or
    torch.save files (`torch`: hf_torch.py writes them)."""

    adds_tensors = True  # a new `.npy` in the merged tree is a new tensor

    def __init__(self, sources: dict[str, Source], shards: dict[str, dict[str, Tensor]], metadata: dict,
                 index: str | None, originals: dict[int, str], elements: int,
                 torch: hf_torch.TorchShards | None = None, aside: list[str] = ()):
        self.sources, self.shards, self.metadata, self.index = sources, shards, metadata, index
        self.elements = elements  # of the merged tensors at mount
        self.shard_of = {name: rel for rel, tensors in shards.items() for name in tensors}
        self.originals = originals  # id(node) -> relative path, for the files of the source
        self.torch = torch
        self.aside = aside  # weights files that hold none of the merged tree's tensors: kept as they are

    def check(self, path: str, node: File) -> None:
        if not path.endswith(".npy"):
            self.check_file_name(path)
        elif id(node) in self.originals:
            return
        elif self.torch is not None:
            self.torch.check(path, node)
        else:
            try:
                npy.edited_layout(node.content, path, dtype_before(node), safetensors.storable, "safetensors")
            except ValueError as e:
                raise EditRefused(str(e)) from None

    def check_move(self, moved: list) -> None:
        self.check_moved_file_names(moved)

    def write_dir(self, files: dict, before: dict, out: str) -> None:
        tensors, plain = {}, {}
        expanded = [*self.shards, *self.aside, *(self.torch.shards if self.torch else ())]
        shard_folders = [_tree_path(rel) for rel in expanded]
        for path, node in files.items():
            if any(path == s or path.startswith(s + "/") for s in shard_folders):
                continue  # the read-only shard folders
            if isinstance(node, File) and path.endswith(".npy") and id(node) not in self.originals:
                tensors[path] = node
            elif isinstance(node, Symlink) and self.torch is not None:
                tensors[path] = node  # a tensor a torch.save shard holds under two names
            elif isinstance(node, File):  # folders are made for the files they hold, not for tensors
                plain[path] = node
        if self.torch is not None:
            homes, rewritten = self.torch.write(out, tensors, files, before, self.sources)
            home = {self.torch.name(p, n): homes[p] for p, n in tensors.items()}
            tensors = {self.torch.name(p, n): n for p, n in tensors.items()}
        else:
            tensors, home, rewritten = self._write_safetensors(tensors, out)
        for rel in self.aside:
            out.keep(self.sources[rel], rel)
        for path, node in sorted(plain.items()):
            rel = self.originals.get(id(node))
            target = names.disk_path(path)
            if rel is not None and rel == self.index and rewritten and not is_edited(node):
                out.write(target, lambda output: output.write(self._index(tensors, home)), like=self.sources[rel])
            else:
                out.put(target, node, rel and self.sources[rel])

    def _write_safetensors(self, by_path: dict, out) -> tuple[dict, dict, bool]:
        """The safetensors shards; (the tensors by name, the shard of each, whether one was written anew)."""
        tensors = {}
        for path, node in by_path.items():
            tensors[tensor_key(path, node)] = node
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
        return tensors, home, rewritten

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
            sizes = {name: _layout(node, name) for name, node in tensors.items() if isinstance(node, File)}
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


FORMAT = DirectoryFormat("Hugging Face directory", sniff, open_dir, "Hugging Face model directories", WriterKind.DIRECTORY)
