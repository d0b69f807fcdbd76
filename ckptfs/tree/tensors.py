"""Tensors as `.npy` files, and where they go in a tree."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import names, npy
from .dtypes import DType
from .nodes import Content, Dir, Extent, File


@dataclass(frozen=True, slots=True)
class Tensor:
    """A C-contiguous tensor stored as one byte range."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    data: Extent

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class PlacedTensor:
    """A tensor and the path of its file in the mount."""

    path: str
    tensor: Tensor


@dataclass(frozen=True, slots=True)
class QuantizedTensor:
    """A tensor stored in blocks of a quantized type no NumPy dtype holds
    (GGML's Q4_0, Q6_K...): the shape of its values, the path in the tree
    of its raw bytes (`raw_shape`: uint8, the last dimension counted in
    bytes, as gguf-py's reader gives them), and of its values as float32,
    None where ckptfs cannot compute them."""

    name: str
    kind: str
    shape: tuple[int, ...]
    raw_path: str
    raw_shape: tuple[int, ...]
    dequantized_path: str | None


class NpyContent(Content):
    """A tensor's `.npy` bytes: its NPY header, made again when read (headers
    of one shape are shared by a cache), then its data, in place."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self.size = len(self._header()) + tensor.data.length

    def _header(self) -> bytes:
        tensor = self.tensor
        return npy.header(*npy.served_layout(tensor.dtype, tensor.shape, tensor.data.length))

    @property
    def slow(self) -> bool:
        return self.tensor.data.source.slow

    def read(self, offset: int, length: int) -> bytes:
        data = self.tensor.data
        start = self.size - data.length  # the header's length
        if offset >= start:  # the common case: tensor bytes only, straight from the source
            return data.read(offset - start, max(0, min(length, self.size - offset)))
        return Content.read(self, offset, length)

    @property  # type: ignore[override]
    def pieces(self) -> list:
        return [self._header(), self.tensor.data]

    @property  # type: ignore[override]
    def starts(self) -> list[int]:
        return [0, self.size - self.tensor.data.length]


class TensorFile(File):
    """A tensor's `.npy` file. Its attributes are spelled out when first
    asked for: a header of a million tensors need not hold a million dicts."""

    __slots__ = ("tensor", "_xattrs")

    def __init__(self, tensor: Tensor):
        File.__init__(self, NpyContent(tensor))
        self.tensor, self._xattrs = tensor, None

    @property  # type: ignore[override]
    def xattrs(self) -> dict[str, str]:
        if self._xattrs is None:
            tensor = self.tensor
            path, start = tensor.data.source.locate(tensor.data.offset)
            self._xattrs = {
                "ckptfs.name": tensor.name,
                "ckptfs.dtype": tensor.dtype.name,
                "ckptfs.shape": shape_text(tensor.shape),
                "ckptfs.source": path,
                "ckptfs.range": f"{start}-{start + tensor.data.length}",
            }
        return self._xattrs

    @xattrs.setter
    def xattrs(self, value: dict[str, str]) -> None:
        self._xattrs = value


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as JSON, `[2, 3]` (what `json.dumps` writes, 20 times faster)."""
    return "[" + ", ".join(map(str, shape)) + "]"


def tensor_tree(tensors: list[Tensor]) -> tuple[Dir, list[PlacedTensor]]:
    """A directory of `.npy` files, one per tensor, names split at dots.

    Parts never contain a dot after the split and tensor files always end in
    `.npy`, so no two flat names can claim the same path (docs/layout.md).
    """
    root = Dir()
    placed = []
    escaped: dict[str, str] = {}  # parts repeat: model, layers, 0, mlp...
    files: dict[str, str] = {}  # and so do last parts: weight -> weight.npy
    #: a name up to its last dot -> (its folder, the folder's path + "/")
    folders: dict[str, tuple[Dir, str]] = {"": (root, "")}
    for tensor in sorted(tensors, key=lambda t: t.name):
        prefix, dot, leaf = tensor.name.rpartition(".")
        found = folders.get(prefix + dot)
        if found is None:
            parts = [escaped.get(p) or escaped.setdefault(p, names.escape(p)) for p in names.split_dotted(prefix)]
            found = folders[prefix + dot] = (root.subdir(parts), "/".join(parts) + "/")
        folder, folder_path = found
        file_name = files.get(leaf) or files.setdefault(leaf, names.escape(leaf, ".npy"))
        folder.add(file_name, TensorFile(tensor))
        placed.append(PlacedTensor(folder_path + file_name, tensor))
    return root, placed


def merge_into(root: Dir, tree: Dir, placed: list[PlacedTensor]) -> list[PlacedTensor]:
    """Move the top-level entries of `tree` into `root`.

    An entry whose name `root` already uses (a plain file of the source) gets
    its first character escaped; the paths in `placed` follow.
    """
    renames = {}
    for name, node in tree.children.items():
        new = name if name not in root.children else names.escape_first(name)
        root.add(new, node)
        renames[name] = new
    moved = []
    for p in placed:
        top, _, rest = p.path.partition("/")
        moved.append(PlacedTensor("/".join(filter(None, [renames[top], rest])), p.tensor))
    return moved
