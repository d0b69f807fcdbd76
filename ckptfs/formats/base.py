"""What a format is to the rest of ckptfs (docs/architecture.md, "Adding a
format"): how it recognises a checkpoint, how it opens one into a tree, and
how its writer puts an edited tree back.

A format is one module that ends with its `FORMAT` (a `FileFormat` or a
`DirectoryFormat`); `formats/__init__.py` lists them in the order detection
tries them. A writable format gives its `Checkpoint` a `Writer`: a
`FileWriter` streams one file, a `DirectoryWriter` fills a new directory.
The edit session (write/session.py) calls writers through these classes
only; a writer gets what it needs (the tree as it is and as it was, an
output) and returns, never calling back into the session.
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, ClassVar, Generic, TypeVar

from ..errors import EditRefused, MoveRefused, RepackError
from ..sources import pathnames
from ..sources.directory import Directory
from ..tree import names
from ..tree.nodes import Dir, File, Node

if TYPE_CHECKING:
    from ..pack.output import Blob, Output
    from ..sources.base import Source
    from ..tree.checkpoint import Checkpoint
    from ..tree.tensors import PlacedTensor

#: how many first bytes a file format's `sniff` is shown
SNIFF_BYTES = 512

#: path -> node of the edited tree, as `pack.changes.files_of` lists it
Files = dict[str, Node]
#: path -> (node, its content at mount) of the tree as the source has it
Before = dict[str, tuple[Node, object]]


class WriterKind(Enum):
    """How a format's checkpoints take edits: what its writer makes, swapped
    in for the source at unmount (docs/writing.md)."""

    FILE = "file"  # a `FileWriter`: one new file
    DIRECTORY = "directory"  # a `DirectoryWriter`: a new directory


class Pickles(Enum):
    """Where loaders find the pickles of a file of a format: what `ckptfs
    scan` reads of it (scan.py), whatever its name."""

    ZIP = "in the records of a zip, which torch.load and np.load open"
    GZIP = "in the tar inside the gzip stream (read at the top level only: no loader inflates a file inside another)"
    UNMARKED = "none, but torch.load reads a file as a pickle from its first byte, PROTO marker or not"
    OBJECTS = "after an .npy header whose dtype holds Python objects, which np.load(allow_pickle=True) unpickles"


@dataclass(frozen=True)
class Opening:
    """What a file format's `open` is handed: the file and what lies around it."""

    source: Source
    #: its stat: owner, mode, times, and the identity a cached index is kept under
    stat: os.stat_result
    #: where a format may keep what it builds once (a gzip tar's seek index)
    cache_dir: str
    #: the folder the file lies in, to list and open the files beside it
    #: (an ONNX model's external data, a TensorFlow `.index` beside its
    #: `.data-*` shards), the links that leave it not followed; None where
    #: nothing can be listed (a member of an archive, a remote object)
    neighbours: Directory | None = None


#: what a format's `sniff` looks at: a file's first bytes, or a directory
Sniffed = TypeVar("Sniffed")
#: what a format's `open` is handed: an `Opening` of a file, or a directory
Opened = TypeVar("Opened")


@dataclass(frozen=True)
class Format(Generic[Sniffed, Opened]):
    """What the registry holds of every format (formats/__init__.py)."""

    name: str
    #: True if this (a file's first SNIFF_BYTES bytes, or a directory) is a checkpoint of this format
    sniff: Callable[[Sniffed], bool]
    #: the file and what lies around it, or the directory -> the checkpoint
    open: Callable[[Opened], Checkpoint]
    #: one line: what `ckptfs --help`, `ckptfs info` and the README's table call it
    description: str
    #: how its checkpoints take edits (its `Checkpoint` has a `Writer`), None if they do not
    writes: WriterKind | None


@dataclass(frozen=True)
class FileFormat(Format[bytes, Opening]):
    """A format stored in one file, recognised by its first bytes."""

    #: for a format that can be shown inside another checkpoint (formats/nested.py):
    #: (the inner file, its path, notes) -> (its tree with a writer, its placed
    #: tensors, its pickle globals), or None to leave it a plain file
    nest: Callable[[Source, str, list[str]], tuple[Dir, list[PlacedTensor], list[str]] | None] | None = None
    #: where `ckptfs scan` looks for the pickles of a file this format
    #: sniffs; None: the scan judges by the bytes alone (a PROTO marker, a
    #: header tarfile takes, what `pickle.load` would read: scan.py)
    pickles: Pickles | None = None


@dataclass(frozen=True)
class DirectoryFormat(Format[Directory, Directory]):
    """A format stored as a directory, recognised by what it holds."""

    #: for a format whose folders are shown expanded where they lie inside
    #: another checkpoint (formats/nested.py): a folder of a NeMo 2
    #: checkpoint, opened by `open`, or of a `.nemo` archive, by this
    nest: Nest | None = None


