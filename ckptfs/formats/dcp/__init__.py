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

from ...sources.directory import Directory
from ...tree import names, xattrs
from ...tree.checkpoint import Checkpoint
from ...tree.nodes import Access, Dir
from ...tree.rawfiles import LINKS_OUTSIDE, add_links, raw_file
from ..base import DirectoryFormat, Nest, WriterKind
from ..nested import Grafts
from .metadata import is_metadata
from .reader import expand
from .writer import Writer


def sniff(directory: Directory) -> bool:
    return any(is_metadata(n) and directory.is_file(n) for n in directory.names())


def has_shards(directory: Directory) -> bool:
    return any(name.endswith(".distcp") for name in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    path = directory.path
    entries = directory.names()  # a distributed checkpoint is one flat folder
    files = {name: directory.open(name) for name in entries if directory.is_file(name)}
    outside = [name for name in entries if directory.is_link(name) and name not in files]
    chunks_of: dict = {}
    fqn_of: dict = {}
    root, placed, notes, pickle_globals = expand(path, files, chunks_of, fqn_of)
    # a tensor is assembled from every rank's shard: readable by whom all of them are
    shared = Access.of_all([s.origin.stat for s in files.values()] or [directory.stat()])
    for node in root.children.values():
        node.access = node.access or shared
    grafts = Grafts(placed, notes, pickle_globals)
    raw = Dir()
    for name, source in files.items():
        leaf, mtime = names.file_parts(name)[0], directory.mtime_ns(name)
        raw.add(leaf, raw_file(source, 0, source.size, mtime_ns=mtime))
        if owns(name) or leaf in root.children:
            continue
        # the directory's other files: Megatron's metadata.json as it is, common.pt expanded
        root.add(leaf, raw_file(source, 0, source.size, mtime_ns=mtime))
        grafts.file(root, leaf, leaf, source, mtime)
    add_links(directory, outside, root, raw)
    ckpt = Checkpoint("torch.distributed.checkpoint", path, directory.stat(), root, raw, grafts.placed, grafts.notes,
                      grafts.pickle_globals)
    if outside:
        root.xattrs[xattrs.READ_ONLY] = LINKS_OUTSIDE.format(", ".join(outside))
    else:
        ckpt.writer = Writer(path, files, chunks_of, fqn_of)
    return ckpt


def open_in_archive(members: Directory) -> Checkpoint:
    """A distributed checkpoint in a folder of an archive (a `.nemo`'s
    `model_weights/`): its tensors and items, served from the archive's
    bytes; the archive shows the other files of the folder beside them."""
    files = {name: members.open(name) for name in members.names()}
    chunks_of: dict = {}
    fqn_of: dict = {}
    root, placed, notes, pickle_globals = expand(members.path, files, chunks_of, fqn_of)
    ckpt = Checkpoint("torch.distributed.checkpoint", members.path, members.stat(), root, Dir(), placed, notes,
                      pickle_globals)
    ckpt.writer = Writer(members.path, files, chunks_of, fqn_of)
    return ckpt


def owns(name: str) -> bool:
    """The files a distributed checkpoint reads itself: its metadata and shards."""
    return is_metadata(name) or name.endswith(".distcp")


FORMAT = DirectoryFormat("torch.distributed.checkpoint", sniff, open_dir,
                         "torch.distributed.checkpoint directories (FSDP, DTensor, Megatron)", WriterKind.DIRECTORY,
                         nest=Nest(open_in_archive, owns))
