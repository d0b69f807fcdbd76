"""Writes an edited distributed checkpoint: chunks patched in their
records, removed keys dropped and the records after them moved up, edited
non-tensor items stored anew in their records (items.py), new tensors and
items in a new shard (new_shards.py), the metadata pickled again."""

from __future__ import annotations

import errno
import functools
import math
from dataclasses import dataclass

from ...errors import EditRefused, MoveRefused, RepackError
from ...humanize import plural
from ...pack.changes import below, is_edited, same_bytes
from ...pack.output import Blob, ContentBlob
from ...pickle.inert import InertUnpickler
from ...pickle.torch_classes import KNOWN
from ...pickle.torch_classes import storable as torch_storable
from ...sources.base import Source
from ...tree import names, npy
from ...tree.nodes import Dir, Extent, File
from ...tree.tensors import dtype_before, tensor_key
from .. import torchzip
from ..base import DirectoryWriter, Moved, nested_writer
from .metadata import fields_of, is_metadata, metadata_names
from .new_shards import (
    NewShard,
    Templates,
    drop_field,
    free_shard_name,
    new_safetensors_shard,
    new_torch_shard,
    set_field,
)


class Writer(DirectoryWriter):
    """Writes an edited distributed checkpoint as a new directory beside it
    (swapped in by the caller). Consolidated tensors rewritten with the same
    shape and dtype are split back into their chunks, each patched inside its
    shard's torch.save record (CRCs included). An edited non-tensor item's
    record is written anew in its place (the records after it move).
    Removed tensors and items leave the metadata (`.metadata` pickled
    again) and their shards (the records after them move up). New tensors
    and items, and tensors of a new shape or dtype, are stored whole in a
    new shard. Every other file, and every shard without a change, is
    hard-linked from the source."""

    adds_tensors = True  # a new `.npy` is a new tensor

    def __init__(self, path: str, files: dict[str, Source], chunks_of: dict, fqn_of: dict):
        self.path, self.files, self.chunks_of, self.fqn_of = path, files, chunks_of, fqn_of
        self._items = None

    def items(self):
        """The non-tensor items (`items.Items`), read when first asked."""
        if self._items is None:
            from .items import Items  # edits are checked only at close and repack: not imported at mount

            self._items = Items(self.path, self.files)
        return self._items

    def write_dir(self, files: dict, before: dict, out: str) -> None:
        new = {**self.new_files(files, before), **self._other_files(files, before)}
        for name, source in self.files.items():
            if name not in new:
                out.keep(source, name)
        for name, made in new.items():
            if made is not None:
                out.write(name, made.write, like=self.files.get(name))

    def _other_files(self, files: dict, before: dict) -> dict[str, Blob | None]:
        """The directory's files beside the checkpoint (Megatron's
        metadata.json, common.pt) that the edits change or remove."""
        changed: dict[str, Blob | None] = {}
        for name, source in self.files.items():
            leaf = names.file_parts(name)[0]
            node = files.get(leaf)
            if is_metadata(name) or name.endswith(".distcp") or leaf not in before:
                continue
            if node is None:
                changed[name] = None
            elif nested_writer(node) is not None:  # common.pt, shown expanded
                blob = nested_writer(node).blob(*below(leaf, files, before))
                if blob is not None:
                    changed[name] = blob
            elif is_edited(node):
                changed[name] = ContentBlob(node.content)
        return changed

    def new_files(self, files: dict, before: dict) -> dict[str, Blob | None]:
        """What the edits make of the checkpoint's files, by name: a `FileBlob`
        for a changed one, None for one left out; unchanged ones are not
        listed. RepackError naming every edit that cannot be written."""
        patches: dict[str, dict[int, list]] = {}  # shard -> record start -> [(offset, length, reader, 0)]
        problems: list[str] = []
        removed: set[str] = set()
        added: dict[str, tuple] = {}  # fqn -> (content, data start, dtype, shape): new and reshaped tensors
        replaced: dict[str, object] = {}  # fqn -> the new bytes of an edited item's record (a blob)
        new_items: dict[str, object] = {}  # fqn -> the bytes of a new (or renamed) item's record
        beside = {p for p, n in files.items() if nested_writer(n) is not None}  # common.pt, shown expanded
        for path, node in sorted(files.items()):
            if path not in before and not isinstance(node, Dir) and not any(path.startswith(f + "/") for f in beside):
                if path.endswith(".npy"):
                    self._guarded(problems, self._added, path, node, added)
                else:
                    self._guarded(problems, self._new_item, path, node, new_items)
        for path, (node, content) in sorted(before.items()):
            if id(node) not in self.fqn_of:
                continue  # a folder, or a file beside the checkpoint: written as it is (`_other_files`, the tar)
            after = files.get(path)
            if after is None:
                removed.add(self.fqn_of[id(node)])
            elif is_edited(after) and not same_bytes(after.content, content):
                if id(node) not in self.chunks_of:
                    self._guarded(problems, self._edited_item, path, after, self.fqn_of[id(node)], replaced)
                elif not self._patched_in_place(path, node, after.content, patches):
                    removed.add(self.fqn_of[id(node)])  # stored anew, whole
                    self._guarded(problems, self._added, path, after, added)
        problems += self._key_clashes(new_items, removed, added)
        layout = None
        if (removed or added or replaced or new_items) and not problems:
            try:
                layout = _Rewrite(self.files, removed, added, self._stores_torch_records(), replaced, new_items)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise RepackError(f"cannot write {self.path}: " + "; ".join(problems))
        new: dict[str, Blob | None] = {}
        for name, source in self.files.items():
            shard_patches = patches.get(name, {})
            if layout is not None and name in layout.metadata:
                data = layout.metadata[name]
                new[name] = FileBlob(len(data), functools.partial(_write_bytes, data))
            elif layout is not None and name in layout.files:
                size = sum(length for _, length, _ in layout.files[name])
                new[name] = FileBlob(size, functools.partial(layout.write, name, source, shard_patches))
            elif layout is not None and name in layout.emptied:
                new[name] = None
            elif shard_patches:
                new[name] = FileBlob(source.size, functools.partial(_patched, source, shard_patches))
        if layout is not None and layout.added is not None:
            new[layout.new_shard] = FileBlob(layout.added.size, layout.added.write)
        return new

    def _stores_torch_records(self) -> bool:
        """Whether tensor chunks are torch.save records, or else (the
        safetensors serialization format) tensors of a safetensors block."""
        for _, _, chunks in self.chunks_of.values():
            record = chunks[0].piece.record
            return torchzip.sniff(record.data.pread(0, 4))
        return True

    @staticmethod
    def _guarded(problems: list[str], step, *args) -> None:
        try:
            step(*args)
        except ValueError as e:
            problems.append(str(e))

    def _added(self, path: str, node: File, added: dict) -> None:
        """A new tensor file (or one of a new shape or dtype), to be stored whole."""
        if not path.endswith(".npy"):
            raise ValueError(f"{path}: a distributed checkpoint takes new tensors (.npy) only")
        # its key at mount while it stays where it was (a rename drops the name): else the key its path spells
        fqn = tensor_key(path, node)
        dtype, shape, start, _ = npy.edited_layout(node.content, path, dtype_before(node), torch_storable,
                                                   "a distributed checkpoint")
        added[fqn] = (node.content, start, dtype, tuple(shape))

    def _item_was(self, path: str, node: File) -> str | None:
        """The key of the item a file at `path` showed: the item the mount
        shows there (a file written anew in its place, `sed -i`), or the one
        this file was before a rename."""
        was = self.items().at(path)
        if was is None and id(node) in self.fqn_of and id(node) not in self.chunks_of:
            was = self.fqn_of[id(node)]
        return was

    def _new_item(self, path: str, node: File, new_items: dict) -> None:
        """A new file that is not a tensor: a new item, or one renamed."""
        new_items[self.items().key_for(path)] = self.items().stored(path, node.content, self._item_was(path, node))

    def _edited_item(self, path: str, node: File, fqn: str, replaced: dict) -> None:
        replaced[fqn] = self.items().stored(path, node.content, fqn)

    def _key_clashes(self, new_items: dict, removed: set[str], added: dict) -> list[str]:
        """A new item under a key the checkpoint keeps for another value."""
        kept = {fqn for fqn in self.fqn_of.values() if fqn not in removed} | set(added)
        return [f"{fqn}: a new item's key is already in use (by a file of another name)"
                for fqn in sorted(new_items) if fqn in kept]

    def _patched_in_place(self, path: str, node: File, edited, patches: dict) -> bool:
        """Whether an edited tensor of its old shape and dtype could be patched
        into its chunks' records; False for another shape or dtype, or chunks
        that are compressed or not torch.save records."""
        mine: dict = {}
        try:
            self._split(path, node, edited, mine)
        except ValueError:
            return False
        for shard, by_record in mine.items():
            for start, (record, record_patches) in by_record.items():
                patches.setdefault(shard, {}).setdefault(start, (record, {}))[1].update(record_patches)
        return True

    def check_move(self, moved: list[Moved]) -> None:
        """Tensors and items move (a tensor stored whole under its new key,
        an item's record under its new one), each keeping its suffix: what
        the mount showed it as. The files beside the checkpoint keep their
        names (Megatron looks for them by name)."""
        for m in moved:
            if not (m.from_source and isinstance(m.node, File)):
                continue
            if id(m.node) not in self.fqn_of:
                raise MoveRefused(f"{m.path}: a file beside a distributed checkpoint keeps its name", errno.EPERM)
            suffix = "." + m.was.rpartition(".")[2]
            if not m.path.endswith(suffix):
                what = "a tensor" if id(m.node) in self.chunks_of else "an item"
                raise MoveRefused(f"{m.path}: {what} of a distributed checkpoint stays a {suffix} file", errno.EPERM)

    def check(self, path: str, node: File) -> None:
        try:
            if path.endswith(".npy"):
                self._added(path, node, {})
            elif path.endswith((".yaml", ".bin")) and path not in self._beside():
                self.items().stored(path, node.content, self._item_was(path, node))
        except ValueError as e:
            raise EditRefused(str(e)) from None

    def _beside(self) -> set[str]:
        """The names of the files beside the checkpoint (Megatron's
        metadata.json), shown at the top as they are."""
        return {names.file_parts(n)[0] for n in self.files if not is_metadata(n) and not n.endswith(".distcp")}

    def _layout(self, path: str, node: File, edited) -> tuple:
        """(dtype, shape, chunks, data start) of an edited consolidated tensor."""
        if id(node) not in self.chunks_of:
            raise ValueError(f"{path}: only consolidated tensors of a distributed checkpoint can be edited yet")
        dtype, shape, chunks = self.chunks_of[id(node)]
        descr, new_shape, start = npy.parse_header(edited.read(0, 65536), path)
        itemsize = dtype.bits // 8
        served = npy.served_layout(dtype, shape, math.prod(shape) * itemsize)
        if tuple(new_shape) != served[1] or not (descr == served[0] or descr[1:2] == "V"):
            raise ValueError(f"{path}: keeps its shape {list(shape)} and dtype {dtype.name} in this version")
        if edited.size - start != math.prod(shape) * itemsize:
            raise ValueError(f"{path}: {plural(edited.size - start, 'byte')} of data for shape {list(shape)}")
        return dtype, shape, chunks, start

    def _split(self, path: str, node: File, edited, patches: dict) -> None:
        dtype, shape, chunks, start = self._layout(path, node, edited)
        itemsize = dtype.bits // 8
        for chunk in chunks:
            lazy = chunk.piece
            record = lazy.record
            if record.data is not record.raw:
                raise ValueError(f"{path}: its chunks are compressed; rewriting them is not supported yet")
            piece = lazy._resolved()
            if not isinstance(piece, Extent) or piece.source is not record.raw:
                raise ValueError(f"{path}: a chunk that is not a plain torch.save record cannot be rewritten yet")
            box = _Box(edited, start, shape, itemsize, chunk.offsets, chunk.sizes)
            by_record = patches.setdefault(record.label.rpartition("/")[2], {})
            by_record.setdefault(record.start, (record.raw, {}))[1][piece.offset] = (piece.length, box, 0)