@dataclass(frozen=True)
class Nest:
    """How a directory format's folder is shown inside an archive (a
    `.nemo`'s `model_weights/`)."""

    #: (the folder's members, as a flat Directory) -> its checkpoint, whose
    #: writer writes the members the edits change (`DirectoryWriter.new_files`)
    open: Callable[[Directory], Checkpoint]
    #: whether a file of the folder, by name, is the format's own (read by
    #: `open`); the others stay beside its tree as the archive shows them
    owns: Callable[[str], bool]
    #: whether `open` reads the files of the folder's subfolders too (a
    #: Megatron zarr checkpoint's array folders): its Directory then holds
    #: every file below the folder, and the archive expands none of them itself
    deep: bool = False


@dataclass(frozen=True)
class Moved:
    """A file or folder where a rename puts it: its path in the checkpoint
    after the rename, and, for one of the source's (rather than a file made
    in the mount), its path in the checkpoint as the source has it."""

    path: str
    node: Node
    was: str | None

    @property
    def from_source(self) -> bool:
        return self.was is not None


class Writer(ABC):
    """Writes an edited tree back in its format."""

    #: a new `.npy` file in the tree becomes a new tensor of the checkpoint
    #: (the `.ckptfs/` view lists it as one)
    adds_tensors: ClassVar[bool] = False
    #: fills a new directory (`DirectoryWriter`) rather than one file
    directory: ClassVar[bool] = False

    #: files and folders of the source can be renamed: the writer finds
    #: them at their new paths and names their keys after those. A writer
    #: that keys them by where the source had them says False, and a rename
    #: of anything of the source is refused when it is made (EPERM)
    renames: ClassVar[bool] = True

    def check(self, path: str, node: File) -> None:
        """Raise EditRefused, naming `path` and the problem, if the edited
        file cannot be written back; asked when it is closed. By default
        every edit waits for the repack to be judged."""

    def check_move(self, moved: list[Moved]) -> None:
        """Raise MoveRefused if the format cannot hold a rename that puts
        each of `moved` (the file or folder renamed and everything in it)
        where it says; asked before the rename is made."""

    @staticmethod
    def check_moved_files(moved: list[Moved], allowed: Callable[[str], bool], why: str) -> None:
        """MoveRefused (EPERM) naming the first moved file whose new path
        `allowed` refuses, and `why`."""
        for m in moved:
            if isinstance(m.node, File) and not allowed(m.path):
                raise MoveRefused(f"{m.path}: {why}", errno.EPERM)

    @staticmethod
    def check_file_name(path: str) -> None:
        """EditRefused unless the file at `path` of the tree stands for a
        path a folder can hold (a file made as `%2E%2E` stands for `..`):
        for formats whose files become files on disk (a folder's, a tar's
        members once unpacked)."""
        problem = _folder_problem(path)
        if problem is not None:
            raise EditRefused(f"{path}: {NOT_IN_A_FOLDER}: {problem}")

    @classmethod
    def check_moved_file_names(cls, moved: list[Moved]) -> None:
        """`check_move` for the formats `check_file_name` is for: each moved
        file must land at a path a folder can hold."""
        cls.check_moved_files(moved, lambda path: _folder_problem(path) is None, NOT_IN_A_FOLDER)


#: why a file of the tree cannot be written to a folder under its name
NOT_IN_A_FOLDER = "cannot be a file of the folder it is written to"


def _folder_problem(path: str) -> str | None:
    """What keeps the file at `path` of the tree from being a file of a folder, or None."""
    return pathnames.path_problem(names.disk_path(path))


class FileWriter(Writer):
    """A format stored in one file."""

    @abstractmethod
    def write(self, files: Files, before: Before, output: Output) -> None:
        """The whole new file into `output`; RepackError naming every edit
        the format cannot hold."""

    def blob(self, files: Files, before: Before) -> Blob | None:
        """The new bytes of this checkpoint when it is a file inside another
        one (a `.ckpt` in a `.nemo`), or None if nothing in it changed."""
        raise RepackError(f"{type(self).__module__}: this format cannot be written inside another checkpoint")


class DirectoryWriter(Writer):
    """A format stored as a directory."""

    directory = True

    @abstractmethod
    def write_dir(self, files: Files, before: Before, out) -> None:
        """Fill the empty directory `out` (a `pack.newdir.NewDirectory`,
        which makes each file below it, whatever its name) with the new
        checkpoint."""

    def new_files(self, files: Files, before: Before) -> dict[str, Blob | None]:
        """When the directory lies inside an archive (a `.nemo`'s
        `model_weights/`): its files that the edits change, by name, each
        with its new bytes, or None to leave it out."""
        raise RepackError(f"{type(self).__module__}: this format cannot be written inside an archive")


def nested_writer(node: Node | None) -> Writer | None:
    """The writer of a checkpoint shown expanded inside another (a folder
    whose `writer` rebuilds the file or directory it stands for)."""
    return node.writer if isinstance(node, Dir) else None
