"""TensorFlow tensor bundles: `PREFIX.index` and its data shards
`PREFIX.data-NNNNN-of-MMMMM`, as `tf.train.Checkpoint`,
`tf.compat.v1.train.Saver` (V2) and a SavedModel's `variables/` write them.

The index is an SSTable (tf_table) whose first entry, under the empty key,
is the bundle's header, and every other one a tensor's BundleEntryProto
(tf_entries). Each tensor of a plain type is its `.npy`, served zero-copy
from its shard and checked against its CRC-32C as it is read through
(tf_checked). Keys are paths: `model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE`
is `model/dense/kernel.npy` (the suffix every variable's value has is
dropped; the file's `user.ckptfs.name` keeps the whole key), other parts as
they are, a leading dot escaped (`%2EOPTIMIZER_SLOT`). Small DT_STRING
tensors are `NAME.yaml`; the object graph `object_graph.yaml`; a tensor of
a type no `.npy` holds (resources, variants, quantized) is left out with a
note, as is any entry whose record does not check out.

Read-only: ckptfs does not write bundles.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..errors import FormatError
from ..humanize import plural
from ..pickle.pyobjects import yaml_file
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import DType
from ..tree.nodes import Access, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_file
from ..tree.tensors import PlacedTensor, Tensor, TensorFile, own_access
from . import crc32c, tf_entries, tf_slices
from .base import FileFormat, Opening
from .dcp.assemble import Chunk, assembled_tensor, covers_exactly
from .nested import Grafts, show_directory
from .protowire import decode_varint
from .tf_checked import Run, checked
from .tf_entries import DT_STRING, DTYPES, Entry
from .tf_objects import KEY as OBJECT_GRAPH_KEY
from .tf_objects import object_graph
from .tf_table import Table

SUFFIX = ".index"
#: what every variable's key ends with (`tf.train.Checkpoint`), dropped from its path
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_FILE = "object_graph.yaml"
#: the largest DT_STRING tensor shown as YAML
STRING_BYTES = 16 << 20
FORMAT_NAME = "tensorflow bundle"


def shard_name(prefix: str, shard: int, shards: int) -> str:
    """A data shard's file name (tensor_bundle/naming.cc `DataFilename`)."""
    return f"{prefix}.data-{shard:05d}-of-{shards:05d}"


def sniff(head: bytes) -> bool:
    """The table's first entry: the empty key (no shared, no unshared
    bytes), its value a BundleHeaderProto that starts with num_shards."""
    if not head.startswith(b"\0\0") or len(head) < 5:
        return False
    try:
        length, used = decode_varint(head, 2, "", 2)
    except FormatError:
        return False
    return 2 <= length <= 64 and len(head) > 2 + used and head[2 + used] == 0x08


@dataclass
class Bundle:
    """What a bundle shows: its tree, its tensors, notes, and its files in
    the folder (the index and every data shard found), by name."""

    root: Dir = field(default_factory=Dir)
    tensors: list[PlacedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Source] = field(default_factory=dict)


def read(folder: Directory | None, prefix: str, index: Source) -> Bundle:
    """The bundle whose index is `index` (`prefix.index` in `folder`, where
    its data shards are looked for; None where nothing can be listed)."""
    return _Reader(folder, prefix, index).read()


