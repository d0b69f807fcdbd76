"""The formats ckptfs reads and writes, and detection: by magic bytes and
directory contents, never by extension. Adding a format is one module that
ends with its FORMAT (formats/base.py) and one line in a list below."""

from __future__ import annotations

import os

from ..errors import FormatError
from ..sources.base import FileSource
from ..sources.directory import Directory, LocalDirectory
from ..sources.location import location
from ..sources.remote import open_url
from ..sources.settings import page_cache
from ..sources.stores.base import places
from ..tree.checkpoint import Checkpoint
from . import (
    adapter,
    dcp,
    deepspeed,
    diffusers,
    folder,
    gguf,
    gzindex,
    hdf5,
    hf,
    keras,
    megatron_zarr,
    npy,
    npz,
    onnx,
    orbax,
    pt2,
    safetensors,
    sharded_torch,
    tar,
    tf_bundle,
    tf_checkpoint_dir,
    tf_saved_model,
    torchlegacy,
    torchzip,
)
from .base import SNIFF_BYTES, DirectoryFormat, FileFormat, Opening

#: single-file formats, tried in this order on the first SNIFF_BYTES bytes
FILE_FORMATS: tuple[FileFormat, ...] = (
    gzindex.FORMAT,
    tar.FORMAT,
    npy.FORMAT,
    safetensors.FORMAT,
    gguf.FORMAT,
    keras.FORMAT,  # a zip too: before npz and torchzip, told by its first record (metadata.json)
    pt2.FORMAT,  # a zip too: before npz and torchzip, told by its first record's name
    npz.FORMAT,  # a zip too: before torchzip, which takes any zip
    torchzip.FORMAT,
    torchlegacy.FORMAT,
    hdf5.FORMAT,  # Keras legacy .h5 and .weights.h5: HDF5's signature
    tf_bundle.FORMAT,  # no magic: told by its first entry, the empty key of a table (its first byte 0)
    onnx.FORMAT,  # no magic: told by its first fields being a ModelProto's (its first byte 0x08)
)
#: directory formats, tried in this order
DIRECTORY_FORMATS: tuple[DirectoryFormat, ...] = (
    dcp.FORMAT,
    megatron_zarr.FORMAT,  # metadata.json with sharded_backend zarr: no .metadata, no .safetensors
    deepspeed.FORMAT,
    sharded_torch.FORMAT,
    adapter.FORMAT,  # a Hugging Face folder too: before hf, only where adapter_config.json is
    diffusers.FORMAT,  # a folder per component: before hf, which takes a folder of weights
    hf.FORMAT,
    tf_saved_model.FORMAT,  # saved_model.pb beside variables/variables.index
    tf_checkpoint_dir.FORMAT,  # a `checkpoint` file beside PREFIX.index files
    orbax.FORMAT,  # only where _METADATA is Orbax's tree metadata: no other format's folder has it
    folder.FORMAT,
)


def described() -> str:
    """The formats as `ckptfs --help` and the man page list them, in the
    order detection tries them, and where they may come from."""
    shown = [shown_as(fmt) for fmt in (*FILE_FORMATS, *DIRECTORY_FORMATS)]
    return f"{', '.join(shown)}; each from a local path, or from {places()}"


def shown_as(fmt: FileFormat | DirectoryFormat) -> str:
    """A format as `ckptfs --help` and the README's table name it."""
    return fmt.description + ("" if fmt.writes else " (read-only)")


def file_formats(head: bytes) -> list[FileFormat]:
    """Every file format whose sniff takes these first bytes, in the order
    detection tries them (the first is the one a mount opens)."""
    return [fmt for fmt in FILE_FORMATS if fmt.sniff(head)]


_NOT_CHECKPOINTS = {
    b"\x80": "a plain pickle, not a torch.save checkpoint (ckptfs does not run pickles)",
}


def open_checkpoint(path: str, cache_dir: str, base: str | None = None) -> Checkpoint:
    """Read the metadata of the checkpoint at `path` (a file, a directory,
    or a URL: sources/remote.py) into a tree. A PEFT adapter gets its
    `merged/` from `base` (a checkpoint's path or URL), else from the Hugging
    Face cache where its base is there (formats/adapter.py)."""
    ckpt = _open(path, cache_dir)
    adapter.add_merged(ckpt, base, lambda base_path: _open(base_path, cache_dir))
    return ckpt


def _open(path: str, cache_dir: str) -> Checkpoint:
    if location(path).remote:
        return _open_remote(path, cache_dir)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(path, "no such file or directory") from None
    except OSError as e:
        raise FormatError(path, e.strerror or str(e)) from None
    if os.path.isdir(path):
        return _open_directory(LocalDirectory(path))
    if not os.path.isfile(path):
        raise FormatError(path, "not a regular file or directory")
    try:
        source = FileSource(path)
    except OSError as e:
        raise FormatError(path, e.strerror or str(e)) from None
    return _open_file(Opening(source, st, cache_dir, LocalDirectory(os.path.dirname(os.path.abspath(path)))))


def _open_remote(url: str, cache_dir: str) -> Checkpoint:
    """A checkpoint on object storage or a web server."""
    opened = open_url(url, page_cache(cache_dir))
    if isinstance(opened, Directory):
        return _open_directory(opened)
    return _open_file(Opening(opened, opened.stat, cache_dir))  # an object's neighbours are not listed


def _open_directory(directory: Directory) -> Checkpoint:
    for fmt in DIRECTORY_FORMATS:
        if fmt.sniff(directory):
            return _described(fmt.open(directory), fmt)
    path = directory.path
    if dcp.has_shards(directory):
        raise FormatError(path, "distributed checkpoint without its .metadata file: the shards cannot be placed")
    raise FormatError(path, "directory holds no checkpoint (no .safetensors, no .metadata here or in a subfolder)")


def _open_file(opening: Opening) -> Checkpoint:
    path = opening.source.path
    head = opening.source.pread(0, SNIFF_BYTES)
    matching = file_formats(head)
    if matching:
        return _described(matching[0].open(opening), matching[0])
    for magic, what in _NOT_CHECKPOINTS.items():
        if head.startswith(magic):
            raise FormatError(path, what)
    if not head:
        raise FormatError(path, "empty file, not a checkpoint")
    raise FormatError(path, f"not a checkpoint ckptfs knows (starts with {head[:8].hex(' ')})")


def _described(ckpt: Checkpoint, fmt: FileFormat | DirectoryFormat) -> Checkpoint:
    ckpt.description = fmt.description
    return ckpt
