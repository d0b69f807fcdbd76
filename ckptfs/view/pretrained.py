"""`.ckptfs/pretrained/`: a Hugging Face folder's mount as the folder
`from_pretrained` loads (docs/layout.md). The folder's other files (config,
tokenizer, subfolders) are links into the mount, and `model.safetensors`
holds every tensor of the merged tree as it is now: on a writable mount it
is laid out again after each edit, so a model loaded before the unmount
sees the edits. Quantized weights are there as they are stored, beside
the config that says how (`.ckptfs/export/hf/` has them dequantized). The
mount's own root cannot be loaded: there each weights file is a folder.
"""

from __future__ import annotations

import math

from ..tree import names, npy
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Content, Dir, Extent, File, LazyDir, Symlink, len_of
from ..tree.tensors import PlacedTensor, dtype_before
from ..write import export
from ..write.overlay import EditedSource

NAME = "pretrained"


def build(ckpt: Checkpoint, session=None) -> Dir:
    """The folder; its weights follow the edits of a writable mount (its edit `session`)."""

    def fill(folder: Dir) -> None:
        for name in ckpt.pretrained_files or ():
            folder.add(name, Symlink(f"../../{name}"))
        if session is None:
            selection = export.select(ckpt, quantized="raw")  # as stored, as the edited tree's weights are
            folder.add(export.SINGLE, File(export.safetensors_file(selection.items), access=selection.access))
        else:
            folder.add(export.SINGLE, File(CurrentWeights(ckpt, session)))

    return LazyDir(fill, 0, read_only=True)


class CurrentWeights:
    """The tensors of the edited tree as one safetensors file (what
    `ckptfs export` would write of it), laid out again when the tree changed
    since the last read. A tensor file that is not valid NPY at the moment,
    or of a dtype safetensors lacks, is left out until it is."""

    edited = False  # a view: never written through the mount

    def __init__(self, ckpt: Checkpoint, session):
        self.ckpt, self.session, self.editable = ckpt, session, session.editable
        self._generation, self._content = -1, Content([])
        self._at_mount: dict[int, PlacedTensor] | None = None
        self.editable.before_first_change.append(self._tensors_at_mount)

    def _tensors_at_mount(self) -> dict[int, PlacedTensor]:
        """The source's tensors by their file node, taken before the tree first changes."""
        if self._at_mount is None:
            self._at_mount = {}
            for placed in self.ckpt.tensors:
                try:
                    self._at_mount[id(self.editable.node(placed.path))] = placed
                except (FileNotFoundError, NotADirectoryError):
                    pass
        return self._at_mount

    def _current(self) -> Content:
        if self._generation != self.editable.generation:
            self._generation = self.editable.generation
            self._content = export.safetensors_file(self._items())
        return self._content

    def _items(self) -> list[export.Item]:
        at_mount = self._tensors_at_mount()
        items: dict[str, export.Item] = {}
        for path, node in self.session.packed_files().items():
            original = at_mount.get(id(node))
            if not (isinstance(node, File) and path.endswith(".npy")):
                continue
            if original is None and not self.ckpt.writer.adds_tensors:
                continue
            item = _as_mounted(path, node, original) if original is not None else None
            item = item or _item(path, node, original)
            if item is not None and item.name not in items:
                items[item.name] = item
        return [items[name] for name in sorted(items)]

    @property
    def size(self) -> int:
        return self._current().size

    @property
    def slow(self) -> bool:
        return self._current().slow

    def read(self, offset: int, length: int) -> bytes:
        return self._current().read(offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        self._current().prefetch(offset, length)


def _as_mounted(path: str, node: File, original: PlacedTensor) -> export.Item | None:
    """A tensor of the source, unedited where it was at mount: its item from
    what the mount knew (no header read: a tree of 100,000 tensors is laid
    out again after each edit)."""
    tensor = original.tensor
    pieces = node.content.pieces if isinstance(node.content, Content) else None  # None once edited
    if original.path != path or pieces is None or tensor.dtype.safetensors is None:
        return None
    nbytes = tensor.dtype.nbytes(tensor.numel)
    if sum(map(len_of, pieces[1:])) != nbytes:
        return None
    return export.Item(tensor.name, tensor.dtype, tuple(tensor.shape), tuple(pieces[1:]), nbytes)


def _item(path: str, node: File, original: PlacedTensor | None) -> export.Item | None:
    """A tensor file of the tree as an export item, named by its path (by
    the source's name where the file is the source's, where it was)."""
    content = node.content
    try:
        descr, shape, start = npy.parse_header(content.read(0, 65536), path)
    except ValueError:
        return None
    like = original.tensor.dtype if original is not None else dtype_before(node)
    dtype = npy.dtype_of(descr, like)
    if dtype is None or dtype.safetensors is None:
        return None
    nbytes = dtype.nbytes(math.prod(shape))
    if content.size - start != nbytes:
        return None
    if original is not None and original.path == path:
        name = original.tensor.name
    else:
        name = names.tensor_name(path)
    # read through the file as the mount serves it, edited or not
    return export.Item(name, dtype, tuple(shape), (Extent(EditedSource(content), start, nbytes),), nbytes)
