"""New tensors of a distributed checkpoint, and tensors of a new shape or
dtype: stored whole in a new shard, with metadata copied from the
checkpoint's own objects (a template of each kind it holds)."""

from __future__ import annotations

import json
import math
import re

from ...pickle.inert import Call, Global
from ...pickle.torch_classes import new_size, new_tensor
from ...tree.dtypes import DType
from .. import safetensors


class Templates:
    """Metadata for new tensors, made like the checkpoint's own: each object
    copies one of the same class from the metadata, with new fields."""

    def __init__(self, items: dict, storage: dict, planner):
        self.items, self.storage, self.planner = items, storage, planner
        self.tensor = next((v for v in items.values() if isinstance(v, Call) and v.path.endswith("TensorStorageMetadata")), None)
        self.bytes = next((v for v in items.values() if isinstance(v, Call) and v.path.endswith("BytesStorageMetadata")), None)
        self.index, self.info = next(iter(storage.items()), (None, None))

    def add(self, fqn: str, dtype: DType, shape: tuple[int, ...], shard: str, offset: int, length: int,
            pattern: Templates) -> None:
        """Metadata of a tensor stored whole at `offset` of `shard`; made like
        this file's own objects, or `pattern`'s where it has none."""
        tensor, index, info = self.tensor or pattern.tensor, self.index or pattern.index, self.info or pattern.info
        zeros = new_size([0] * len(shape))
        properties = _copy(tensor.state["properties"])
        if isinstance(properties.state, tuple):
            properties.state = (Global("torch", dtype.torch), *properties.state[1:])
        else:
            properties.state["dtype"] = Global("torch", dtype.torch)
        chunk = _copy(tensor.state["chunks"][0], offsets=zeros, sizes=new_size(list(shape)))
        self.items[fqn] = _copy(tensor, properties=properties, size=new_size(list(shape)), chunks=[chunk])
        info = _copy(info, relative_path=shard, offset=offset, length=length)
        if "transform_descriptors" in info.state:
            info.state["transform_descriptors"] = None
        self.storage[_copy(index, fqn=fqn, offset=zeros, index=0)] = info
        if isinstance(self.planner, dict):
            self.planner[fqn] = _planner_path(self.planner, fqn)


    def add_item(self, fqn: str, shard: str, offset: int, length: int, pattern: Templates) -> None:
        """Metadata of a non-tensor item stored at `offset` of `shard`, as DCP
        writes it: a `BytesStorageMetadata`, an index with no offset."""
        index, info = self.index or pattern.index, self.info or pattern.info
        made = self.bytes or pattern.bytes
        if made is None:  # the checkpoint holds tensors only: the class beside TensorStorageMetadata
            tensor = self.tensor or pattern.tensor
            made = Call(Global(tensor.func.module, "BytesStorageMetadata"), kind=tensor.kind)
        self.items[fqn] = _copy(made)
        index = _copy(index, fqn=fqn, index=None)
        drop_field(index, "offset")
        info = _copy(info, relative_path=shard, offset=offset, length=length)
        drop_field(info, "transform_descriptors")
        self.storage[index] = info
        if isinstance(self.planner, dict):
            self.planner[fqn] = _planner_path(self.planner, fqn)


def _copy(call: Call, **fields) -> Call:
    """A pickled dataclass instance like `call`, with some fields changed."""
    state = call.state
    if isinstance(state, dict):
        state = {**state, **fields}
    elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = (state[0], {**state[1], **fields})
    return Call(call.func, call.args, dict(call.kwargs), state, kind=call.kind)


def _planner_path(planner: dict, fqn: str) -> tuple:
    """How DCP's planner unflattens a new key: like the key sharing the
    longest dotted prefix with it (`model.0.weight` -> ("model", "0.weight"))."""
    parts = fqn.split(".")

    def shared(other: str) -> int:
        return next((i for i, (a, b) in enumerate(zip(parts, other.split("."))) if a != b), len(parts))

    like = max(planner, key=shared, default=None)
    path = planner.get(like)
    if not (isinstance(path, tuple) and path and all(isinstance(p, str) for p in path)):
        return tuple(parts)
    depth = min(len(path), len(parts))
    return (*parts[: depth - 1], ".".join(parts[depth - 1 :]))


def free_shard_name(files: dict) -> str:
    taken = [int(m.group(1)) for n in files if (m := re.fullmatch(r"__0_(\d+)\.distcp", n))]
    return f"__0_{max(taken, default=-1) + 1}.distcp"


class NewShard:
    """The bytes of a new shard (`size`, `write(output)`) and where each
    tensor's storage info points (`places`: (offset, length), in order)."""

    def __init__(self, parts: list, places: list[tuple[int, int]]):
        self.parts, self.places = parts, places
        self.size = sum(part.size for part in parts)

    def write(self, output) -> None:
        for part in self.parts:
            part.write(output)

    @classmethod
    def joined(cls, items: list, tensors: NewShard | None) -> NewShard:
        """A shard of `items` (each a blob of a non-tensor item's record),
        then `tensors`, as DCP writes a shard: bytes items first."""
        places, position = [], 0
        for blob in items:
            places.append((position, blob.size))
            position += blob.size
        if tensors is None:
            return cls(list(items), places)
        return cls([*items, *tensors.parts], places + [(offset + position, length) for offset, length in tensors.places])


def new_torch_shard(added: list[tuple[str, tuple]]) -> NewShard:
    """Each tensor as the torch.save zip DCP's writer makes of a chunk, one
    after the other."""
    from ...pickle import writer as pickle_writer
    from .. import zipout

    records, places, position = [], [], 0
    for _, (content, start, dtype, shape) in added:
        pickle = pickle_writer.dumps(new_tensor("0", dtype, shape, None))
        record = zipout.ZipBlob([
            zipout.Record("archive/data.pkl", len(pickle), data=pickle),
            zipout.Record("archive/byteorder", 6, data=b"little"),
            zipout.Record("archive/data/0", math.prod(shape) * dtype.bits // 8, piece=content, start=start),
            zipout.Record("archive/version", 2, data=b"3\n"),
        ])
        records.append(record)
        places.append((position, record.size))
        position += record.size
    return NewShard(records, places)


def new_safetensors_shard(added: list[tuple[str, tuple]]) -> NewShard:
    """The tensors in one safetensors block, as the `safetensors`
    serialization format ends a shard: each record's offset is where the
    block starts, its length the tensor's bytes, its chunk found by name."""
    tensors = [(fqn, dtype, shape, (content, start), math.prod(shape) * dtype.bits // 8)
               for fqn, (content, start, dtype, shape) in added]
    sharding = {fqn: {"saved_offsets": [0] * len(shape)} for fqn, (_, _, _, shape) in added}
    block = safetensors.Block({"DCP_SHARDING_INFO": json.dumps(sharding), "DCP_VERSION": "1.0", "format": "pt"}, tensors)
    return NewShard([block], [(0, length) for *_, length in tensors])


def set_field(value: Call, name: str, new: object) -> None:
    """Sets an attribute of a pickled dataclass instance (see `fields_of`)."""
    state = value.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict) and name in state[1]:
        state[1][name] = new
    elif isinstance(state, tuple) and isinstance(state[0], dict):
        state[0][name] = new
    else:
        state[name] = new


def drop_field(value: Call, name: str) -> None:
    """Leaves an attribute out of a pickled dataclass instance, as DCP leaves
    out a `_StorageInfo`'s `transform_descriptors` when there are none."""
    state = value.state
    for fields in (state[1], state[0]) if isinstance(state, tuple) else (state,):
        if isinstance(fields, dict):
            fields.pop(name, None)
