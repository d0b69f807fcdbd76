"""A torch.save checkpoint written anew for edits that change its objects:
tensors added, removed or reshaped, YAML views changed.

The pickle is read again, the edits are made on its objects
(`pickled_edits`), and it is pickled from them (`pickle_writer`).
Storages no tensor uses any more are left out, new tensors get new
storages after the old ones, unchanged storages are copied by byte range.
A zip keeps every other record in its place with its bytes; a legacy file
keeps its header pickles.
"""

from __future__ import annotations

import errno
import hashlib

from ..errors import EditRefused, MoveRefused, RepackError
from ..pack.changes import changes
from ..pickle import object_edits
from ..pickle import tree_edits as pickled_edits
from ..pickle import writer as pickle_writer
from ..pickle.inert import Call, PickledDict, Rebuilt
from ..pickle.object_edits import EditError
from ..pickle.objtree import ObjectTree
from ..pickle.torch_classes import (
    StorageRef,
    TensorRef,
    legacy_storable,
    new_tensor,
    storable,
)
from ..tree import npy
from ..tree.nodes import Dir
from ..tree.tensors import dtype_before
from .base import FileWriter
from .zipout import Record, ZipBlob


def _object_tree(archive) -> ObjectTree:
    """The tree of `archive`, knowing where each path's value lives."""
    tree = ObjectTree(archive.tensor, record=True)
    tree.build(archive.obj)
    return tree


def check_move(archive_of, moved: list) -> None:
    """MoveRefused (EPERM) for a rename a pickled checkpoint cannot hold:
    a file made anything but a tensor (.npy) or a value (.yaml), and a
    folder that stands for a dict or list of the pickle (a new path spells
    a dotted key in the nearest container, so the container would not move:
    its tensors would become keys like `enc2.w` of the one above). Folders
    a dotted key was split into move, and so do the files in a container."""
    FileWriter.check_moved_files(moved, lambda p: p.endswith((".npy", ".yaml")),
                                 "a file of a pickled checkpoint is a tensor (.npy) or a value (.yaml)")
    folders = [m for m in moved if isinstance(m.node, Dir) and m.from_source]
    if folders:
        slots = _object_tree(archive_of()).slots
        for m in folders:
            if m.was in slots:
                raise MoveRefused(f"{m.path}: this folder is a dict or list of the pickled checkpoint; it cannot be "
                                  "renamed in this version (mv the files in it into a new folder instead)",
                                  errno.EPERM)


def check(archive_of, path: str, node, storable, target: str) -> None:
    """EditRefused if an edited file of a pickled checkpoint cannot be
    written back (on close): a tensor file that is not NPY of a dtype
    `target` holds and of its shape's size; a YAML view that is not YAML, or
    whose values would change type (checked against the objects
    `archive_of()` reads afresh)."""
    try:
        if path.endswith(".npy"):
            npy.edited_layout(node.content, path, dtype_before(node), storable, target)
        elif path.endswith(".yaml"):
            view = object_edits.parse(node.content.read(0, node.content.size), path)
            tree = _object_tree(archive_of())
            if path in tree.slots:
                container, key = tree.slots[path]
                object_edits.merge(container[key], view, path)
            else:
                object_edits.new_value(view, path)
    except ValueError as e:
        raise EditRefused(str(e)) from None


def edit_objects(archive, files: dict, before: dict, changed: list[str], storable, target: str) -> tuple[object, dict]:
    """The edited object graph of `archive` (a `PickledCheckpoint`), and the
    new storages {key: (content, data start, length, count)}; RepackError naming
    every edit that cannot be made. `changed` lists the paths that differ;
    `storable(dtype)` says which dtypes the `target` format holds."""
    tree = _object_tree(archive)
    used = [int(key) for key in archive.storage_keys() if key.isdigit()]
    new_storages: dict[str, tuple[object, int, int, int]] = {}

    def tensor_for(path: str, content, like) -> TensorRef:
        like = like if isinstance(like, TensorRef) else None
        try:
            dtype, shape, start, nbytes = npy.edited_layout(content, path, like.dtype if like else None, storable, target)
        except ValueError as e:
            raise EditError(str(e)) from None
        key = str(max(used, default=-1) + 1 + len(new_storages))
        tensor = new_tensor(key, dtype, tuple(shape), like)
        new_storages[key] = (content, start, nbytes, tensor.storage.size)
        return tensor

    obj, problems = pickled_edits.apply(tree, files, before, changed, tensor_for)
    if problems:
        raise RepackError(f"cannot write {archive.name}: " + "; ".join(problems))
    return obj, new_storages