def _write_bytes(data: bytes, output) -> None:
    output.write(data)


@dataclass(frozen=True)
class FileBlob:
    """A file of the checkpoint as the edits make it: `write(output)` writes
    its `size` bytes."""

    size: int
    write: object


def _patched(source: Source, patches: dict, output) -> None:
    """A shard copied with some of its records patched."""
    position = 0
    for start, (record, record_patches) in sorted(patches.items()):
        output.copy(source, position, start - position)
        torchzip.Writer(record, record.path).write_patches(record_patches, output)
        position = start + record.size
    output.copy(source, position, source.size - position)


class _Rewrite:
    """The layout of a distributed checkpoint with keys removed, items
    rewritten and tensors added: the metadata pickled again (every rank's,
    for a checkpoint saved with one metadata file per rank); each shard
    that held a removed key written without its records and each edited
    item's record written anew in its place (the later records move, and
    the metadata says where), a shard left empty not written, a shard with
    bytes besides its records (a safetensors-format one) kept as it was
    (an edited item there moves to the new shard); new items and the added
    tensors stored whole in a new shard `__0_<n>.distcp` as DCP stores them
    (items' bytes first, then tensors as torch.save records, or one
    safetensors block), with metadata made like the checkpoint's own."""

    def __init__(self, files: dict[str, Source], removed: set[str], added: dict[str, tuple], torch_records: bool,
                 replaced: dict[str, object] | None = None, new_items: dict[str, object] | None = None):
        from ...pickle import writer as pickle_writer  # written only at repack: not imported at mount

        replaced, new_items = replaced or {}, dict(new_items or {})
        graphs = {name: InertUnpickler(files[name].read_exact(0, files[name].size), known=KNOWN).load()
                  for name in metadata_names(files)}
        fields = {name: fields_of(graph) for name, graph in graphs.items()}
        templates = [Templates(f["state_dict_metadata"], f["storage_data"], f.get("planner_data")) for f in fields.values()]
        records: dict[str, list[tuple]] = {}  # shard -> [(start, length, info, removed, new bytes or None, fqn)]
        for f in fields.values():
            items, storage, planner = f["state_dict_metadata"], f["storage_data"], f.get("planner_data")
            for fqn in removed:
                items.pop(fqn, None)
                if isinstance(planner, dict):
                    planner.pop(fqn, None)
            for index in list(storage):
                where = fields_of(storage[index])
                fqn = fields_of(index)["fqn"]
                gone = fqn in removed
                records.setdefault(str(where["relative_path"]), []).append(
                    (int(where["offset"]), int(where["length"]), storage[index], gone, replaced.get(fqn), fqn))
                if gone:
                    del storage[index]
        self.files: dict[str, list[tuple]] = {}  # rewritten shard -> its records: (start, length, new bytes or None)
        self.emptied: set[str] = set()
        moved: dict[str, list] = {}  # fqn -> the storage infos of an edited item whose shard stays as it was
        for name, in_shard in records.items():
            if not any(gone or blob is not None for _, _, _, gone, blob, _ in in_shard):
                continue
            in_shard.sort(key=lambda r: r[0])
            ends = [0] + [start + length for start, length, *_ in in_shard]
            if [r[0] for r in in_shard] != ends[:-1] or name not in files or ends[-1] != files[name].size:
                # bytes besides the records: the shard stays as it is, its removed records unread
                for _, _, info, gone, blob, fqn in in_shard:
                    if blob is not None and not gone:
                        moved.setdefault(fqn, []).append(info)
                continue
            kept = [(start, length, info, blob) for start, length, info, gone, blob, _ in in_shard if not gone]
            if not kept:
                self.emptied.add(name)
                continue
            position, layout = 0, []
            for start, length, info, blob in kept:
                set_field(info, "offset", position)
                if blob is not None:
                    length = blob.size
                    set_field(info, "length", length)
                    drop_field(info, "transform_descriptors")  # stored plain
                layout.append((start, length, blob))
                position += length
            self.files[name] = layout
        new_items.update({fqn: replaced[fqn] for fqn in moved})
        self.new_shard = free_shard_name([*files, *records])  # nor one the metadata names that is missing
        self.added: NewShard | None = None
        if added or new_items:
            pattern = next((t for t in templates if t.index is not None and (
                t.tensor is not None or (not added and t.bytes is not None))), None)
            if pattern is None:
                raise ValueError(f"{', '.join(sorted([*added, *new_items]))}: no {'tensor' if added else 'item'} in "
                                 "the checkpoint to make new ones' metadata like")
            ordered = sorted(added.items())
            ordered_items = sorted(new_items.items())
            tensors = (new_torch_shard if torch_records else new_safetensors_shard)(ordered) if ordered else None
            self.added = NewShard.joined([blob for _, blob in ordered_items], tensors)
            item_places, tensor_places = self.added.places[: len(ordered_items)], self.added.places[len(ordered_items) :]
            for (fqn, _), (offset, length) in zip(ordered_items, item_places):
                if fqn in moved:
                    for info in moved[fqn]:  # every rank's copy points to the one record
                        for field, value in (("relative_path", self.new_shard), ("offset", offset), ("length", length)):
                            set_field(info, field, value)
                        drop_field(info, "transform_descriptors")
                    continue
                for own in templates:  # every rank's metadata lists it: each rank reads its own
                    own.add_item(fqn, self.new_shard, offset, length, pattern)
            for (fqn, (_, _, dtype, shape)), (offset, length) in zip(ordered, tensor_places):
                for own in templates:
                    own.add(fqn, dtype, shape, self.new_shard, offset, length, pattern)
        self.metadata = {name: pickle_writer.dumps(graph) for name, graph in graphs.items()}

    def write(self, name: str, source: Source, patches: dict, output) -> None:
        """Shard `name` without its removed records, and with its edited
        items' new bytes; `patches` by record start."""
        for start, length, blob in self.files[name]:
            if blob is not None:
                blob.write(output)
            elif start in patches:
                record, record_patches = patches[start]
                torchzip.Writer(record, record.path).write_patches(record_patches, output)
            else:
                output.copy(source, start, length)


class _Box:
    """The C-order bytes of one chunk (a box of the tensor), read from the
    edited full tensor one run along the last dimension at a time."""

    def __init__(self, content, data_start: int, shape, itemsize: int, offsets, sizes):
        self.content, self.data_start, self.itemsize = content, data_start, itemsize
        self.shape, self.offsets, self.sizes = tuple(shape), tuple(offsets), tuple(sizes)

    def read(self, offset: int, length: int) -> bytes:
        if not self.shape:
            return self.content.read(self.data_start + offset, length)
        row = self.sizes[-1] * self.itemsize  # bytes of one run of the chunk
        parts, position, end = [], offset, offset + length
        while position < end:
            run, within = divmod(position, row)
            index = []
            for size in reversed(self.sizes[:-1]):
                run, i = divmod(run, size)
                index.append(i)
            element = 0
            for axis, i in enumerate(reversed(index)):
                element = element * self.shape[axis] + self.offsets[axis] + i
            element = element * self.shape[-1] + self.offsets[-1]
            take = min(row - within, end - position)
            parts.append(self.content.read(self.data_start + element * self.itemsize + within, take))
            position += take
        return b"".join(parts)
