"""Format detection: by magic bytes and directory contents, never by extension."""

from __future__ import annotations

import os

from ..errors import FormatError
from ..sources.base import FileSource
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Dir
from ..tree.rawfiles import raw_file
from . import dcp, folder, gzindex, hf, safetensors, tar, torchlegacy, torchzip

SNIFF_BYTES = 512

_NOT_CHECKPOINTS = {
    b"\x80": "a plain pickle, not a torch.save checkpoint (ckptfs does not run pickles)",
}


def open_checkpoint(path: str, cache_dir: str) -> Checkpoint:
    """Read the metadata of the checkpoint at `path` into a tree."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(path, "no such file or directory") from None
    except OSError as e:
        raise FormatError(path, e.strerror or str(e)) from None
    if os.path.isdir(path):
        if dcp.sniff(path):
            return dcp.open_dir(path)
        if hf.sniff(path):
            return hf.open_dir(path)
        if folder.sniff(path):
            return folder.open_dir(path)
        if dcp.has_shards(path):
            raise FormatError(path, "distributed checkpoint without its .metadata file: the shards cannot be placed")
        raise FormatError(path, "directory holds no checkpoint (no .safetensors, no .metadata here or in a subfolder)")
    if not os.path.isfile(path):
        raise FormatError(path, "not a regular file or directory")
    try:
        source = FileSource(path)
    except OSError as e:
        raise FormatError(path, e.strerror or str(e)) from None
    head = source.pread(0, SNIFF_BYTES)
    if gzindex.sniff(head):
        return gzindex.open_gzip_tar(path, st, cache_dir)
    if tar.sniff(head):
        return tar.open_plain(source, st)
    if safetensors.sniff(head):
        return _open_safetensors(source, st)
    if torchzip.sniff(head):
        ckpt = _open_pickled(torchzip.TorchZip(source, source.path), "torch (zip)", st)
        ckpt.writer = torchzip.Writer(source, source.path)
        return ckpt
    if torchlegacy.sniff(head):
        ckpt = _open_pickled(torchlegacy.TorchLegacy(source, source.path), "torch (legacy, before 1.6)", st)
        ckpt.writer = torchlegacy.Writer(source, source.path)
        return ckpt
    for magic, what in _NOT_CHECKPOINTS.items():
        if head.startswith(magic):
            raise FormatError(path, what)
    if not head:
        raise FormatError(path, "empty file, not a checkpoint")
    raise FormatError(path, f"not a checkpoint ckptfs knows (starts with {head[:8].hex(' ')})")


def _open_safetensors(source: FileSource, st: os.stat_result) -> Checkpoint:
    root, placed, by_name, _ = safetensors.expand(source)
    ckpt = Checkpoint("safetensors", source.path, st, root, _raw_mirror(source), placed)
    ckpt.writer = safetensors.Writer(by_name)
    return ckpt


def _open_pickled(archive: torchzip.PickledCheckpoint, fmt: str, st: os.stat_result) -> Checkpoint:
    root, placed = archive.tree()
    audit = [g.path for g in archive.globals]
    return Checkpoint(fmt, archive.source.path, st, root, _raw_mirror(archive.source), placed, pickle_globals=audit)


def _raw_mirror(source: FileSource) -> Dir:
    """The raw mirror of a single-file checkpoint: the file itself."""
    raw = Dir()
    raw.add(names.file_parts(os.path.basename(source.path))[0], raw_file(source, 0, source.size))
    return raw
