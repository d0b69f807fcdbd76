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

import os

from ...sources.base import FileSource
from ...tree import names
from ...tree.checkpoint import Checkpoint
from ...tree.nodes import Dir
from ...tree.rawfiles import raw_file
from ...tree.tensors import PlacedTensor
from ..base import DirectoryFormat
from .metadata import is_metadata
from .reader import expand, other_file
from .writer import Writer


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
        node, inner_tensors, inner_audit = other_file(source, name, notes)
        root.add(leaf, node)
        placed += [PlacedTensor(f"{leaf}/{p.path}", p.tensor) for p in inner_tensors]
        audit += [g for g in inner_audit if g not in audit]
    ckpt = Checkpoint("torch.distributed.checkpoint", path, st, root, raw, placed, notes, audit)
    ckpt.writer = Writer(path, files, chunks_of, fqn_of)
    return ckpt


FORMAT = DirectoryFormat("torch.distributed.checkpoint", sniff, open_dir)
