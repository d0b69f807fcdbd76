"""The Python API: a checkpoint as data, without FUSE (docs/api.md).

    >>> import ckptfs
    >>> ckpt = ckptfs.open("model.nemo")
    >>> [t.name for t in ckpt.tensors()][:2]
    >>> ckpt.tensor("encoder.0.weight")          # a numpy array, memory-mapped where it can be
    >>> ckpt.read("model_config.yaml")           # any file of the tree, as a mount serves it
    >>> ckpt.config["d_hidden"]

Nothing from a checkpoint is ever imported or run: pickles are read by
ckptfs's inert interpreter, as for a mount.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import yaml

from .errors import CkptfsError
from .humanize import plural
from .sources.base import FileSource, SliceSource
from .tree import names, npy
from .tree.checkpoint import Checkpoint as _Parsed
from .tree.nodes import File
from .tree.tensors import NpyContent, PlacedTensor, Tensor
from .view import browse

#: where a format keeps its configuration, in the order they are looked for
CONFIG_FILES = ("model_config.yaml", "hyper_parameters.yaml", "config.json", "config.yaml")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the checkpoint: its dotted name, the path of its `.npy`
    in the tree, its dtype's name, shape and stored size."""

    name: str
    path: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Entry:
    """A file, folder or link of the tree (`Checkpoint.walk`)."""

    path: str
    type: str  # "file", "dir" or "link"
    size: int


class Checkpoint:
    """A checkpoint opened by `ckptfs.open`: its metadata is read, its tensor
    bytes only when asked for."""

    def __init__(self, parsed: _Parsed):
        self._parsed = parsed
        self._by_name = _by_unique_name(parsed.tensors)
        #: the quantized weights whose values ckptfs makes, by name
        self._values = {q.name: q for q in parsed.quantized if q.dequantized_path is not None}
        browse.tree(parsed)  # the `.ckptfs/` view, as a mount has it

    @property
    def format(self) -> str:
        return self._parsed.format

    @property
    def path(self) -> str:
        return self._parsed.source_path

    def tensors(self, dequantized: bool = False) -> list[TensorInfo]:
        """The stored tensors; with `dequantized`, each quantized weight (a
        GGUF's Q4_K, a Hub model's GPTQ or FP8 weight...) that ckptfs
        dequantizes as one tensor of its values (its `dequantized.npy`), in
        place of the stored tensors a Hub weight is made of."""
        stored = [TensorInfo(name, p.path, p.tensor.dtype.name, tuple(p.tensor.shape), p.tensor.data.length)
                  for name, p in self._by_name.items()]
        if not dequantized:
            return stored
        replaced = {m for q in self._values.values() for m in q.members}
        return [t for t in stored if t.name not in replaced] + [
            TensorInfo(q.name, q.dequantized_path, q.dtype.name, q.shape, q.dtype.nbytes(math.prod(q.shape)))
            for q in self._values.values()]

    def tensor(self, name: str, dequantized: bool = False) -> np.ndarray:
        """The tensor called `name` (`encoder.0.weight`): a read-only memory
        map where its bytes lie whole in an uncompressed file, else an array
        read from the source. bfloat16 and float8 need ml_dtypes installed.
        With `dequantized`, a quantized weight's values (`tensors`)."""
        if dequantized and name in self._values:
            return np.load(io.BytesIO(self.read(self._values[name].dequantized_path)))
        placed = self._by_name.get(name)
        if placed is None:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        node = browse.find(self._parsed, placed.path)
        if isinstance(node, File) and isinstance(node.content, NpyContent):  # header + the stored bytes as they lie
            mapped = _memory_map(node.content.tensor)
            if mapped is not None:
                return mapped
        return np.load(io.BytesIO(self.read(placed.path)))  # gathered, assembled or decompressed: read

    def read(self, path: str) -> bytes:
        """The bytes of the file at `path` in the tree, as a mount serves them."""
        node = browse.find(self._parsed, path)
        out = io.BytesIO()
        browse.copy(self._parsed, path, node, out)
        return out.getvalue()

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the file at `path` from `offset` (fewer at
        its end), as a mount serves them: a large tensor read piece by piece
        in bounded memory (`ckptfs stats`), where `read` reads it whole.
        A negative offset or length is refused: the pieces a file is made of
        would take it as counting from their ends, outside the file."""
        if offset < 0 or length < 0:
            raise CkptfsError(f"{self.path}: {path}: read_range({offset}, {length}): the offset and the length "
                              "must be 0 or more")
        node = browse.find(self._parsed, path)
        if not isinstance(node, File):
            raise CkptfsError(f"{self.path}: {path}: not a file of the checkpoint")
        return node.content.read(offset, length)

    @property
    def merged(self) -> Checkpoint | None:
        """A PEFT adapter's base with the adapter merged (the mount's
        `merged/`, its tensors computed when read); None where it has none."""
        merged = self._parsed.merged
        return None if merged is None else Checkpoint(merged)

    @property
    def config(self) -> Any:
        """The configuration where the format has one (a `.nemo`'s
        `model_config.yaml`, Lightning's `hyper_parameters.yaml`, a Hugging
        Face `config.json`), parsed; None where there is none."""
        for name in CONFIG_FILES:
            node = self._parsed.root.children.get(name)
            if isinstance(node, File):
                text = self.read(name)
                return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        return None

    def walk(self) -> Iterator[Entry]:
        """Every file, folder and link of the tree, in the mount's order."""
        for path, node in browse.entries(self._parsed.root, ".", recursive=True):
            entry = browse.describe(path, node)
            yield Entry(path, entry["type"], entry.get("size", 0))

    def _repr_html_(self) -> str:
        """What a notebook shows: the top of `ckptfs info --html` (format,
        size, parameters by top-level module and by dtype, the pickles'
        globals), from the metadata alone: no tensor is read."""
        from . import info
        from .report import info_page

        return info_page.fragment(info.summary(self._parsed))

    def __repr__(self) -> str:
        return f"<ckptfs.Checkpoint {self.format} {self.path!r}: {plural(len(self._by_name), 'tensor')}>"


