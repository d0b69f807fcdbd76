"""`ckpt://`: a checkpoint's tree as an fsspec filesystem, read-only, as
fsspec's `zip://` shows a zip (docs/api.md). Registered as an fsspec
entry point, so that with fsspec installed:

    fsspec.filesystem("ckpt", fo="/data/model.nemo").ls("")
    fsspec.open("ckpt://model_config.yaml::/data/model.nemo").open().read()

Files are read lazily, by byte range, from the same nodes a mount serves.
The source must be a local file or directory (`fo`: a path, or `file://`).
"""

from __future__ import annotations

import os

from fsspec.archive import AbstractArchiveFileSystem
from fsspec.spec import AbstractBufferedFile

from .api import open_checkpoint
from .tree.nodes import Dir, File
from .view import browse


class CheckpointFileSystem(AbstractArchiveFileSystem):
    root_marker = ""
    protocol = "ckpt"
    cachable = True

    def __init__(self, fo: str | os.PathLike = "", target_protocol: str | None = None, target_options=None,
                 cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        path = os.fspath(fo)
        if target_protocol not in (None, "file", "local") or ("://" in path and not path.startswith("file://")):
            raise ValueError(f"ckpt:// reads local checkpoints only, not {path!r} (remote sources: not yet)")
        self.fo = path.removeprefix("file://")
        self._checkpoint = open_checkpoint(self.fo, cache_dir)
        self.dir_cache = None

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path).lstrip("/")

    def _get_dirs(self):
        if self.dir_cache is not None:
            return
        self.dir_cache = {}
        for entry in self._checkpoint.walk():
            kind = "directory" if entry.type == "dir" else entry.type
            self.dir_cache[entry.path] = {"name": entry.path, "size": entry.size, "type": kind}

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise NotImplementedError("ckpt:// is read-only: mount the checkpoint to edit it")
        path = self._strip_protocol(path)
        node = browse.find(self._checkpoint._parsed, path)
        if isinstance(node, Dir) or not isinstance(node, File):
            raise IsADirectoryError(path) if isinstance(node, Dir) else FileNotFoundError(path)
        return _NodeFile(self, path, node, block_size=block_size, cache_options=cache_options)


class _NodeFile(AbstractBufferedFile):
    """A file of the tree, its byte ranges read from the node's content."""

    def __init__(self, fs, path, node: File, **kwargs):
        self.node = node
        super().__init__(fs, path, mode="rb", size=node.content.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        end = min(end, self.node.content.size)
        return self.node.content.read(start, end - start) if end > start else b""
