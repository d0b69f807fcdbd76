"""Where a checkpoint is, parsed once from what the user typed: a local
path, or a URL whose scheme names its store (sources/stores/). What the
commands, the session and the writers ask of a place (is it local, is it
a folder, can a checkpoint be written there, what is it now) they ask
here, never of the text."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .stores.base import Store, scheme_of, store_class, store_for, writable_schemes

#: the fields of a local source's identity, and of a remote one's (an overlay's state.json keeps them)
LOCAL_IDENTITY = {"dev": int, "ino": int, "size": int, "mtime_ns": int}
REMOTE_IDENTITY = {"url": str, "size": int, "version": str}


@dataclass(frozen=True)
class Location:
    """A local path (made absolute) or a URL (kept as typed)."""

    text: str
    #: "s3", "https", "memory", ...; "" for a local path
    scheme: str

    def __str__(self) -> str:
        return self.text

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    @property
    def local(self) -> bool:
        return not self.scheme

    @property
    def kind(self):
        """The class of its store: what it can do, asked without a connection."""
        return store_class(self.scheme)

    @property
    def store(self) -> Store:
        """Its store (made on first use; RemoteError for a scheme no store serves)."""
        return store_for(self.text)

    @property
    def folder(self) -> bool:
        """A folder: a prefix (a URL ending in /), a Hub repository, a local directory."""
        if self.local:
            return os.path.isdir(self.text)
        return self.text.endswith("/") or self.kind.folders_only

    @property
    def uploads(self) -> bool:
        """A new checkpoint can be uploaded here (a store that declares conditional, multipart writes)."""
        return self.remote and self.kind.writes.uploads

    @property
    def replaceable(self) -> bool:
        """Its object can be written over with `--replace`: an object (not a folder) of such a store."""
        return self.uploads and not self.folder

    @property
    def fetched_whole(self) -> bool:
        """`-o fetch=whole` may download it once: a file on a web server."""
        return self.remote and self.kind.downloads_whole and not self.folder

    @property
    def identity_fields(self) -> dict[str, type]:
        return REMOTE_IDENTITY if self.remote else LOCAL_IDENTITY

    def identity(self) -> dict:
        """What tells whether it changed since it was mounted: a file's
        device, inode, size and mtime; a remote object's size and version,
        a prefix's listing hashed (one request)."""
        if self.remote:
            from .pinning import identity

            return identity(self.text)
        st = os.stat(self.text)
        return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def pinned(self) -> dict | None:
        """A remote source's identity as this process opened it, with no
        request; None for a local path, or one not opened."""
        if self.local:
            return None
        from .pinning import pinned_identity

        return pinned_identity(self.text)


def location(text: str) -> Location:
    """`text` parsed: a URL (`scheme://...`) as it is, a path made absolute."""
    scheme = scheme_of(text)
    return Location(text if scheme else os.path.abspath(text), scheme)


def writers() -> str:
    """Where ckptfs writes checkpoints, for messages: `local paths and s3://`."""
    return f"local paths and {writable_schemes()}"
