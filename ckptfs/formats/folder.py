"""A directory whose subfolders are distributed checkpoints among other files:
a NeMo 2 checkpoint (`context/` beside `weights/`), a Megatron save folder
(`iter_0000100/` beside `latest_checkpointed_iteration.txt`).

Every subfolder that is a distributed checkpoint appears expanded in place;
every other file appears as it is, except torch.save files, which are
expanded at their own name as everywhere else (docs/layout.md).
"""

from __future__ import annotations

from typing import Callable

from ..errors import FormatError
from ..pack.changes import below
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Dir, File
from ..tree.rawfiles import LINKS_OUTSIDE
from .base import DirectoryFormat, DirectoryWriter, FileWriter, WriterKind, nested_writer
from .nested import Grafts, Shown, directory_format, show_directory


def sniff(directory: Directory) -> bool:
    """True when a direct subfolder is a checkpoint of a directory format
    that nests (a distributed checkpoint)."""
    return any(directory.is_dir(e) and directory_format(directory.sub(e)) is not None for e in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    nested = Nested()

    def distributed(rel: str, parts: list[str], root: Dir, raw: Dir) -> bool:
        """A subfolder that is a distributed checkpoint, shown expanded in place."""
        fmt = directory_format(directory.sub(rel))
        return fmt is not None and nested.take(fmt.open, directory, rel, parts, root, raw)

    shown = show_directory(directory, nested.grafts, take_folder=distributed)
    return nested.checkpoint("folder of distributed checkpoints", directory, shown)


class Nested:
    """The checkpoints of a folder's subfolders, each shown expanded where
    it lies and written by its own writer (`Writer` below), and what keeps
    the folder from being written: any of them that cannot be."""

    def __init__(self):
        self.grafts = Grafts()
        self.unwritable: list[str] = []  # why a checkpoint inside cannot be written, if one cannot

    def take(self, opener: Callable[[Directory], Checkpoint], directory: Directory, rel: str, parts: list[str],
             root: Dir, raw: Dir) -> bool:
        """Show the subfolder `rel` (`parts` in the tree) as `opener` reads
        it; False leaves it plain files (with a note if it cannot be read)."""
        try:
            inner = opener(directory.sub(rel))
        except FormatError as e:
            self.grafts.notes.append(f"{rel} is shown as plain files: {e.problem}")
            return False
        inner.root.writer = inner.writer  # writes its folder of the new directory
        if inner.writer is None:  # then neither can the folder that holds it be written
            self.unwritable.append(f"{rel}: {inner.root.xattrs.get(xattrs.READ_ONLY)}")
        raw.subdir(parts[:-1]).add(parts[-1], inner.raw)
        self.grafts.graft(root.subdir(parts[:-1]), parts[-1], "/".join(parts), inner.root, inner.tensors,
                          inner.notes, inner.pickle_globals, inner.quantized, inner.undequantized)
        return True

    def checkpoint(self, name: str, directory: Directory, shown: Shown, notes: list[str] = ()) -> Checkpoint:
        """The folder as one checkpoint, `notes` of its own first; writable
        unless a link leads out or a checkpoint inside cannot be written."""
        grafts = self.grafts
        ckpt = Checkpoint(name, directory.path, directory.stat(), shown.root, shown.raw,
                          grafts.placed, [*notes, *grafts.notes], grafts.pickle_globals, quantized=grafts.quantized,
                          undequantized=grafts.undequantized)
        if shown.outside or self.unwritable:
            shown.root.xattrs[xattrs.READ_ONLY] = (self.unwritable[0] if self.unwritable
                                                     else LINKS_OUTSIDE.format(", ".join(shown.outside)))
        else:
            ckpt.writer = Writer(shown.sources)
        return ckpt


class Writer(DirectoryWriter):
    """Writes an edited folder as a new directory beside it (swapped in by
    the caller): each distributed checkpoint by its own writer, each
    torch.save file shown expanded by its own, every other file hard-linked
    when unchanged and written when edited or new."""

    def __init__(self, originals: dict[int, Source]):
        self.originals = originals

    def check(self, path: str, node: File) -> None:
        self.check_file_name(path)

    def check_move(self, moved: list) -> None:
        self.check_moved_file_names(moved)

    def write_dir(self, files: dict, before: dict, out: str) -> None:
        owned = [p for p, n in files.items() if nested_writer(n) is not None]
        for path, node in sorted(files.items()):
            if any(path.startswith(folder + "/") for folder in owned):
                continue  # written by the checkpoint it belongs to
            target = names.disk_path(path)
            writer = nested_writer(node)
            if isinstance(writer, DirectoryWriter):
                with out.sub(target) as inner:
                    writer.write_dir(*below(path, files, before), inner)
            elif isinstance(writer, FileWriter):
                blob = writer.blob(*below(path, files, before))
                if blob is None:
                    out.keep(self.originals[id(node)], target)
                else:
                    out.write(target, blob.write, like=self.originals[id(node)])
            else:
                out.put(target, node, self.originals.get(id(node)))


FORMAT = DirectoryFormat("folder of distributed checkpoints", sniff, open_dir,
                         "folders holding distributed checkpoints (NeMo 2, Megatron saves)", WriterKind.DIRECTORY)