class _Reader:
    def __init__(self, folder: Directory | None, prefix: str, index: Source):
        self.folder, self.prefix, self.index, self.name = folder, prefix, index, index.path
        self.bundle = Bundle(files={prefix + SUFFIX: index})
        self.shards: dict[int, Source | str] = {}  # shard number -> its file, or why it cannot be read
        self.slices: dict[bytes, bytes] = {}  # the entries of slices not yet claimed, by key
        self.runs: list[Run] = []  # the checks of the tensor being read, for its file

    def read(self) -> Bundle:
        items = Table(self.index, self.name).items()
        first = next(items, None)
        if first is None or first[0] != b"":
            raise FormatError(self.name, "a table whose first key is not the empty one: not a tensor bundle index")
        self.header = tf_entries.header(first[1], self.name)
        if self.header.big_endian:
            raise FormatError(self.name, "a bundle written big-endian: ckptfs reads little-endian ones")
        for key, value in items:
            self._entry(key, value)
        if self.slices:
            self.bundle.notes.append(f"{plural(len(self.slices), 'slice entry', 'slice entries')} of no partitioned "
                                     "tensor left out")
        return self.bundle

    def _entry(self, raw_key: bytes, value: bytes) -> None:
        if raw_key.startswith(b"\0"):  # a slice of a partitioned tensor, whose entry comes after it
            self.slices[raw_key] = value
            return
        key = raw_key.decode("utf-8", "backslashreplace")
        label = f"{self.name}: {key}"
        self.runs = []
        try:
            item = tf_entries.entry(value, label)
            if item.slices:
                self._place(key, ".npy", self._file(self._partitioned(raw_key, key, item, value, label)))
            elif item.dtype in DTYPES:
                dtype = DTYPES[item.dtype]
                self._place(key, ".npy", self._file(Tensor(key, dtype, item.shape, self._extent(item, dtype, label))))
            elif item.dtype == DT_STRING:
                self._strings(key, item, label)
            else:
                self.bundle.notes.append(f"{key}: a {item.type_name} tensor, left out: no .npy holds its values")
        except FormatError as e:
            self.bundle.notes.append(f"{key} is left out: {e.problem}")

    def _file(self, tensor: Tensor) -> TensorFile:
        """A tensor's file, whose attributes the checks of its bytes report to."""
        file = TensorFile(tensor)
        for run in self.runs:
            run.shown_by = file.xattrs
        self.runs = []
        return file

    def _extent(self, item: Entry, dtype: DType, label: str) -> Extent:
        """Where an entry's bytes lie, checked: their size against dtype and
        shape, their place inside their shard; read through their CRC."""
        expected = dtype.nbytes(math.prod(item.shape))
        if item.size != expected:
            raise FormatError(label, f"its entry gives {plural(item.size, 'byte')}, a {dtype.name} tensor of shape "
                                     f"{list(item.shape)} takes {expected}")
        source = checked(self._shard(item, label), item.offset, item.size, crc32c.unmask(item.crc), label)
        self.runs.append(source.run)
        return Extent(source, 0, item.size)

    def _partitioned(self, raw_key: bytes, key: str, item: Entry, value: bytes, label: str) -> Tensor:
        """A partitioned tensor, whole: its slices assembled on read."""
        dtype = DTYPES.get(item.dtype)
        if dtype is None:
            raise FormatError(label, f"a partitioned {item.type_name} tensor: no .npy holds its values")
        chunks = []
        for start, end in item.slices:
            spans = tf_slices.extents(value, len(item.shape), start, end, label)
            offsets = tuple(first for first, _ in spans)
            sizes = tuple(n if length == tf_slices.FULL else length for (_, length), n in zip(spans, item.shape))
            if min(offsets + sizes, default=0) < 0:
                raise FormatError(label, f"a slice at {list(offsets)} of size {list(sizes)}")
            own = self.slices.pop(tf_slices.slice_key(raw_key, spans), None)
            if own is None:
                raise FormatError(label, f"its slice at {list(offsets)} has no entry")
            part = tf_entries.entry(own, f"{label} (its slice at {list(offsets)})")
            if part.dtype != item.dtype or part.shape != sizes:
                raise FormatError(label, f"its slice at {list(offsets)} is a {part.type_name} tensor of shape "
                                         f"{list(part.shape)}, not {dtype.name} of {list(sizes)}")
            chunks.append(Chunk(offsets, sizes, self._extent(part, dtype, label)))
        problem = covers_exactly(item.shape, chunks)
        if problem is not None:
            raise FormatError(label, f"its slices do not make the tensor: {problem}")
        return assembled_tensor(key, dtype, item.shape, chunks, chunks[0].piece)

    def _shard(self, item: Entry, label: str) -> Source:
        """The data shard holding the entry's bytes, which must lie inside it."""
        found = self.shards.get(item.shard)
        if found is None:
            found = self.shards[item.shard] = self._open_shard(item.shard)
        if isinstance(found, str):
            raise FormatError(label, found)
        if item.offset + item.size > found.size:
            raise FormatError(label, f"its bytes {item.offset}..{item.offset + item.size} lie past the end of "
                                     f"{os.path.basename(found.path)} ({plural(found.size, 'byte')})")
        return found

    def _open_shard(self, number: int) -> Source | str:
        shards = self.header.shards
        if number >= shards:
            return f"its shard {number} is past the bundle's {plural(shards, 'data shard')}"
        name = shard_name(self.prefix, number, shards)
        if self.folder is None:
            return f"its data shard {name} cannot be found: the folder of the index cannot be listed"
        if not self.folder.is_file(name):
            return f"its data shard {name} is missing (or a link that leads outside the folder)"
        source = self.bundle.files[name] = self.folder.open(name)
        return source

    def _strings(self, key: str, item: Entry, label: str) -> None:
        """A DT_STRING tensor, read whole: the object graph as its YAML, another one as its values."""
        if item.size > STRING_BYTES:
            raise FormatError(label, f"a string tensor of {plural(item.size, 'byte')}, more than the "
                                     f"{plural(STRING_BYTES, 'byte')} shown as YAML")
        shard = self._shard(item, label)
        values = tf_entries.strings(shard.read_exact(item.offset, item.size), item, label)
        if key.encode() == OBJECT_GRAPH_KEY and len(values) == 1:
            self._add([OBJECT_GRAPH_FILE], yaml_file(object_graph(values[0], label)), key)
            return
        shown = [_text(v) for v in values]
        self._place(key, ".yaml", yaml_file({"dtype": "string", "shape": list(item.shape),
                                              "values": shown[0] if not item.shape else shown}))

    def _place(self, key: str, suffix: str, node: File) -> None:
        self._add(tree_path(key, suffix), node, key)

    def _add(self, parts: list[str], node: File, key: str) -> None:
        try:
            self.bundle.root.subdir(parts[:-1]).add(parts[-1], node)
        except PathConflict:
            self.bundle.notes.append(f"{key} is left out: another entry takes its place, {'/'.join(parts)}")
            return
        if isinstance(node, TensorFile):
            self.bundle.tensors.append(PlacedTensor("/".join(parts), node.tensor))


