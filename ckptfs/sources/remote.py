"""Checkpoints on object storage, web servers, the Hugging Face Hub and
any fsspec filesystem, as sources: an object as a `RemoteSource` (or,
with `-o fetch=whole`, a `WholeSource`), a prefix as a `RemoteDirectory`,
opened by `open_url` from one request to the URL's store
(sources/stores/), which pins each object's size and version.

Reads go through the mount's PageCache; a read of a version other than
the pinned one fails with SourceChangedError (EIO, one log line), and
bytes of two versions are never mixed. Credentials are the storage
library's own (environment, config files) and never logged.
"""

from __future__ import annotations

import functools
import logging
import os
import stat as stat_module
import time

from ..errors import CkptfsError
from . import pathnames
from .base import Source
from .directory import Directory
from .location import location
from .pagecache import PageCache
from .pinning import listing_identity, object_identity, pin
from .settings import SETTINGS
from .stores.base import RemoteError, RemoteObject, store_for

log = logging.getLogger(__name__)


def synthetic_stat(size: int, mtime: float, directory: bool = False) -> os.stat_result:
    """What a remote object shows as its stat: the mounting user's, readable
    by that user only (the credentials that read it are that user's)."""
    mode = (stat_module.S_IFDIR | 0o500) if directory else (stat_module.S_IFREG | 0o400)
    when = mtime or time.time()
    ns = int(when * 1e9)
    return os.stat_result((mode, 0, 0, 1, os.getuid(), os.getgid(), size, int(when), int(when), int(when),
                           when, when, when, ns, ns, ns))


class RemoteSource(Source):
    """A remote object, read through the mount's page cache."""

    slow = True  # a read may wait for the network: the FUSE layer runs it in a worker thread

    def __init__(self, obj: RemoteObject, cache: PageCache):
        self.obj, self.cache = obj, cache
        self.path, self.size = obj.url, obj.size
        self.stat = synthetic_stat(obj.size, obj.mtime)

    def pread(self, offset: int, length: int) -> bytes:
        return self.cache.read(self.obj.key, self.size, self.obj.fetch, offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        self.cache.prefetch(self.obj.key, self.size, self.obj.fetch, offset, length)

    @property
    def identity(self) -> str:
        """Which object and version: what caches of parsed indexes key on."""
        return self.obj.key

    @property
    def origin(self) -> RemoteSource:
        """Itself: its `stat` (the mounting user's, owner-only) decides who reads it."""
        return self


class WholeSource(RemoteSource):
    """A web server's file downloaded whole into the disk cache once and
    read from there (`-o fetch=whole`): for a server that ignores range
    requests. The copy is of the pinned version, kept under its URL, ETag,
    size and modification time, so a later mount of the same version
    downloads nothing."""

    slow = False

    def __init__(self, obj: RemoteObject, cache: PageCache):
        super().__init__(obj, cache)
        if cache.disk is None:
            raise RemoteError(f"{obj.url}: -o fetch=whole keeps the file in the disk cache, which "
                              "-o cache_disk=0 turns off")
        key = f"{obj.key}\0{obj.size}\0{obj.mtime}"
        self.fd, downloaded = cache.disk.whole(key, obj.size, functools.partial(store_for(obj.url).download, obj))
        if downloaded:
            with cache.lock:
                cache.requests += 1
                cache.fetched += obj.size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, max(0, min(length, self.size - offset)), offset)

    def prefetch(self, offset: int, length: int) -> None:
        pass  # all of it is here


class RemoteDirectory(Directory):
    """A prefix of an object store as a directory, from one listing. Each
    object's name is checked against the name rule (sources/pathnames.py)
    as it enters: a key such as `../x`, `/x` or `a//b` is kept under a name
    with those parts escaped (`%2E%2E/x`), so that no name of this
    directory leads outside a folder it is written to."""

    def __init__(self, url: str, objects: dict[str, RemoteObject], cache: PageCache):
        self.path, self.objects, self.cache = url, _checked_names(url, objects), cache
        self.folders: dict[str, set[str]] = {"": set()}
        for name in self.objects:
            parts = name.split("/")
            for depth in range(len(parts)):
                folder = "/".join(parts[:depth])
                self.folders.setdefault(folder, set()).add(parts[depth])
        newest = max((o.mtime for o in self.objects.values()), default=0.0)
        self._stat = synthetic_stat(0, newest, directory=True)

    def stat(self) -> os.stat_result:
        return self._stat

    def names(self, folder: str = "") -> list[str]:
        return sorted(self.folders.get(folder, ()))

    def is_file(self, name: str) -> bool:
        return name in self.objects

    def is_dir(self, name: str) -> bool:
        return name in self.folders and name not in self.objects

    def is_link(self, name: str) -> bool:
        return False

    def link_target(self, name: str) -> str:
        raise OSError(f"{self.path}{name}: object stores have no links")

    def open(self, name: str) -> RemoteSource:
        return RemoteSource(self.objects[name], self.cache)

    def mtime_ns(self, name: str) -> int:
        return int(self.objects[name].mtime * 1e9)

    def sub(self, folder: str) -> RemoteDirectory:
        prefix = folder + "/"
        return RemoteDirectory(self.path + prefix, {n[len(prefix):]: o for n, o in self.objects.items()
                                                   if n.startswith(prefix)}, self.cache)


def _checked_names(url: str, objects: dict[str, RemoteObject]) -> dict[str, RemoteObject]:
    """`objects` with each name that breaks the name rule escaped (one line
    in the log says which), or left out where its escaped name, or a folder
    of that name, is taken."""
    checked = {name: obj for name, obj in objects.items() if pathnames.path_problem(name) is None}
    folders = {name[:i] for name in checked for i, ch in enumerate(name) if ch == "/"}
    renamed, dropped = [], []
    for name, obj in objects.items():
        if name in checked:
            continue
        kept = pathnames.escaped(name)
        if kept in checked or kept in folders:
            dropped.append(name)
            continue
        checked[kept] = obj
        folders.update(kept[:i] for i, ch in enumerate(kept) if ch == "/")
        renamed.append(f"{name!r} as {kept!r}")
    if renamed or dropped:
        log.warning("%s: %s", url, "; ".join(
            ([f"names no folder can hold are shown escaped: {', '.join(renamed[:3])}"
              f"{f' and {len(renamed) - 3} more' if len(renamed) > 3 else ''}"] if renamed else []) +
            ([f"left out, their escaped names taken: {', '.join(map(repr, dropped[:3]))}"] if dropped else [])))
    return checked


def open_url(url: str, cache: PageCache) -> RemoteSource | RemoteDirectory:
    """The object or prefix at `url`: one request to its store (a HEAD, a
    LIST for a prefix, the Hub's API for a repository)."""
    where = location(url)
    try:
        if where.folder:
            path, objects = where.store.folder(url)
            if not objects:
                raise RemoteError(f"{url}: {where.kind.nothing}")
        else:
            obj = where.store.stat(url)
            opened = WholeSource(obj, cache) if SETTINGS.fetch == "whole" else RemoteSource(obj, cache)
            pin(opened.path, object_identity(opened.obj))
            return opened
    except CkptfsError:
        raise
    except Exception as e:  # the network's own, and the storage library's
        raise RemoteError(f"{url}: {type(e).__name__}: {e}") from None
    pin(path, listing_identity(path, objects))  # of the names as listed, as `identity` sees them
    return RemoteDirectory(path, objects, cache)