def _pickled(archive, obj: object, **options) -> bytes:
    try:
        return pickle_writer.dumps(obj, **options)
    except pickle_writer.PickleWriteError as e:
        raise RepackError(f"cannot write {archive.name}: the pickle: {e}") from None


def rewrite_blob(archive, files: dict, before: dict, changed: list[str]) -> ZipBlob:
    """The new archive for the edited tree of `archive` (a `TorchZip`)."""
    obj, new_storages = edit_objects(archive, files, before, changed, storable, "torch.save")
    return archive_blob(archive, _pickled(archive, obj), obj, new_storages)


def archive_blob(archive, pickle: bytes, obj: object, new_storages: dict | None = None) -> ZipBlob:
    """`archive` (a `TorchZip`) with `pickle` (of `obj`) as its data.pkl: the
    storages `obj` no longer uses left out, `new_storages` (as
    `edit_objects` gives them) after the old ones, every other record kept
    with its bytes."""
    new_storages = new_storages or {}
    live = storage_keys(obj)
    storage_prefix = archive.prefix + "data/"
    records, after_storages = [], None
    for name, info in archive.records.items():
        if name == archive.pickle_name:
            records.append(Record(name, len(pickle), data=pickle))
            continue
        if name.startswith(storage_prefix):
            if name[len(storage_prefix) :] not in live:
                continue
            after_storages = len(records) + 1
        elif name == archive.prefix + "version" and after_storages is None:
            after_storages = len(records)
        extent = archive.record_data(info)
        records.append(Record(name, extent.length, piece=extent, crc=info.CRC, method=info.compress_type,
                              size=info.file_size))
    added = [Record(storage_prefix + key, nbytes, piece=content, start=start)
             for key, (content, start, nbytes, _) in new_storages.items() if key in live]
    at = len(records) if after_storages is None else after_storages
    return ZipBlob(records[:at] + added + records[at:])


def new_archive(pickle: bytes) -> ZipBlob:
    """The torch.save zip of a value that holds no tensor, `pickle` its
    data.pkl, with the records torch.save writes into a buffer (archive
    name `archive/`). Its serialization id (random in torch) is made from
    the pickle, so the same value gives the same bytes."""
    serialization_id = str(int.from_bytes(hashlib.sha256(pickle).digest()[:16], "big")).zfill(40).encode()
    records = [
        ("data.pkl", pickle), (".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little"),
        ("version", b"3\n"), (".data/serialization_id", serialization_id),
    ]
    return ZipBlob([Record(f"archive/{name}", len(data), data=data) for name, data in records])


def write_legacy(archive, files: dict, before: dict, output) -> None:
    """The edited tree of `archive` (a `TorchLegacy`) in the legacy layout:
    its header pickles as they were, the object, the sorted storage keys,
    then each storage as its element count and bytes."""
    obj, new_storages = edit_objects(archive, files, before, changes(before, files), legacy_storable, LEGACY)
    pickle = _pickled(archive, obj, storage_pid=lambda ref: (*ref.pid[:5], None))
    live = sorted(storage_keys(obj))  # as torch sorts them
    output.copy(archive.source, 0, archive.header_end)
    output.write(pickle)
    output.write(_pickled(archive, live))
    for key in live:
        if key in new_storages:
            content, start, nbytes, count = new_storages[key]
            output.write(count.to_bytes(8, "little"))
            output.copy_content(content, start, nbytes)
        else:
            extent = archive.storage(key)
            output.copy(archive.source, extent.offset - 8, extent.length + 8)  # its count, then its bytes


LEGACY = "the legacy torch.save format"


def storage_keys(root: object) -> set[str]:
    """The keys of every storage the object graph refers to."""
    keys, seen, pending = set(), set(), [root]
    while pending:
        value = pending.pop()
        if id(value) in seen or isinstance(value, (str, bytes, int, float, type(None))):
            continue
        seen.add(id(value))
        if isinstance(value, StorageRef):
            keys.add(value.key)
            continue
        if isinstance(value, TensorRef):
            pending.append(value.storage)
        if isinstance(value, Rebuilt) and value.pickled is not None:
            pending.append(value.pickled)
        if isinstance(value, dict):
            pending += [*value.keys(), *value.values()]
            if isinstance(value, PickledDict):
                pending.append(value.attributes)
        elif isinstance(value, (list, tuple, set, frozenset)):
            pending += value
        elif isinstance(value, Call):
            pending += [value.func, value.args, value.kwargs, value.state, value.items, value.dictitems]
    return keys
