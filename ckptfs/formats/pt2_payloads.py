"""The weights and constants of one program of a PT2 archive, from the
payload configs `torch.export.save` writes beside them.

`data/weights/<program>_weights_config.json` (and `..._constants_config.json`)
map each FQN to a `PayloadMeta` (torch/_export/serde/schema.py): the record
`path_name` under `data/weights/` (`data/constants/`), whether it is pickled,
and a `TensorMeta`: dtype (a `ScalarType` code), sizes, strides and storage
offset (each `{"as_int": n}`), layout. A record holds the raw bytes of a
whole storage, in native (little-endian) order; tensors that share a storage
(tied or sliced weights) share its record, each a view `torch.as_strided`
makes with its own sizes, strides and offset, as `torch.export.load` does.

A view in C order is served straight from the record; any other is gathered
on read (`gather.Gather`). A payload whose entry cannot be read (a dtype or
layout ckptfs does not know, a symbolic size, a view reaching past its
record, a missing record) is left out, and a note says why. A pickled payload (a tensor subclass, a torchbind or
opaque object) is never unpickled: it is shown as the bytes it is, beside a
note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..humanize import plural
from ..sources.base import Source
from ..tree import xattrs
from ..tree.dtypes import BY_NAME, DType
from ..tree.gather import Gather
from ..tree.nodes import Extent
from ..tree.tensors import PiecedTensor, Tensor

#: torch's ScalarType codes (schema.ScalarType) -> ckptfs dtype names
SCALAR_TYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
    9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
    29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz", 33: "float8_e8m0fnu",
    34: "uint32", 35: "uint64",
}
#: schema.Layout.Strided: the only layout a raw record holds
STRIDED = 7
#: the most dimensions a payload's sizes may list (torch's own bound)
MAX_DIMS = 64
#: the most bytes a tensor's file may hold (a stride of 0 repeats one
#: element as often as the sizes say): what a file offset holds
MAX_BYTES = 1 << 62


class PayloadError(ValueError):
    """Why one payload cannot be shown as a tensor."""


@dataclass(frozen=True)
class Payload:
    """One entry of a payload config: `fqn` -> the record `path_name`."""

    fqn: str
    path_name: str
    pickled: bool
    meta: dict | None


def payloads(config: object, label: str) -> tuple[list[Payload], list[str]]:
    """The entries of a parsed payload config, and a note for each entry
    that is not one (named by its key). PayloadError if the config as a
    whole is not one."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise PayloadError(f"{label}: not a payload config (no \"config\" mapping)")
    found, notes = [], []
    for fqn, meta in entries.items():
        if not (isinstance(meta, dict) and isinstance(meta.get("path_name"), str) and meta["path_name"]):
            notes.append(f"{label}: {fqn!r} is left out: its entry names no record")
            continue
        tensor_meta = meta.get("tensor_meta")
        found.append(Payload(fqn, meta["path_name"], meta.get("use_pickle") is True,
                             tensor_meta if isinstance(tensor_meta, dict) else None))
    return found, notes


def _int(value: object, what: str) -> int:
    """A `SymInt` the exporter wrote as a plain integer."""
    if isinstance(value, dict) and set(value) == {"as_int"}:
        value = value["as_int"]
    elif isinstance(value, dict) and "as_expr" in value:
        raise PayloadError(f"{what} given as a symbolic expression, which no stored tensor has")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PayloadError(f"{what} holds {value!r}, not a count")
    return value


def _ints(values: object, what: str) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) > MAX_DIMS:
        raise PayloadError(f"{what} are not a list of at most {MAX_DIMS} dimensions")
    return tuple(_int(v, what) for v in values)


@dataclass(frozen=True)
class View:
    """A tensor's place in its record, as `torch.as_strided` takes it."""

    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    @classmethod
    def of(cls, meta: dict | None) -> View:
        if meta is None:
            raise PayloadError("no tensor_meta")
        code = meta.get("dtype")
        dtype = BY_NAME.get(SCALAR_TYPES.get(code, "")) if isinstance(code, int) else None
        if dtype is None:
            raise PayloadError(f"dtype code {code!r}, which ckptfs does not know")
        if meta.get("layout", STRIDED) != STRIDED:
            raise PayloadError(f"layout {meta.get('layout')!r}: only strided tensors are stored raw")
        shape, strides = _ints(meta.get("sizes"), "sizes"), _ints(meta.get("strides"), "strides")
        if len(shape) != len(strides):
            raise PayloadError(f"{len(shape)} sizes but {len(strides)} strides")
        return cls(dtype, shape, strides, _int(meta.get("storage_offset", {"as_int": 0}), "storage offset"))

    @property
    def contiguous(self) -> bool:
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True

    def elements_needed(self) -> int:
        """How many elements of the record the view reaches (0 when empty)."""
        if not math.prod(self.shape):
            return 0
        return self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides)) + 1


def raw_tensor(payload: Payload, key: str, record: Source, base: int) -> Tensor:
    """The tensor `key` of a raw payload whose record's bytes are `record`
    from `base` on (`record.size - base` of them). PayloadError if the entry
    or the record does not hold it."""
    view = View.of(payload.meta)
    itemsize = view.dtype.bits // 8
    nbytes = record.size - base
    if nbytes == 0 and math.prod(view.shape):
        raise PayloadError("its record is empty (a fake tensor's), which torch.export.load fills with zeros")
    if nbytes % itemsize:
        raise PayloadError(f"its record's {plural(nbytes, 'byte')} are not whole {view.dtype.name} elements")
    length = math.prod(view.shape) * itemsize
    if length > MAX_BYTES:
        raise PayloadError(f"sizes {list(view.shape)} make {length} bytes, more than a file can hold")
    if not length:
        return Tensor(key, view.dtype, view.shape, Extent(record, base, 0))
    needed = view.elements_needed()
    if needed * itemsize > nbytes:
        raise PayloadError(f"sizes {list(view.shape)}, strides {list(view.strides)} and offset {view.offset} reach "
                           f"element {needed - 1} of a record of {nbytes // itemsize}")
    start = base + view.offset * itemsize
    if view.contiguous:
        return Tensor(key, view.dtype, view.shape, Extent(record, start, length))
    facts = ((xattrs.SOURCE, record.locate(base)[0]),
             (xattrs.STORAGE, f"{payload.path_name} offset {view.offset} stride {list(view.strides)}"))
    steps = tuple(0 if n == 1 else s for n, s in zip(view.shape, view.strides))  # a stride no index reaches: any
    gather = Gather(record, base, itemsize, view.offset, view.shape, steps)
    return PiecedTensor(key, view.dtype, view.shape, Extent(record, start, length), (gather,), facts)
