"""Checkpoints inside checkpoints: a `.ckpt` in a `.nemo`, `common.pt` beside
a distributed checkpoint, a distributed checkpoint in a folder or a tar.

One helper grafts every one of them: the inner checkpoint's folder takes the
place of the file (or folder) it was read from, its tensors are placed under
that path, and its notes and pickle globals join the outer checkpoint's. A
file is expanded by the first format of the registry that sniffs it and can
open it nested (`FileFormat.nest`); its raw bytes stay in the raw mirror. A
folder is expanded by the first directory format that sniffs it and can be
nested (`DirectoryFormat.nest`, `directory_format`): no format names another.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names
from ..tree.nodes import Access, Dir
from ..tree.rawfiles import add_links, raw_file
from ..tree.tensors import PlacedTensor, QuantizedTensor
from .base import SNIFF_BYTES

if TYPE_CHECKING:
    from .base import DirectoryFormat


def directory_format(directory: Directory) -> DirectoryFormat | None:
    """The first directory format of the registry that can be shown nested
    in another checkpoint and sniffs `directory` as one of its own."""
    from . import DIRECTORY_FORMATS  # the registry lists this module's users: imported when first needed

    return next((fmt for fmt in DIRECTORY_FORMATS if fmt.nest is not None and fmt.sniff(directory)), None)


class Members(Directory):
    """The files of one folder of an archive, by name, as a directory
    (`Nest.open` reads it): names with a `/` lie in its subfolders (a
    deep nest's); no links."""

    def __init__(self, path: str, stat: os.stat_result, mtimes: dict[str, int], opener: Callable[[str], Source]):
        self.path, self._stat, self.mtimes, self.opener = path, stat, mtimes, opener
        self._folders: dict[str, list[str]] | None = None

    def _listing(self) -> dict[str, list[str]]:
        """Each folder's entries (files and subfolders), made when first asked for."""
        if self._folders is None:
            listing: dict[str, set[str]] = {"": set()}
            for name in self.mtimes:
                folder = ""
                for part in name.split("/"):
                    listing.setdefault(folder, set()).add(part)
                    folder = f"{folder}/{part}" if folder else part
            self._folders = {folder: sorted(entries) for folder, entries in listing.items()}
        return self._folders

    def stat(self) -> os.stat_result:
        return self._stat

    def names(self, folder: str = "") -> list[str]:
        return self._listing().get(folder, [])

    def is_file(self, name: str) -> bool:
        return name in self.mtimes

    def is_dir(self, name: str) -> bool:
        return name not in self.mtimes and name in self._listing()

    def is_link(self, name: str) -> bool:
        return False

    def link_target(self, name: str) -> str:
        raise FileNotFoundError(name)

    def open(self, name: str) -> Source:
        return self.opener(name)

    def mtime_ns(self, name: str) -> int:
        return self.mtimes[name]

    def sub(self, folder: str) -> Directory:
        if not self.is_dir(folder):
            raise FileNotFoundError(folder)
        prefix = folder + "/"
        return Members(f"{self.path}/{folder}", self._stat,
                       {name[len(prefix):]: t for name, t in self.mtimes.items() if name.startswith(prefix)},
                       lambda name: self.opener(prefix + name))


@dataclass
class Grafts:
    """What the checkpoints nested in one outer checkpoint add to its facts."""

    placed: list[PlacedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pickle_globals: list[str] = field(default_factory=list)
    quantized: list[QuantizedTensor] = field(default_factory=list)
    undequantized: list[str] = field(default_factory=list)

    def graft(self, parent: Dir, leaf: str, path: str, folder: Dir, tensors: list[PlacedTensor],
              notes: list[str] = (), pickle_globals: list[str] = (), quantized: list[QuantizedTensor] = (),
              undequantized: list[str] = ()) -> None:
        """Put `folder` (an inner checkpoint's tree) at `parent/leaf`, whose
        path in the outer tree is `path`."""
        parent.children[leaf] = folder
        self.placed += [PlacedTensor(f"{path}/{p.path}", p.tensor) for p in tensors]
        self.quantized += [dataclasses.replace(q, raw_path=q.raw_path and f"{path}/{q.raw_path}",
                                               dequantized_path=q.dequantized_path and f"{path}/{q.dequantized_path}")
                           for q in quantized]
        self.notes += [f"{path}: {n}" for n in notes]
        self.undequantized += [f"{path}: {n}" for n in undequantized]
        self.pickle_globals += [g for g in pickle_globals if g not in self.pickle_globals]

    def file(self, parent: Dir, leaf: str, path: str, source: Source, mtime_ns: int | None) -> bool:
        """Expand the file at `parent/leaf` (`path` in the outer tree) if it
        is a checkpoint that can be shown nested; False leaves it a plain
        file (one that looks like a checkpoint but cannot be read gets a note)."""
        from . import FILE_FORMATS  # the registry lists this module's users: imported when first needed

        head = source.pread(0, SNIFF_BYTES)
        for fmt in FILE_FORMATS:
            if fmt.nest is not None and fmt.sniff(head):
                try:
                    expanded = fmt.nest(source, path, self.notes)
                except Exception as e:  # a fault of the inner file must not take the outer checkpoint down
                    self.notes.append(f"{path} is shown as a plain file: {type(e).__name__}: {e}")
                    return False
                if expanded is None:
                    return False
                folder, tensors, pickle_globals = expanded
                folder.mtime_ns = mtime_ns
                origin = source.origin
                folder.access = Access.of(origin.stat) if origin is not None else None
                self.graft(parent, leaf, path, folder, tensors, (), pickle_globals)
                return True
        return False


@dataclass
class Shown:
    """A directory shown file by file: the tree, its raw mirror, the links
    not followed (they lead outside), and the source of every file by the
    node at its place in the tree (`id(node)`), for a writer to keep."""

    root: Dir
    raw: Dir
    outside: list[str]
    sources: dict[int, Source]


def show_directory(directory: Directory, grafts: Grafts,
                   each_folder: Callable[[str, Dir, str], None] | None = None,
                   take_folder: Callable[[str, list[str], Dir, Dir], bool] | None = None) -> Shown:
    """Every file of `directory` as it is, at its own path, torch.save files
    expanded. `take_folder(relative path, its parts, root, raw)` may show a
    subfolder itself (returning True), before it is walked; `each_folder(
    relative path, its folder, its path in the tree)` is called for every
    folder walked, once its files are in."""
    shown = Shown(Dir(), Dir(), [], {})
    pending = [""]
    while pending:
        rel = pending.pop(0)
        parts = names.file_parts(rel) if rel else []
        if parts and take_folder is not None and take_folder(rel, parts, shown.root, shown.raw):
            continue
        entries = [(f"{rel}/" if rel else "") + n for n in directory.names(rel)]
        pending[:0] = [e for e in entries if directory.is_dir(e)]  # depth first, in order
        shown.outside += [e for e in entries if directory.is_link(e) and not directory.is_file(e)]
        for name in (e for e in entries if directory.is_file(e)):
            source, mtime = directory.open(name), directory.mtime_ns(name)
            leaf = names.file_parts(name.rpartition("/")[2])[0]
            shown.raw.subdir(parts).add(leaf, raw_file(source, 0, source.size, mtime_ns=mtime))
            parent = shown.root.subdir(parts)
            parent.add(leaf, raw_file(source, 0, source.size, mtime_ns=mtime))
            grafts.file(parent, leaf, "/".join([*parts, leaf]), source, mtime)
            shown.sources[id(parent.children[leaf])] = source  # the file, or what it was expanded into
        if each_folder is not None:
            each_folder(rel, shown.root.subdir(parts), "/".join(parts))
    add_links(directory, shown.outside, shown.root, shown.raw)
    return shown
