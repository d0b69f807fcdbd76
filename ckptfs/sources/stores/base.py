"""What a store is (a place objects are read from by URL: S3, a web
server, the Hub, any fsspec filesystem), and the scheme registry that
finds the store of a URL.

A store answers four questions, each one request: what an object is now
(`stat`: its size and version), what a prefix holds (`folder`: every
object below it by relative name, or a refusal where the store lists no
folders), the bytes [start, end) of a pinned version (`get`, which fails
with SourceChangedError, never with bytes of another version), and, as a
declared capability (`writes`), whether it takes a new object under a
condition it checks as the object appears (S3's `If-None-Match` and
`If-Match`) and in parts (a multipart upload). A store that declares no
writes is only read.

A scheme with a store of ours (stores/__init__.py's STORES) gets it; any
other scheme fsspec knows gets the generic store (stores/generic.py),
read-only; any other is refused in one line naming what is installed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

from ...errors import CkptfsError, SourceChangedError
from ...humanize import plural

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
#: the most objects a prefix's listing is read for (a server may say "truncated" for ever), in pages of LIST_PAGE
MAX_LISTED, LIST_PAGE = 10_000_000, 1000


class RemoteError(CkptfsError):
    """A remote source cannot be reached or read."""


class PreconditionFailed(RemoteError):
    """A conditional write found the key other than expected: taken, or
    holding another version than the one mounted."""


@dataclass(frozen=True)
class RemoteObject:
    """One object as it was when pinned: where, how big, which version."""

    url: str
    size: int
    version: str  # the ETag (quotes kept), a generic store's version; "" where there is none
    mtime: float

    @property
    def key(self) -> str:
        """The cache's name for this version of the object."""
        return f"{self.url}\0{self.version}"

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of this version: one range request."""
        try:
            return store_for(self.url).get(self, start, end)
        except CkptfsError:
            raise
        except Exception as e:  # the network's own (timeouts, resets, refused connections)
            raise RemoteError(f"{self.url}: bytes {start}-{end - 1}: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class Writes:
    """What a store can write. `conditional`: a new object lands only if
    the key is new, or only over the version that was mounted, checked by
    the store as it appears. `multipart`: in parts, invisible until they
    complete. ckptfs writes (`--output`, `--replace`, `export`) only where
    both hold: a checkpoint is never half there, nor over another's."""

    conditional: bool = False
    multipart: bool = False

    @property
    def uploads(self) -> bool:
        return self.conditional and self.multipart


class Store(Protocol):
    """A store of objects named by URL. Class attributes say what it can
    do, so that a question about a URL never needs a connection; a store
    subclasses this and sets those that differ from these defaults."""

    #: how messages name it ("a web server", "the Hub")
    kind: ClassVar[str] = "a store"
    writes: ClassVar[Writes] = Writes()
    #: True where a URL ending in / lists as a folder
    lists: ClassVar[bool] = True
    #: True where every URL is a folder (a Hub repository)
    folders_only: ClassVar[bool] = False
    #: True where `-o fetch=whole` may download a file once (a web server that ignores ranges)
    downloads_whole: ClassVar[bool] = False
    #: what `folder` finding nothing is called
    nothing: ClassVar[str] = "no objects under this prefix"

    def stat(self, url: str) -> RemoteObject:
        """The object at `url` as it is now (one request)."""

    def folder(self, url: str) -> tuple[str, dict[str, RemoteObject]]:
        """The prefix `url` under the name it is pinned as, and every
        object below it by relative name (one listing)."""

    def get(self, obj: RemoteObject, start: int, end: int) -> bytes:
        """Bytes [start, end) of the pinned version `obj`."""


def changed(url: str, what: str, version: str) -> SourceChangedError:
    """The one line a read of an object replaced since it was pinned fails with."""
    return SourceChangedError(f"{url}: the object changed since it was mounted (its {what} is no longer "
                              f"{version}); remount to read the new one")


def etag_changed(obj: RemoteObject, etag: str) -> SourceChangedError:
    """The one line for a reply of another version than the one pinned."""
    return SourceChangedError(f"{obj.url}: the object changed since it was mounted (ETag {etag}, mounted "
                              f"{obj.version}); remount to read the new one")


def check_reply(obj: RemoteObject, start: int, end: int, content_range: str, etag: str, data: bytes) -> None:
    """An HTTP-style reply holds bytes [start, end) of the pinned version, or it is refused."""
    if obj.version and etag and etag != obj.version:
        raise etag_changed(obj, etag)
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if not match or (int(match[1]), int(match[2]) + 1, int(match[3])) != (start, end, obj.size):
        raise SourceChangedError(f"{obj.url}: asked for bytes {start}-{end - 1} of {obj.size}, the reply holds "
                                 f"{content_range or 'no Content-Range'}")
    check_length(obj, start, end, data)


def check_length(obj: RemoteObject, start: int, end: int, data: bytes) -> None:
    if len(data) != end - start:
        raise SourceChangedError(f"{obj.url}: bytes {start}-{end - 1}: the reply holds {plural(len(data), 'byte')}")


def missing(what: str) -> RemoteError:
    return RemoteError(f"{what} needs the remote extra: pip install -e '.[remote]' in a clone of ckptfs")


# ---------------------------------------------------------------- the registry

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: scheme -> the class of its store (filled by stores/__init__.py, and `register`)
_REGISTERED: dict[str, Callable[[], Store]] = {}
#: one store per class (http and https share one) and process: their sessions and connection pools are shared
_STORES: dict[object, Store] = {}


def register(scheme: str, store: Callable[[], Store]) -> None:
    """Serve `scheme://` URLs with `store` (a class of the Store protocol
    made with no arguments): the one line a new store needs."""
    _REGISTERED[scheme] = store


def scheme_of(text: str) -> str:
    """`s3` of `s3://bucket/key`; "" for a local path."""
    match = _SCHEME.match(text)
    return match[1].lower() if match else ""


def store_class(scheme: str):
    """The class of the store of `scheme` (ours, or the generic fsspec one),
    without making one: what a URL's store can do."""
    if scheme in _REGISTERED:
        return _REGISTERED[scheme]
    from .generic import FsspecStore

    return FsspecStore


def store_for(url: str) -> Store:
    """The store of `url`, made once per process; RemoteError for a scheme
    neither ckptfs nor an installed fsspec filesystem serves."""
    scheme = scheme_of(url)
    factory = _REGISTERED.get(scheme)
    key = factory or scheme
    if key not in _STORES:
        if factory is None:
            from .generic import FsspecStore

            _STORES[key] = FsspecStore.of(scheme, url)
        else:
            _STORES[key] = factory()
    return _STORES[key]


def native_schemes() -> list[str]:
    """The schemes with a store of ours, as `ckptfs --help` lists them."""
    return [f"{scheme}://" for scheme in _REGISTERED]


def places() -> str:
    """Where checkpoints are read from besides local paths, as `ckptfs --help` says it."""
    return (f"a URL ({', '.join(native_schemes())}) with the remote extra installed, or read-only from a URL of "
            "any other protocol an installed fsspec knows (memory://, file://, gs://, az://, ssh://, ...)")


def writable_schemes() -> str:
    """The schemes ckptfs writes checkpoints to (`s3://`), for messages."""
    return " and ".join(f"{s}://" for s, store in _REGISTERED.items() if store.writes.uploads) or "none"


def _after_fork() -> None:
    """The mount daemon forks after parsing: its stores (sessions bound to
    the parent's event loop) are made anew."""
    _STORES.clear()


os.register_at_fork(after_in_child=_after_fork)
