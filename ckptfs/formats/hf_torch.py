"""The torch.save weights of a Hugging Face folder: `pytorch_model.bin`, or
`pytorch_model-0000K-of-0000N.bin` shards and `pytorch_model.bin.index.json`,
as transformers wrote them before safetensors (`torch.save` of a dict of
tensors by name, one per shard; huggingface_hub's `save_torch_state_dict`
with `safe_serialization=False` writes the same).

Each shard shows its pickled tree (read-only); the merged tree shows every
tensor of the index at the same path, as a file of its own. The writer
hands each shard's writer (torch.save zip or legacy) the merged tree's
files of that shard at the shard's paths, so an edit of a tensor's bytes is
patched into the file and any other edit rewrites its pickle, every other
value of the file kept (hf.py's writer does the rest of the folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import FormatError
from ..pack.changes import changes, files_of
from ..pickle.objtree import ObjectTree
from ..pickle.torch_classes import TensorRef
from ..sources.base import Source
from ..tree import names
from ..tree.nodes import Dir, File, Node, PathConflict, Symlink
from ..tree.tensors import PlacedTensor, shown_again
from . import torchlegacy, torchzip
from .base import SNIFF_BYTES, FileWriter

INDEX_SUFFIX = ".bin.index.json"
#: the weights files transformers looks for without an index: `pytorch_model.bin`,
#: a variant (`pytorch_model.fp16.bin`), shards (`pytorch_model-00001-of-00002.bin`);
#: and diffusers, in a pipeline's component folder: `diffusion_pytorch_model.bin`, ...
WEIGHTS = re.compile(r"(diffusion_)?pytorch_model([.-][^/]*)?\.bin")


def is_weights(rel: str) -> bool:
    return WEIGHTS.fullmatch(rel) is not None


@dataclass
class Shard:
    """One torch.save file of the folder: its tree, and for each tensor of
    its state dict the path that tree shows it at."""

    folder: Dir
    placed: list[PlacedTensor]
    paths: dict[str, str]  # tensor name -> path in `folder` (a link where the pickle holds it twice)
    writer: FileWriter
    globals: list[str]
    #: every path of `folder` -> (node, content), as a writer's `before`
    entries: dict = field(default_factory=dict)
    #: why its tensors cannot be merged (not a dict of tensors by name), or None
    problem: str | None = None


def expand(source: Source, path: str) -> Shard:
    """A shard file read: FormatError naming it if it is no torch.save file."""
    head = source.pread(0, SNIFF_BYTES)
    if torchzip.sniff(head):
        archive, writer = torchzip.TorchZip(source, path), torchzip.Writer(source, path)
    elif torchlegacy.sniff(head):
        archive, writer = torchlegacy.TorchLegacy(source, path), torchlegacy.Writer(source, path)
    else:
        raise FormatError(path, "not a torch.save file (a weights file of a Hugging Face folder must be one)")
    builder = ObjectTree(archive.tensor, record=True)
    try:
        folder = builder.build(archive.obj)
    except RecursionError:
        raise FormatError(path, "data.pkl: containers nested too deeply to show") from None
    except PathConflict as e:
        raise FormatError(path, f"data.pkl: two keys need the same path {e}") from None
    obj = archive.obj
    problem = None
    if not (isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in obj.items())):
        problem = "holds no state dict (a dict of tensors by name)"
    paths = {key: p for p, (container, key) in builder.slots.items() if container is obj and p.endswith(".npy")}
    entries = {p: (n, n.content if isinstance(n, File) else None) for p, n in files_of(folder, ignored=()).items()}
    return Shard(folder, builder.placed, paths, writer, [g.path for g in archive.globals], entries, problem)


def merged_tree(shards: dict[str, Shard], chosen: dict[str, list[str]]) -> tuple[Dir, list[PlacedTensor], dict]:
    """The tensors `chosen` of each shard (names by shard file) as one tree,
    each at the path its shard shows it at: (the tree, its tensors, the
    shard file of each of its nodes by `id`)."""
    root, placed, owner = Dir(), [], {}
    for rel, wanted in chosen.items():
        shard = shards[rel]
        by_path = {p.path: p.tensor for p in shard.placed}
        for name in wanted:
            path = shard.paths[name]
            node = shard.entries[path][0]
            copy: Node = (Symlink(node.target) if isinstance(node, Symlink) else
                          shown_again(node, mtime_ns=shard.folder.mtime_ns))
            parts = path.split("/")
            try:
                root.subdir(parts[:-1]).add(parts[-1], copy)
            except PathConflict:
                raise FormatError(rel, f"tensor {name!r} needs the path {path}, which another shard's tensor has") from None
            owner[id(copy)] = rel
            if path in by_path:
                placed.append(PlacedTensor(path, by_path[path]))
    return root, placed, owner


@dataclass
class TorchShards:
    """What hf.py's writer needs to write the torch.save shards back."""

    shards: dict[str, Shard]
    chosen: dict[str, list[str]]  # the names of each shard the merged tree shows
    owner: dict[int, str]  # id(node of the merged tree) -> its shard file

    def __post_init__(self):
        self.key_at = {rel: {shard.paths[n]: n for n in self.chosen.get(rel, ())} for rel, shard in self.shards.items()}

    @property
    def last(self) -> str:
        """The shard new tensors go to: the last the index (or the merge)
        uses, never a variant beside them (`pytorch_model.fp16.bin`, which
        sorts after `pytorch_model-00002-of-00002.bin`)."""
        return sorted(self.chosen or self.shards)[-1]

    def home(self, node: Node) -> str:
        return self.owner.get(id(node), self.last)

    def check(self, path: str, node: File) -> None:
        self.shards[self.home(node)].writer.check(path, node)

    def shard_trees(self, tensors: dict[str, Node], files: dict, before: dict, rel: str):
        """(files, before) of shard `rel` as its own writer reads them: the
        merged tree's tensor files (and links) that belong to it, at their
        paths; the folders its tree has; and the values of the file the
        merged tree does not show, as they are."""
        shard = self.shards[rel]
        mine = {p: n for p, n in tensors.items() if self.home(n) == rel}
        shown = {p for p, (n, _) in before.items() if self.owner.get(id(n)) == rel}
        dirs = {p for p, (n, _) in shard.entries.items() if isinstance(n, Dir)}
        kept = {p: v for p, v in shard.entries.items() if p not in self.key_at[rel] and p not in dirs}
        folders = {p: files.get(p) if isinstance(files.get(p), Dir) else shard.entries[p][0] for p in dirs
                   if isinstance(files.get(p), Dir) or any(k.startswith(p + "/") for k in kept)}
        after = {**{p: n for p, (n, _) in kept.items()}, **mine, **folders}
        was = {**kept, **{p: before[p] for p in shown}, **{p: shard.entries[p] for p in dirs}}
        return after, was

    def write(self, out, tensors: dict[str, Node], files: dict, before: dict,
              sources: dict) -> tuple[dict[str, str], bool]:
        """Each shard kept (hard-linked) or written anew; (the shard of every
        tensor path, whether one was written anew)."""
        rewritten = False
        for rel, shard in sorted(self.shards.items()):
            after, was = self.shard_trees(tensors, files, before, rel)
            if not changes(was, after):
                out.keep(sources[rel], rel)
            else:
                rewritten = True
                out.write(rel, lambda output, s=shard, a=after, w=was: s.writer.write(a, w, output), like=sources[rel])
        return {p: self.home(n) for p, n in tensors.items()}, rewritten

    def name(self, path: str, node: Node) -> str:
        """The key a tensor path of the merged tree stands for in its shard."""
        rel = self.owner.get(id(node))
        name = self.key_at[rel].get(path) if rel is not None else None
        if name is not None:
            return name
        return names.tensor_name(path)
