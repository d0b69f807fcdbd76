"""The identity of each remote object and prefix this process opened, as
it was pinned, and as it is now: what an edit session compares to tell
whether the source changed since it was mounted."""

from __future__ import annotations

import hashlib
import json

from ..errors import CkptfsError
from .location import location
from .stores.base import RemoteError, RemoteObject

#: the identity of each object and prefix this process opened, by URL (`pinned_identity`)
_PINNED: dict[str, dict] = {}


def identity(url: str) -> dict:
    """What an object (or a prefix, a Hub folder) is now: a remote
    source's `source_identity`, to tell whether it changed since it was
    mounted. One request: a HEAD, a LIST or the Hub's API."""
    where = location(url)
    try:
        if where.folder:
            return listing_identity(url, where.store.folder(url)[1] if where.kind.lists else {})
        return object_identity(where.store.stat(url))
    except CkptfsError:
        raise
    except Exception as e:  # the network's own
        raise RemoteError(f"{url}: {type(e).__name__}: {e}") from None


def pinned_identity(url: str) -> dict | None:
    """The identity of `url` as this process opened it (`open_url`), with
    no request: what a mount's tree was read from. None if not opened."""
    return _PINNED.get(url)


def pin(url: str, identity: dict) -> None:
    _PINNED[url] = identity


def object_identity(obj: RemoteObject) -> dict:
    return {"url": obj.url, "size": obj.size, "version": obj.version}


def listing_identity(url: str, objects: dict[str, RemoteObject]) -> dict:
    """A prefix has no version of its own: its objects' names, sizes and
    versions, hashed."""
    listed = sorted((name, o.size, o.version) for name, o in objects.items())
    digest = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    return {"url": url, "size": sum(o.size for o in objects.values()), "version": digest}

