"""A directory whose subfolders are distributed checkpoints among other files:
a NeMo 2 checkpoint (`context/` beside `weights/`), a Megatron save folder
(`iter_0000100/` beside `latest_checkpointed_iteration.txt`).

Every subfolder that is a distributed checkpoint appears expanded in place;
every other file appears as it is, except torch.save files, which are
expanded at their own name as everywhere else (docs/layout.md).
"""

from __future__ import annotations

import os

from ..errors import FormatError
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Dir
from ..tree.rawfiles import LINKS_OUTSIDE, add_links, raw_file
from ..write.diff import below
from ..write.output import keep_file, put_file, write_new_file
from . import dcp
from .base import DirectoryFormat, DirectoryWriter, FileWriter, nested_writer
from .nested import Grafts


def sniff(directory: Directory) -> bool:
    """True when a direct subfolder is a distributed checkpoint."""
    return any(directory.is_dir(e) and dcp.sniff(directory.sub(e)) for e in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    path = directory.path
    root, raw = Dir(), Dir()
    grafts = Grafts()
    originals: dict[int, Source] = {}  # id(node) -> the file it shows, for the writer
    outside: list[str] = []  # links not followed
    unwritable = ""  # why a distributed checkpoint inside cannot be written, if it cannot
    pending = [""]
    while pending:
        rel = pending.pop(0)
        parts = names.file_parts(rel) if rel else []
        if parts and dcp.sniff(directory.sub(rel)):
            try:
                inner = dcp.open_dir(directory.sub(rel))
            except FormatError as e:
                grafts.notes.append(f"{rel} is shown as plain files: {e.problem}")
            else:
                inner.root.writer = inner.writer  # writes its folder of the new directory
                if inner.writer is None:  # then neither can the folder that holds it be written
                    unwritable = unwritable or f"{rel}: {inner.root.xattrs.get('ckptfs.read_only')}"
                raw.subdir(parts[:-1]).add(parts[-1], inner.raw)
                grafts.graft(root.subdir(parts[:-1]), parts[-1], "/".join(parts), inner.root, inner.tensors,
                             inner.notes, inner.pickle_globals)
                continue
        entries = [(f"{rel}/" if rel else "") + n for n in directory.names(rel)]
        pending[:0] = [e for e in entries if directory.is_dir(e)]  # depth first, in order
        outside += [e for e in entries if directory.is_link(e) and not directory.is_file(e)]
        for name in (e for e in entries if directory.is_file(e)):
            source, mtime = directory.open(name), directory.mtime_ns(name)
            leaf = names.file_parts(name.rpartition("/")[2])[0]
            raw.subdir(parts).add(leaf, raw_file(source, 0, source.size, mtime_ns=mtime))
            parent = root.subdir(parts)
            parent.add(leaf, raw_file(source, 0, source.size, mtime_ns=mtime))
            grafts.file(parent, leaf, "/".join([*parts, leaf]), source, mtime)  # a torch.save file, expanded
            originals[id(parent.children[leaf])] = source
    add_links(directory, outside, root, raw)
    ckpt = Checkpoint("folder of distributed checkpoints", path, directory.stat(), root, raw, grafts.placed,
                      grafts.notes, grafts.pickle_globals)
    if outside or unwritable:
        root.xattrs["ckptfs.read_only"] = unwritable or LINKS_OUTSIDE.format(", ".join(outside))
    else:
        ckpt.writer = Writer(originals)
    return ckpt


class Writer(DirectoryWriter):
    """Writes an edited folder as a new directory beside it (swapped in by
    the caller): each distributed checkpoint by its own writer, each
    torch.save file shown expanded by its own, every other file hard-linked
    when unchanged and written when edited or new."""

    def __init__(self, originals: dict[int, Source]):
        self.originals = originals

    def write_dir(self, files: dict, before: dict, out: str) -> None:
        owned = [p for p, n in files.items() if nested_writer(n) is not None]
        for path, node in sorted(files.items()):
            if any(path.startswith(folder + "/") for folder in owned):
                continue  # written by the checkpoint it belongs to
            target = os.path.join(out, *(names.unescape(p) for p in path.split("/")))
            writer = nested_writer(node)
            if isinstance(writer, DirectoryWriter):
                os.makedirs(target, exist_ok=True)
                writer.write_dir(*below(path, files, before), target)
            elif isinstance(writer, FileWriter):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                blob = writer.blob(*below(path, files, before))
                if blob is None:
                    keep_file(self.originals[id(node)], target)
                else:
                    write_new_file(target, blob.write)
            else:
                put_file(target, node, self.originals.get(id(node)))


FORMAT = DirectoryFormat("folder of distributed checkpoints", sniff, open_dir)
