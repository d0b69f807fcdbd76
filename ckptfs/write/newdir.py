"""The new directory a directory format's writer fills (a repacked Hugging
Face folder, distributed checkpoint or folder of them), and the folder of
an `--to hf` export.

The names written come from outside: a remote listing, a checkpoint's
index, the files a user made in the mount (a file named `%2E%2E` is `..`
once unescaped). So nothing here joins a name onto a path: every file and
folder is made through a descriptor of the folder it goes in, each name
checked against the name rule (sources/pathnames.py) first and opened
without following a link (`O_NOFOLLOW`, `O_EXCL`), so that no name can
reach anything outside the new directory.
"""

from __future__ import annotations

import os

from ..errors import RepackError
from ..sources import pathnames
from ..sources.base import FileSource, Source
from ..tree.nodes import Dir, Node
from .diff import is_edited
from .output import Output

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NewDirectory:
    """A directory being written, `path` for messages. Its files are made
    with mode 0600 and its folders 0700: who else may read them is decided
    once it is whole (`output.keep_modes`), from the source."""

    def __init__(self, path: str, fd: int | None = None):
        self.path = path
        self.fd = os.open(path, _DIR_FLAGS) if fd is None else fd

    def __enter__(self) -> NewDirectory:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def sub(self, relpath: str) -> NewDirectory:
        """The folder `relpath` (made if missing) as a directory of its own,
        for the writer of a checkpoint inside this one; close it after use."""
        return NewDirectory(f"{self.path}/{relpath}", self._folder(relpath.split("/"), relpath))

    def folder(self, relpath: str) -> None:
        """Make the folder `relpath`, and those above it."""
        os.close(self._folder(relpath.split("/"), relpath))

    def write(self, relpath: str, fill) -> None:
        """A new file: `fill(output)` writes it, then it is fsynced."""
        parent, leaf = self._parent(relpath)
        try:
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
        finally:
            if parent != self.fd:
                os.close(parent)
        try:
            fill(Output(fd))
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep(self, original: Source, relpath: str) -> None:
        """An unchanged file of the source: hard-linked where it is a local
        file, its bytes copied where it is not (a remote one)."""
        if not isinstance(original, FileSource):
            self.write(relpath, lambda output: output.copy(original, 0, original.size))
            return
        parent, leaf = self._parent(relpath)
        try:
            os.link(original.path, leaf, dst_dir_fd=parent)  # a link inside the source (a Hub cache's blob): its file
        finally:
            if parent != self.fd:
                os.close(parent)

    def put(self, relpath: str, node: Node, original: Source | None) -> None:
        """A file or folder of the tree: `original` (the file of the source
        it shows) kept when unchanged, else its bytes written."""
        if isinstance(node, Dir):
            self.folder(relpath)
        elif original is not None and not is_edited(node):
            self.keep(original, relpath)
        else:
            self.write(relpath, lambda output: output.copy_content(node.content))

    def _parent(self, relpath: str) -> tuple[int, str]:
        """(a descriptor of the folder that holds `relpath`, made if missing;
        its last name). The descriptor is `self.fd` or one to close."""
        parts = relpath.split("/")
        _check(parts, relpath)
        return (self._folder(parts[:-1], relpath) if len(parts) > 1 else self.fd), parts[-1]

    def _folder(self, parts: list[str], relpath: str) -> int:
        _check(parts, relpath)
        fd = os.dup(self.fd)
        try:
            for part in parts:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd


def _check(parts: list[str], relpath: str) -> None:
    for part in parts:
        problem = pathnames.part_problem(part)
        if problem is not None:
            raise RepackError(f"a file of the folder cannot be named {relpath!r}: {problem} (rename or remove it "
                              "in the mount)")
