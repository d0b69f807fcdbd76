"""The metadata view: `.ckptfs/` at the root of every mount (read-only)."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import stat
from collections import defaultdict

import yaml

from ..tree import npy, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Content, Dir, Extent, File, LazyDir
from ..tree.tensors import PlacedTensor, Tensor, shape_text, tensor_key
from ..version import __version__

TSV_COLUMNS = ("path", "name", "dtype", "shape", "parameters", "bytes", "file", "offset")


def build(ckpt: Checkpoint, session=None) -> Dir:
    """The view; for a writable mount (its edit `session`), info.yaml and
    tensors.tsv follow the edits (recomputed after each change) and show
    the files a repack would pack."""
    view = Dir()
    editable = session and session.editable
    if editable is None:
        view.add("info.yaml", File(RenderedText(lambda: info_yaml(ckpt))))
        view.add("tensors.tsv", File(RenderedText(lambda: tensors_tsv(ckpt))))
    else:
        current = CurrentTensors(ckpt, editable, session.packed_files)
        view.add("info.yaml", File(LiveText(editable, lambda: info_yaml(current.checkpoint()))))
        view.add("tensors.tsv", File(LiveText(editable, lambda: tensors_tsv(current.checkpoint()))))
    view.add("raw", ckpt.raw)
    if ckpt.tensors or ckpt.quantized:
        exports = view.add("export", LazyDir(functools.partial(_fill_export, ckpt), 1, read_only=True))
        if editable is not None:  # laid out from the tree as mounted, before an edit replaces a file
            editable.before_first_change.append(lambda: exports.children)
    if ckpt.pickle_globals:
        view.add("pickle-globals.txt", _text_file(pickle_globals_text(ckpt)))
    if ckpt.pretrained_files is not None:
        from . import pretrained

        view.add(pretrained.NAME, pretrained.build(ckpt, session))
    # where the checkpoint is, kept out of the files so that two mounts of
    # the same bytes compare equal under `diff -r`
    view.xattrs[xattrs.SOURCE] = ckpt.source_path
    view.xattrs[xattrs.SOURCE_MTIME] = _mtime(ckpt)
    return view


def _fill_export(ckpt: Checkpoint, folder: Dir) -> None:
    """`export/`: the tensors as one safetensors file, and as a Hugging Face
    folder (shards of 5 GB and their index where it takes more than one,
    and a Hugging Face source's config.json and other files beside them),
    the bytes `ckptfs export --to safetensors` and `--to hf` write."""
    from ..write import export

    selection = export.select(ckpt)
    single = export.safetensors_file(selection.items)
    folder.add(export.SINGLE, File(single, access=selection.access))
    hf = folder.add("hf", Dir(read_only=True))
    for name, content in export.hf_files(selection.items, beside=selection.beside, single=single).items():
        hf.add(name, File(content, access=selection.access))
    if selection.left_out:
        lines = ["# Tensors the export leaves out, and why:", *selection.left_out]
        folder.add("left-out.txt", _text_file("\n".join(lines) + "\n"))
    merged = ckpt.merged
    if merged is not None and not merged.notes:  # a PEFT adapter merged into its base (formats/adapter.py)
        _fill_export(merged, folder.add("merged", Dir(read_only=True)))  # hf/ with the base's config.json


def pickle_globals_text(ckpt: Checkpoint) -> str:
    lines = [
        "# Every global the checkpoint's pickles reference: what torch.load(weights_only=False)",
        "# would import or call. ckptfs imported and called none of them.",
    ]
    return "\n".join(lines + ckpt.pickle_globals) + "\n"


def info_yaml(ckpt: Checkpoint) -> str:
    by_dtype: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    for placed in ckpt.tensors:
        t = placed.tensor
        row = by_dtype[t.dtype.name]
        row["tensors"] += 1
        row["parameters"] += t.numel
        row["bytes"] += t.data.length
    info = {
        "format": ckpt.format,
        "source_bytes": ckpt.source_bytes(),
        "ckptfs_version": __version__,
        "tensors": len(ckpt.tensors),
        "parameters": sum(r["parameters"] for r in by_dtype.values()),
        "tensor_bytes": sum(r["bytes"] for r in by_dtype.values()),
        "by_dtype": dict(sorted(by_dtype.items())),
    }
    if ckpt.notes:
        info["notes"] = list(ckpt.notes)
    return yaml.safe_dump(info, sort_keys=False, allow_unicode=True)


def _mtime(ckpt: Checkpoint) -> str:
    return datetime.datetime.fromtimestamp(ckpt.stat.st_mtime, datetime.timezone.utc).isoformat()


def tensors_tsv(ckpt: Checkpoint) -> str:
    lines = ["\t".join(TSV_COLUMNS)]
    for placed in sorted(ckpt.tensors, key=lambda p: p.path):
        t = placed.tensor
        file, offset = t.data.source.locate(t.data.offset)
        row = (placed.path, t.name, t.dtype.name, shape_text(t.shape), t.numel, t.data.length,
               _in_source(ckpt, file), offset)
        lines.append("\t".join(_tsv_cell(v) for v in row))
    return "\n".join(lines) + "\n"


def _in_source(ckpt: Checkpoint, file: str) -> str:
    """A file of the checkpoint by its path in a source directory, or `.`
    for a single-file source itself: never a name the source merely has,
    so that copies of a checkpoint under other names compare equal."""
    if not os.path.isabs(file):
        return file  # an edited file: "(edited; in the overlay)"
    if stat.S_ISDIR(ckpt.stat.st_mode):
        return os.path.relpath(file, ckpt.source_path)
    return "."


def _tsv_cell(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class RenderedText:
    """Text rendered when first asked for. A `stat` keeps only the size:
    a walk of a mount of 100,000 tensors need not hold their 10 MB listing.
    The bytes are kept from the first read on."""

    slow = False
    edited = False  # a view: never written through the mount

    def __init__(self, render):
        self.render = render
        self._size: int | None = None
        self._data: bytes | None = None

    def _rendered(self) -> bytes:
        return self.render().encode("utf-8", "backslashreplace")  # a lone surrogate of a name shows as \ud800

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = len(self._data if self._data is not None else self._rendered())
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if self._data is None:
            self._data = self._rendered()
            self._size = len(self._data)
        return self._data[offset : offset + length]


class LiveText:
    """File content rendered again after every edit of the tree."""

    slow = False
    edited = False  # a view: never written through the mount

    def __init__(self, editable, render):
        self.editable, self.render = editable, render
        self._generation, self._data = -1, b""

    def _current(self) -> bytes:
        if self._generation != self.editable.generation:
            self._data, self._generation = self.render().encode("utf-8", "backslashreplace"), self.editable.generation
        return self._data

    @property
    def size(self) -> int:
        return len(self._current())

    def read(self, offset: int, length: int) -> bytes:
        return self._current()[offset : offset + length]


class CurrentTensors:
    """The checkpoint's tensors as the edited tree holds them: those of the
    source where untouched, the `.npy` headers of edited ones, and new
    `.npy` files where the format's writer stores them as tensors."""

    def __init__(self, ckpt: Checkpoint, editable, packed_files):
        self.ckpt, self.editable, self.packed_files = ckpt, editable, packed_files
        self._by_node: dict[int, Tensor] | None = None
        editable.before_first_change.append(self._tensor_by_node)

    def _tensor_by_node(self) -> dict[int, Tensor]:
        """The source's tensors by their file node, indexed when first needed
        (at the latest just before the tree first changes)."""
        if self._by_node is None:
            self._by_node = {}
            for placed in self.ckpt.tensors:
                try:
                    self._by_node[id(self.editable.node(placed.path))] = placed.tensor
                except (FileNotFoundError, NotADirectoryError):
                    pass
        return self._by_node

    def checkpoint(self) -> Checkpoint:
        from ..pack.changes import is_edited
        from ..write.overlay import EditedSource

        tensors = []
        by_node = self._tensor_by_node()
        for path, node in sorted(self.packed_files().items()):
            if not isinstance(node, File):
                continue
            original = by_node.get(id(node))
            if original is not None and not is_edited(node):
                tensors.append(PlacedTensor(path, original))
            elif original is not None and not getattr(node.content, "edited", False):  # moved: bytes where they were
                tensors.append(PlacedTensor(path, dataclasses.replace(original, name=tensor_key(path, node))))
            elif path.endswith(".npy") and (original is not None or self.ckpt.writer.adds_tensors):
                tensor = _edited_tensor(path, node, original, EditedSource(node.content))
                if tensor is not None:
                    tensors.append(PlacedTensor(path, tensor))
        return dataclasses.replace(self.ckpt, tensors=tensors)


def _edited_tensor(path: str, node: File, original, source) -> Tensor | None:
    """The tensor an edited `.npy` holds, or None while it is not valid NPY."""
    try:
        descr, shape, start = npy.parse_header(node.content.read(0, 65536), path)
    except ValueError:
        return None
    dtype = npy.dtype_of(descr, original.dtype if original else None)
    if dtype is None:
        return None
    return Tensor(tensor_key(path, node), dtype, tuple(shape), Extent(source, start, max(0, source.size - start)))


def _text_file(text: str) -> File:
    return File(Content([text.encode("utf-8", "backslashreplace")]))  # a lone surrogate of a name shows as \ud800