def tree_path(key: str, suffix: str) -> list[str]:
    """Where a key's file goes: its parts at its slashes, a variable's
    `/.ATTRIBUTES/VARIABLE_VALUE` dropped."""
    if key.endswith(VALUE_SUFFIX) and len(key) > len(VALUE_SUFFIX):
        key = key[: -len(VALUE_SUFFIX)]
    parts = key.split("/")
    return [names.escape(p) for p in parts[:-1]] + [names.escape(parts[-1], suffix)]


def _text(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def raw_files(bundle: Bundle, raw: Dir, where: list[str]) -> None:
    """The bundle's files, as they are, into `raw` at `where`."""
    for name, source in bundle.files.items():
        raw.subdir(where).add(names.file_parts(name)[0], raw_file(source, 0, source.size))


def open_file(opening: Opening) -> Checkpoint:
    source = opening.source
    base = os.path.basename(source.path)
    if not base.endswith(SUFFIX) or base == SUFFIX:
        raise FormatError(source.path, f"a tensor bundle's index must be named PREFIX{SUFFIX}: its data shards are "
                                       "found by that prefix")
    bundle = read(opening.neighbours, base[: -len(SUFFIX)], source)
    own_access(bundle.root, bundle.tensors, Access.of(opening.stat))
    raw = Dir()
    raw_files(bundle, raw, [])
    return Checkpoint(FORMAT_NAME, source.path, opening.stat, bundle.root, raw, bundle.tensors, bundle.notes)


FORMAT = FileFormat(FORMAT_NAME, sniff, open_file, "TensorFlow tensor bundles (PREFIX.index + its .data shards)",
                    None)


def folder_checkpoint(name: str, directory: Directory, bundles: list[tuple[str, str, list[str]]]) -> Checkpoint:
    """A folder holding bundles, each `(its folder in directory, its
    prefix, the path parts of the folder it is shown as)`: every file of
    the folder as it is but for the bundles' files, each bundle's tree in
    their place (`.ckptfs/raw/` keeps them all). A bundle that cannot be
    read stays its files, with a note."""
    grafts = Grafts()
    shown = show_directory(directory, grafts)
    notes = []
    for folder, prefix, parts in bundles:
        try:
            inside = directory.sub(folder) if folder else directory
            bundle = read(inside, prefix, inside.open(prefix + SUFFIX))
        except FormatError as e:
            notes.append(f"{'/'.join(parts)} is shown as its files: {e.problem}")
            continue
        own_access(bundle.root, bundle.tensors, Access.of(directory.stat()))
        holder = shown.root.subdir(names.file_parts(folder)) if folder else shown.root
        for file in bundle.files:
            holder.children.pop(names.file_parts(file)[0], None)
        parent = shown.root.subdir(parts[:-1])
        there = parent.children.get(parts[-1])
        if there is not None and not (isinstance(there, Dir) and not there.children):
            notes.append(f"{'/'.join(parts)} holds other files: the bundle {prefix} is shown as its files in "
                         ".ckptfs/raw/")
            continue
        parent.children.pop(parts[-1], None)
        grafts.graft(parent, parts[-1], "/".join(parts), bundle.root, bundle.tensors, bundle.notes)
    return Checkpoint(name, directory.path, directory.stat(), shown.root, shown.raw, grafts.placed,
                      [*notes, *grafts.notes], grafts.pickle_globals)