def _by_unique_name(placed: list[PlacedTensor]) -> dict[str, PlacedTensor]:
    """The tensors by name: the key each has in its checkpoint, or where
    two share one (the components of a diffusers pipeline each hold their
    own `text_model...weight`), the name their paths spell
    (`text_encoder_2.text_model...weight`), so that no tensor hides another."""
    counts = Counter(p.tensor.name for p in placed)
    return {p.tensor.name if counts[p.tensor.name] == 1 else names.tensor_name(p.path): p for p in placed}


def open_checkpoint(source: str | os.PathLike, cache_dir: str | None = None,
                    base: str | os.PathLike | None = None) -> Checkpoint:
    from .formats import open_checkpoint as parse
    from .sources.cachedir import default_cache_dir
    from .sources.location import location

    base = base and location(os.fspath(base)).text
    return Checkpoint(parse(location(os.fspath(source)).text, cache_dir or default_cache_dir(), base))


def _memory_map(tensor: Tensor) -> np.ndarray | None:
    """A read-only map of the tensor's bytes in the file that holds them, or
    None where they are not whole in one plain file (compressed, assembled
    from shards) or numpy has no dtype for them."""
    source, offset = tensor.data.source, tensor.data.offset
    while isinstance(source, SliceSource):
        source, offset = source.parent, source.offset + offset
    if not isinstance(source, FileSource) or tensor.dtype.npy_descr is None or tensor.data.length == 0:
        return None
    try:
        dtype = np.dtype(npy.served_layout(tensor.dtype, tensor.shape, tensor.data.length)[0])
    except TypeError:
        return None  # bfloat16 without ml_dtypes: np.load of the .npy says what to install
    if dtype.itemsize * int(np.prod(tensor.shape)) != tensor.data.length:
        raise CkptfsError(f"{source.path}: tensor {tensor.name!r}: {plural(tensor.data.length, 'byte')} "
                          f"for shape {tensor.shape}")
    return np.memmap(source.path, dtype=dtype, mode="r", offset=offset, shape=tuple(tensor.shape))
