"""Directories to read: what the directory formats (Hugging Face, distributed
checkpoints, folders of them) list, and each file opened as a Source. The
formats never call `os.listdir` or open files themselves, so a remote
prefix (a bucket, a hub repository) is one more subclass below them."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from .base import FileSource, Source


class Directory(ABC):
    """A directory of a checkpoint; names inside it are relative and use `/`."""

    #: how the directory is named to the user (an absolute path)
    path: str

    @abstractmethod
    def stat(self) -> os.stat_result:
        """The directory's own stat: owner, mode, times."""

    @abstractmethod
    def names(self, folder: str = "") -> list[str]:
        """The entries directly inside `folder` (relative; "" for this one), sorted."""

    @abstractmethod
    def is_file(self, name: str) -> bool:
        """True for a regular file, or a link to one that stays inside the
        checkpoint: links that lead elsewhere are never followed."""

    @abstractmethod
    def is_dir(self, name: str) -> bool:
        """True for a folder (not a link to one)."""

    @abstractmethod
    def is_link(self, name: str) -> bool:
        """True for a symbolic link (a Hugging Face cache snapshot is made of them)."""

    @abstractmethod
    def link_target(self, name: str) -> str:
        """Where the symbolic link `name` points, as it is written."""

    @abstractmethod
    def open(self, name: str) -> Source:
        """The file `name` as a byte source."""

    @abstractmethod
    def mtime_ns(self, name: str) -> int:
        """When the file `name` was last modified."""

    @abstractmethod
    def sub(self, folder: str) -> Directory:
        """The folder `folder` as a directory of its own."""

    def walk(self, folder: str = "") -> tuple[list[str], list[str]]:
        """Below `folder`, in one pass: every regular file (links to files
        inside followed), and every link that is not followed (it leaves the
        checkpoint, dangles, or leads to a folder), as paths relative to this
        directory, depth first in order (a folder's files before its folders')."""
        files, links, prefix = [], [], f"{folder}/" if folder else ""
        entries = [prefix + n for n in self.names(folder)]
        for name in entries:
            if self.is_file(name):
                files.append(name)
            elif self.is_link(name):
                links.append(name)
        for name in entries:
            if self.is_dir(name):
                more_files, more_links = self.walk(name)
                files += more_files
                links += more_links
        return files, links

    def read(self, name: str) -> bytes:
        source = self.open(name)
        return source.read_exact(0, source.size)


class LocalDirectory(Directory):
    """A directory on a local (or locally mounted) filesystem. A link is
    followed when it resolves inside the directory, or, for a Hugging Face
    cache snapshot (`models--ORG--NAME/snapshots/REV/`), inside that
    repository's cache folder, whose `blobs/` the snapshot links to."""

    def __init__(self, path: str, roots: tuple[str, ...] | None = None):
        self.path = os.path.abspath(path)
        if roots is None:
            real = os.path.realpath(self.path)
            parent = os.path.dirname(real)
            roots = (real,) + ((os.path.dirname(parent),) if os.path.basename(parent) == "snapshots" else ())
        self.roots = roots

    def _inside(self, name: str) -> bool:
        real = os.path.realpath(self._full(name))
        return any(real == root or real.startswith(root + os.sep) for root in self.roots)

    def _full(self, name: str) -> str:
        return os.path.join(self.path, *name.split("/")) if name else self.path

    def stat(self) -> os.stat_result:
        return os.stat(self.path)

    def names(self, folder: str = "") -> list[str]:
        try:
            return sorted(os.listdir(self._full(folder)))
        except OSError:
            return []

    def is_file(self, name: str) -> bool:
        return os.path.isfile(self._full(name)) and self._inside(name)

    def is_dir(self, name: str) -> bool:
        full = self._full(name)
        return os.path.isdir(full) and not os.path.islink(full)

    def is_link(self, name: str) -> bool:
        return os.path.islink(self._full(name))

    def link_target(self, name: str) -> str:
        return os.readlink(self._full(name))

    def open(self, name: str) -> FileSource:
        return FileSource(self._full(name))

    def mtime_ns(self, name: str) -> int:
        return os.stat(self._full(name)).st_mtime_ns

    def sub(self, folder: str) -> LocalDirectory:
        return LocalDirectory(self._full(folder), self.roots)
