"""Tensors as `.npy` files, and where they go in a tree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from . import names, npy, xattrs
from .dtypes import BY_NAME, DType
from .nodes import Access, Content, Dir, Extent, File, Piece, len_of

FLOAT32 = BY_NAME["float32"]


class NpyContent(Content):
    """A `Tensor`'s `.npy` bytes: its NPY header, made again when read
    (headers of one shape are shared by a cache), then its data, in place."""

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

    def reply(self, offset: int, length: int) -> bytes | bytearray:
        if offset >= self.size - self.tensor.data.length:  # past the header: one piece
            return self.read(offset, length)
        return Content.reply(self, offset, length)

    @property  # type: ignore[override]
    def pieces(self) -> list:
        return [self._header(), self.tensor.data]

    @property  # type: ignore[override]
    def starts(self) -> list[int]:
        return [0, self.size - self.tensor.data.length]


class PiecedContent(Content):
    """A `PiecedTensor`'s `.npy` bytes: its NPY header (its own, or made),
    then its pieces."""

    __slots__ = ()

    def __init__(self, tensor: PiecedTensor):
        header = tensor.header
        if header is None:
            nbytes = sum(map(len_of, tensor.pieces))
            header = npy.header(*npy.served_layout(tensor.dtype, tensor.shape, nbytes))
        Content.__init__(self, [header, *tensor.pieces])


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor of a checkpoint, the record its `.npy` file is built from
    (`TensorFile`) and writers read: its key, dtype and shape, and `data`,
    its C-order bytes in one byte range of a source. The file shows them,
    and where that range lies."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    data: Extent

    #: what its file's bytes are, made from the record: the NPY header, then `data`
    content_type: ClassVar[type[Content]] = NpyContent
    #: whether its values are computed from stored tensors rather than stored (`ComputedTensor`)
    computed: ClassVar[bool] = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def attributes(self) -> dict[str, str]:
        path, start = self.data.source.locate(self.data.offset)
        return {xattrs.NAME: self.name, xattrs.DTYPE: self.dtype.name, xattrs.SHAPE: shape_text(self.shape),
                xattrs.SOURCE: path, xattrs.RANGE: f"{start}-{start + self.data.length}"}


@dataclass(frozen=True, slots=True)
class PiecedTensor(Tensor):
    """A tensor whose bytes are read from `pieces` rather than `data` alone:
    a strided view (`gather.Gather`), chunks or shards assembled on read,
    values converted on read, or the bytes after an NPY header of their own
    (`header`, an `.npz` record's). `data` is then where its first bytes
    lie, which the index shows. `facts` are the attributes its format adds
    (where a storage lies, the chunks), shown after name, dtype and shape."""

    pieces: tuple[Piece, ...]
    facts: tuple[tuple[str, str], ...] = ()
    header: bytes | None = None

    content_type: ClassVar[type[Content]] = PiecedContent

    def attributes(self) -> dict[str, str]:
        return {xattrs.NAME: self.name, xattrs.DTYPE: self.dtype.name, xattrs.SHAPE: shape_text(self.shape),
                **dict(self.facts)}


@dataclass(frozen=True, slots=True)
class ComputedTensor(PiecedTensor):
    """Values computed on read from the stored tensor `name` (GGUF blocks
    dequantized): not a tensor of the checkpoint, so its file shows no key
    or dtype of its own, only its `facts` (what it was computed from) and
    its shape."""

    computed: ClassVar[bool] = True

    def attributes(self) -> dict[str, str]:
        return {**dict(self.facts), xattrs.SHAPE: shape_text(self.shape)}


@dataclass(frozen=True, slots=True)
class PlacedTensor:
    """A tensor and the path of its file in the mount."""

    path: str
    tensor: Tensor


@dataclass(frozen=True, slots=True)
class QuantizedTensor:
    """A weight stored quantized, whose values no stored tensor holds as
    they are: a GGUF tensor in blocks of a type no NumPy dtype holds
    (GGML's Q4_0, Q6_K...), or a Hub weight made of several stored tensors
    (GPTQ's qweight, qzeros, scales and g_idx; FP8 and its scales...).
    `kind` names its type or scheme; `shape` is the shape of its values,
    `dequantized_path` the path in the tree of its values as `dtype`, None
    where ckptfs cannot compute them. A GGUF tensor has `raw_path`, the
    path of its blocks (`raw_shape`: uint8, the last dimension counted in
    bytes, as gguf-py's reader gives them); a Hub weight has `members`, the
    names of the stored tensors (among the checkpoint's) it is made of."""

    name: str
    kind: str
    shape: tuple[int, ...]
    raw_path: str | None
    raw_shape: tuple[int, ...] | None
    dequantized_path: str | None
    dtype: DType = FLOAT32
    members: tuple[str, ...] = ()


class TensorFile(File):
    """The `.npy` file of a tensor, built from its record alone, which it
    keeps (`File.tensor`): every format's tensor files are made here. Its
    bytes are the record's `content_type`, its attributes the record's
    `attributes()`, spelled out when first asked for: a header of a million
    tensors need not hold a million dicts. Other fields of a node are set
    on the file made: the call takes the record alone, as Python calls a
    function without defaults fastest, and a mount may make a million."""

    __slots__ = ("tensor", "_xattrs")

    def __init__(self, tensor: Tensor):
        File.__init__(self, tensor.content_type(tensor))
        self.tensor, self._xattrs = tensor, None

    @property  # type: ignore[override]
    def xattrs(self) -> dict[str, str]:
        if self._xattrs is None:
            self._xattrs = self.tensor.attributes()
        return self._xattrs

    @xattrs.setter
    def xattrs(self, value: dict[str, str]) -> None:
        self._xattrs = value


def shown_again(file: File, mtime_ns: int | None) -> File:
    """Another node for `file`, its content, record and attributes (a tree
    that shows it at a second place: a folder of shards merged)."""
    if file.tensor is None:
        return File(file.content, xattrs=dict(file.xattrs), mtime_ns=mtime_ns)
    again = TensorFile(file.tensor)
    again.content, again.mtime_ns = file.content, mtime_ns
    return again


def tensor_key(path: str, file: File) -> str:
    """The key of the tensor a `.npy` file at `path` holds: the one it had
    at mount while it stays where it was (an edit of its bytes keeps it),
    else the one its path spells (a new file, or one a rename moved)."""
    if file.tensor is not None and not file.moved:
        return file.tensor.name
    return names.tensor_name(path)


def dtype_before(file: File) -> DType | None:
    """The dtype a file's tensor had at mount (how a void NPY descr, which
    np.save writes for bfloat16, is read back); None for a new file."""
    return file.tensor.dtype if file.tensor is not None else None


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


def own_access(tree: Dir, placed: list[PlacedTensor], default: Access) -> None:
    """Each tensor readable by whom the files holding its bytes are, where
    that is not `default` (the mounted file's or folder's): a Hugging Face
    shard, an ONNX model's external data or a TensorFlow data shard may be
    more private than what was mounted, and a tensor's file is never more
    readable than its bytes. A piece that reads several files (a zarr
    array's chunks) lists them as its `sources`."""
    for p in placed:
        pieces = [p.tensor.data, *getattr(p.tensor, "pieces", ())]
        sources = [s for piece in pieces for s in ([piece.source] if isinstance(piece, Extent)
                                                   else getattr(piece, "sources", ()))]
        origins = {id(o): o for s in sources if (o := s.origin) is not None}
        if not origins:
            continue
        access = Access.of_all([o.stat for o in origins.values()])
        if access != default:
            parts = p.path.split("/")
            tree.subdir(parts[:-1]).children[parts[-1]].access = access


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
