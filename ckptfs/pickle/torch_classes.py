"""What torch.save pickles mean, read inertly: storages, tensors and the
handful of containers checkpoints use. A table of known globals, nothing
imported from torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..tree.dtypes import BY_TORCH, DType
from .inert import Call, Global, PickledDict, PickleError, Rebuilt

#: Typed storage classes of torch.save, by the dtype they hold.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}


@dataclass(frozen=True)
class StorageRef:
    """A storage record of the checkpoint: `key` names its bytes."""

    key: str
    dtype: DType | None  # None for an UntypedStorage: the tensor says
    location: str
    size: int  # elements for typed storages, bytes for untyped ones
    pid: tuple = field(default=(), compare=False, repr=False)  # the persistent id, as pickled


@dataclass(frozen=True)
class TensorRef(Rebuilt):
    """A tensor as torch rebuilds it: a view of a storage. `pickled` is the
    rebuild call (a Parameter's wraps the tensor's own)."""

    storage: StorageRef
    dtype: DType
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def persistent_load(pid: object) -> StorageRef:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise PickleError(f"unknown persistent id {pid!r:.80}")
    _, storage_type, key, location, size = pid[:5]
    if not (isinstance(storage_type, Global) and isinstance(key, str) and _is_count(size)):
        raise PickleError(f"bogus storage persistent id {pid!r:.80}")
    if storage_type.name == "UntypedStorage":
        dtype = None
    elif storage_type.name in STORAGE_DTYPES:
        dtype = BY_TORCH[STORAGE_DTYPES[storage_type.name]]
    else:
        raise PickleError(f"unknown storage type {storage_type.path}")
    return StorageRef(key, dtype, str(location), size, pid)


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _tensor(storage, offset, shape, stride, dtype: DType | None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise PickleError("tensor rebuilt from something that is not a storage")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise PickleError(f"tensor of storage {storage.key!r} has no dtype")
    shape, stride = tuple(shape), tuple(stride)
    if len(shape) != len(stride) or not all(_is_count(n) for n in (offset, *shape, *stride)):
        raise PickleError(f"tensor of storage {storage.key!r}: bad size {shape} / stride {stride}")
    return TensorRef(storage, dtype, offset, shape, stride)


def dtype_of(value: object) -> DType:
    if isinstance(value, Global) and value.module == "torch" and value.name in BY_TORCH:
        return BY_TORCH[value.name]
    raise PickleError(f"unknown tensor dtype {value!r:.80}")


def _rebuild_v2(args):  # (storage, offset, size, stride, requires_grad, hooks[, metadata])
    return _tensor(args[0], args[1], args[2], args[3], None)


def _rebuild_v3(args):  # (storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
    return _tensor(args[0], args[1], args[2], args[3], dtype_of(args[6]))


def _rebuild_v1(args):  # (storage, offset, size, stride)
    return _tensor(args[0], args[1], args[2], args[3], None)


def _parameter(args):  # (data, requires_grad, hooks[, state])
    # a copy: the tensor keeps its own rebuild call, the copy gets the Parameter's
    return dataclasses.replace(args[0]) if isinstance(args[0], TensorRef) else NotImplemented


def _from_type(args):  # (func, new_type, args, state): a tensor subclass
    func, _, inner, _ = args
    handler = KNOWN.get(func.path) if isinstance(func, Global) else None
    return handler(inner) if handler else NotImplemented


def _ordered_dict(args):
    return PickledDict(args[0]) if args else PickledDict()


class Size(tuple, Rebuilt):
    """A `torch.Size`: a tuple, written back as a torch.Size."""


class Device(str, Rebuilt):
    """A `torch.device`, as its name ("cuda:0"), written back as a device."""


def _size(args):
    return Size(args[0] if args else ())


def _device(args):
    return Device(":".join(str(a) for a in args))


KNOWN = {
    "torch._utils._rebuild_tensor": _rebuild_v1,
    "torch._utils._rebuild_tensor_v2": _rebuild_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "torch._tensor._rebuild_from_type_v2": _from_type,
    "collections.OrderedDict": _ordered_dict,
    "collections.defaultdict": lambda args: PickledDict(),
    "torch.Size": _size,
    "torch.device": _device,
}



# ---------------------------------------------------------------- new tensors

STORAGE_CLASSES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}
PARAMETERS = {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}
FROM_TYPE = "torch._tensor._rebuild_from_type_v2"


def storable(dtype: DType) -> bool:
    """Whether torch.save can hold `dtype` (a torch dtype of whole bytes)."""
    return dtype.torch is not None and dtype.bits % 8 == 0


def legacy_storable(dtype: DType) -> bool:
    """Whether the legacy torch.save format holds `dtype`: only as a typed storage."""
    return dtype.torch in STORAGE_CLASSES


def new_size(items: list) -> Size:
    """A torch.Size of `items`, pickled as one."""
    size = Size(items)
    size.pickled = Call(Global("torch", "Size"), (tuple(items),))
    return size


def new_tensor(key: str, dtype: DType, shape: tuple[int, ...], like: TensorRef | None) -> TensorRef:
    """A tensor of the new storage `key`, pickled as torch.save pickles one
    (a typed storage and `_rebuild_tensor_v2`, or for newer dtypes an
    untyped one and `_rebuild_tensor_v3`). In place of `like` it stays what
    `like` was: a Parameter, a tensor subclass, with its requires_grad."""
    numel = math.prod(shape)
    stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    location = like.storage.location if like else "cpu"
    storage_class = STORAGE_CLASSES.get(dtype.torch)
    if storage_class:
        pid = ("storage", Global("torch", storage_class), key, location, numel)
        storage = StorageRef(key, dtype, location, numel, pid)
    else:
        nbytes = numel * dtype.bits // 8
        pid = ("storage", Global("torch.storage", "UntypedStorage"), key, location, nbytes)
        storage = StorageRef(key, None, location, nbytes, pid)
    outer = like.pickled if like else None
    base = _base_call(outer)
    requires_grad = base.args[4] if base and len(base.args) > 4 and isinstance(base.args[4], bool) else False
    hooks = PickledDict()
    hooks.pickled = Call(Global("collections", "OrderedDict"), ())
    args = (storage, 0, tuple(shape), stride, requires_grad, hooks)
    if storage_class:
        call = Call(Global("torch._utils", "_rebuild_tensor_v2"), args)
    else:
        call = Call(Global("torch._utils", "_rebuild_tensor_v3"), (*args, Global("torch", dtype.torch)))
    if outer is not None and outer.path in PARAMETERS:
        inner = TensorRef(storage, dtype, 0, tuple(shape), stride)
        object.__setattr__(inner, "pickled", call)
        call = Call(outer.func, (inner, *outer.args[1:]), kind=outer.kind)
    elif outer is not None and outer.path == FROM_TYPE:
        call = Call(outer.func, (call.func, outer.args[1], call.args, outer.args[3]), kind=outer.kind)
    tensor = TensorRef(storage, dtype, 0, tuple(shape), stride)
    object.__setattr__(tensor, "pickled", call)
    return tensor


def _base_call(call: Call | None) -> Call | None:
    """The `_rebuild_tensor*` call inside a Parameter or subclass rebuild."""
    if call is None:
        return None
    if call.path in PARAMETERS and call.args and isinstance(call.args[0], TensorRef):
        return _base_call(call.args[0].pickled)
    if call.path == FROM_TYPE and len(call.args) == 4 and isinstance(call.args[2], tuple):
        return Call(call.args[0], call.args[2])
    return call
