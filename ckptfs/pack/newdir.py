"""The new directory a directory format's writer fills (a repacked Hugging
Face folder, distributed checkpoint or folder of them).

The names written come from outside: a remote listing, a checkpoint's
index, the files a user made in the mount (a file named `%2E%2E` is `..`
once unescaped). And the source's owner may change the source folder while
it is repacked: put a link where a file was, to a file only root may touch.
So nothing here goes by a path that could lead elsewhere:

- every file and folder is made through a descriptor of the folder it goes
  in, each name checked against the name rule (sources/pathnames.py) and
  opened without following a link (`O_NOFOLLOW`, `O_EXCL`);
- an unchanged file is hard-linked from the descriptor opened at mount
  (`/proc/self/fd/N`): the file the mount showed, not whatever its path
  names now;
- owners and modes are given through the new file's own descriptor: a file
  or folder that stands where the source had one takes its owner and mode
  (a file's as it was at mount; one saved anew under its name, and a
  folder, looked up below the source without following links), a new one
  the source folder's owner and group and the read bits it gives
  (`output.created_mode`). The new directory
  itself is given away last (`finish`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import RepackError
from ..sources import pathnames
from ..sources.base import FileSource, Source
from ..tree.nodes import Access, Dir, Node
from .changes import is_edited
from .output import Output, created_mode, keep_owner_and_mode, umask, with_search_bits

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Owners:
    """Who the files of a new directory belong to: the source folder, open
    as `fd`, and its stat (None for a remote source, whose new files stay
    the writer's, readable by the writer alone)."""

    fd: int | None = None
    top: os.stat_result | None = None

    @classmethod
    def of(cls, source_path: str) -> Owners:
        fd = os.open(source_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(fd, os.fstat(fd))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def counterpart(self, relpath: str, folder: bool) -> os.stat_result | None:
        """The stat of the source's folder (or regular file) at `relpath`, if
        it has one: found without following links (a link put in its place
        is no file of it). A file an editor saved as a new one and renamed
        (`sed -i`, vim) stands where the source's did, and keeps its mode."""
        if self.fd is None:
            return None
        fd = os.dup(self.fd)
        try:
            for part in relpath.split("/")[:-1]:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
            st = os.stat(relpath.rpartition("/")[2], dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)
        return st if (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)) else None

    def give(self, fd: int, like: os.stat_result | None, is_dir: bool) -> None:
        """Give the file or folder open as `fd` the owner and mode of `like`
        (what it stands in for), or those of a new one."""
        if like is not None:
            keep_owner_and_mode(like, fd)
            return
        if self.top is not None:
            try:
                os.fchown(fd, self.top.st_uid, self.top.st_gid)
            except PermissionError:
                pass  # not ours to give away: it stays the writer's
            mode = created_mode(Access.of(self.top), os.fstat(fd).st_gid) & ~umask()
        else:
            mode = 0o600
        os.fchmod(fd, with_search_bits(mode) if is_dir else mode)


class NewDirectory:
    """A directory being written, `path` for messages, its files given
    owners and modes by `owners`; `prefix` is where it lies in the top one."""

    def __init__(self, path: str, owners: Owners | None = None, fd: int | None = None, prefix: str = ""):
        self.path, self.owners, self.prefix = path, owners or Owners(), prefix
        self.fd = os.open(path, _DIR_FLAGS) if fd is None else fd

    def __enter__(self) -> NewDirectory:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def finish(self) -> None:
        """Give the new directory itself the source folder's owner and mode,
        once everything in it is made."""
        if self.owners.top is not None:
            keep_owner_and_mode(self.owners.top, self.fd)

    def sub(self, relpath: str) -> NewDirectory:
        """The folder `relpath` (made if missing) as a directory of its own,
        for the writer of a checkpoint inside this one; close it after use."""
        return NewDirectory(f"{self.path}/{relpath}", self.owners, self._folder(relpath.split("/"), relpath),
                            self.prefix + relpath + "/")

    def folder(self, relpath: str) -> None:
        """Make the folder `relpath`, and those above it."""
        os.close(self._folder(relpath.split("/"), relpath))

    def write(self, relpath: str, fill, like: Source | None = None) -> None:
        """A new file: `fill(output)` writes it, then it is fsynced. It
        stands in for `like` (the file of the source it replaces), if given."""
        parent, leaf = self._parent(relpath)
        try:
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
        finally:
            if parent != self.fd:
                os.close(parent)
        try:
            fill(Output(fd))
            known = _mounted_stat(like) or self.owners.counterpart(self.prefix + relpath, folder=False)
            self.owners.give(fd, known, is_dir=False)
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep(self, original: Source, relpath: str) -> None:
        """An unchanged file of the source: a hard link to the file the
        mount read (its descriptor), where it is a local file still there;
        else its bytes copied."""
        if isinstance(original, FileSource):
            parent, leaf = self._parent(relpath)
            try:
                os.link(f"/proc/self/fd/{original.fd}", leaf, dst_dir_fd=parent, follow_symlinks=True)
                return
            except OSError:
                pass  # gone since (or not ours to link): copied below, from the descriptor
            finally:
                if parent != self.fd:
                    os.close(parent)
        self.write(relpath, lambda output: output.copy(original, 0, original.size), like=original)

    def put(self, relpath: str, node: Node, original: Source | None) -> None:
        """A file or folder of the tree: `original` (the file of the source
        it shows) kept when unchanged, else its bytes written."""
        if isinstance(node, Dir):
            self.folder(relpath)
        elif original is not None and not is_edited(node):
            self.keep(original, relpath)
        else:
            self.write(relpath, lambda output: output.copy_content(node.content), like=original)

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
            for depth, part in enumerate(parts, 1):
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
                if made:
                    self.owners.give(fd, self.owners.counterpart(self.prefix + "/".join(parts[:depth]), folder=True),
                                     is_dir=True)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _mounted_stat(source: Source | None) -> os.stat_result | None:
    """The stat a local file of the source had when it was mounted."""
    origin = source.origin if source is not None else None
    return origin.stat if isinstance(origin, FileSource) else None


def _check(parts: list[str], relpath: str) -> None:
    for part in parts:
        problem = pathnames.part_problem(part)
        if problem is not None:
            raise RepackError(f"a file of the folder cannot be named {relpath!r}: {problem} (rename or remove it "
                              "in the mount)")
