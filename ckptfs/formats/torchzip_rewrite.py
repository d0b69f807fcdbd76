"""A torch.save zip written anew for edits that change its objects: tensors
added, removed or reshaped, YAML views changed.

The pickle is read again, the edits are made on its objects
(`pickled_edits`), and data.pkl is pickled from them (`pickle_writer`).
Every other record keeps its place and bytes; storages no tensor uses any
more are left out, and new tensors get new storage records after the old
ones. Unchanged storages are copied by byte range.
"""

from __future__ import annotations

from .. import npy, pickle_writer, pickled_edits
from ..dtypes import DType
from ..inert_pickle import Call, PickledDict, Rebuilt
from ..object_edits import EditError
from ..objtree import ObjectTree
from ..repack import RepackError
from ..torch_pickle import StorageRef, TensorRef, new_tensor
from .zipout import Record, ZipPlan


def rewrite_plan(archive, files: dict, before: dict) -> ZipPlan:
    """The new archive for the edited tree of `archive` (a `TorchZip`);
    RepackError naming every edit that cannot be made."""
    tree = ObjectTree(archive.tensor_file)
    tree.build(archive.obj)
    storage_prefix = archive.prefix + "data/"
    used = [int(n[len(storage_prefix) :]) for n in archive.records if n[len(storage_prefix) :].isdigit()]
    new_storages: dict[str, tuple[object, int, int]] = {}

    def tensor_for(path: str, content, like) -> TensorRef:
        like = like if isinstance(like, TensorRef) else None
        try:
            dtype, shape, start, nbytes = npy.edited_layout(content, path, like.dtype if like else None, storable,
                                                            "torch.save")  # fmt: skip
        except ValueError as e:
            raise EditError(str(e)) from None
        key = str(max(used, default=-1) + 1 + len(new_storages))
        new_storages[key] = (content, start, nbytes)
        return new_tensor(key, dtype, tuple(shape), like)

    obj, problems = pickled_edits.apply(tree, files, before, tensor_for)
    if problems:
        raise RepackError(f"cannot write {archive.name}: " + "; ".join(problems))
    try:
        pickle = pickle_writer.dumps(obj)
    except pickle_writer.PickleWriteError as e:
        raise RepackError(f"cannot write {archive.name}: data.pkl: {e}") from None
    live = storage_keys(obj)
    records, after_storages = [], None
    for name, info in archive.records.items():
        if name == archive.prefix + "data.pkl":
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
                              size=info.file_size))  # fmt: skip
    added = [Record(storage_prefix + key, nbytes, piece=content, start=start)
             for key, (content, start, nbytes) in new_storages.items() if key in live]  # fmt: skip
    at = len(records) if after_storages is None else after_storages
    return ZipPlan(records[:at] + added + records[at:])


def storable(dtype: DType) -> bool:
    """Whether torch.save can hold `dtype` (a torch dtype of whole bytes)."""
    return dtype.torch is not None and dtype.bits % 8 == 0


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
