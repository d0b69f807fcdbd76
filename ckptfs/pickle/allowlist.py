"""Which globals a checkpoint's pickle may name: the allowlist behind
`ckptfs scan` (docs/security.md, "Scanning pickles").

`pickle.load` imports every global a pickle names and calls what it is
told to, so a global is safe only if importing and calling it can do
nothing but build data. The list is exact: a (module, name) pair matches
only itself, so an attribute chain such as `builtins` + `print.__class__`
(which protocol 4 resolves through getattr) is never taken for an entry.
Python 2 names are mapped first, as `pickle` maps them (`__builtin__.long`
is `builtins.int`).

Everything not listed is dangerous: loading imports its module and calls
it. A few well-known ways to run code carry a sharper reason.
"""

from __future__ import annotations

import _compat_pickle
import fnmatch
from dataclasses import dataclass

from .inert import Global

_TORCH_DTYPES = (
    "float32 float float64 double float16 half bfloat16 complex32 chalf complex64 cfloat complex128 cdouble "
    "uint8 uint16 uint32 uint64 int8 int16 short int32 int int64 long bool "
    "qint8 quint8 qint32 quint4x2 quint2x4 "
    "float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 "
    "bits1x8 bits2x4 bits4x2 bits8 bits16 "
    "uint1 uint2 uint3 uint4 uint5 uint6 uint7 int1 int2 int3 int4 int5 int6 int7"
).split()
_TORCH_STORAGES = (
    "Float Double Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble "
    "QUInt8 QInt8 QInt32 QUInt4x2 QUInt2x4"
).split()
_TORCH_TENSOR_TYPES = "Double Float BFloat16 Long Int Short Char Byte Half Bool".split()
_TORCH_REBUILDS = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter _rebuild_parameter_with_state "
    "_rebuild_qtensor _rebuild_sparse_tensor _rebuild_meta_tensor_no_storage _rebuild_nested_tensor "
    "_rebuild_wrapper_subclass _rebuild_device_tensor_from_numpy _rebuild_device_tensor_from_cpu_tensor"
).split()
_NUMPY_DTYPE_CLASSES = (
    "Bool Int8 UInt8 Int16 UInt16 Int32 UInt32 Int64 UInt64 Long ULong LongLong ULongLong Byte UByte Short "
    "UShort Int UInt Float16 Float32 Float64 Half Float Double LongDouble Complex64 Complex128 CLongDouble "
    "Str Bytes Void DateTime64 TimeDelta64 String"
).split()

#: what may be named, by group (the groups are docs/security.md's table)
GROUPS: dict[str, list[str]] = {
    "torch tensors and storages": [
        *(f"torch._utils.{f}" for f in _TORCH_REBUILDS),
        "torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter", "torch.Tensor",
        "torch.Size", "torch.device", "torch.serialization._get_layout", "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage", "torch.storage._LegacyStorage",
        *(f"torch.{s}Storage" for s in _TORCH_STORAGES), *(f"torch.cuda.{s}Storage" for s in _TORCH_STORAGES),
        *(f"{m}.{t}Tensor" for m in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")
          for t in _TORCH_TENSOR_TYPES),
        *(f"torch.{t}" for t in _TORCH_DTYPES),
        "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr",
        "torch.sparse_bsc", "torch._mkldnn", "torch.jagged",
        "torch.contiguous_format", "torch.channels_last", "torch.channels_last_3d", "torch.preserve_format",
        "torch.per_tensor_affine", "torch.per_tensor_symmetric", "torch.per_channel_affine",
        "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
    ],
    "distributed checkpoint metadata": [
        *(f"torch.distributed.checkpoint.metadata.{c}" for c in (
            "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
            "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")),
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
        "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
        "torch.distributed._shard.sharded_tensor.metadata.ShardedTensorMetadata",
        "torch.distributed._shard.metadata.ShardMetadata",
    ],
    "Python containers and scalars": [
        *(f"builtins.{t}" for t in ("dict", "list", "set", "frozenset", "tuple", "int", "float", "complex", "bool",
                                    "str", "bytes", "bytearray", "slice", "range", "object")),
        "collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
        "copyreg._reconstructor", "_codecs.encode",
        "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
        "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePath", "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath", "argparse.Namespace",
    ],
    # a parametrised annotation (Dict[str, Any]) pickles as getitem(Dict, (str, Any)): indexing a listed
    # class or annotation builds another annotation, and no listed value reaches anything else by indexing
    "typing annotations": [
        *(f"typing.{n}" for n in ("Any", "Dict", "List", "Tuple", "Set", "FrozenSet", "Optional", "Union", "Type",
                                  "Sequence", "Mapping", "MutableMapping", "Iterable", "Callable", "DefaultDict",
                                  "OrderedDict", "Literal")),
        "_operator.getitem", "operator.getitem",
    ],
    "NumPy arrays, dtypes and scalars": [
        "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        *(f"numpy.dtypes.{c}DType" for c in _NUMPY_DTYPE_CLASSES),
        "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor", "numpy.random.__RandomState_ctor",
        "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64", "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64",
    ],
    "OmegaConf configs": [
        "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata",
        *(f"omegaconf.nodes.{n}" for n in ("AnyNode", "ValueNode", "StringNode", "IntegerNode", "FloatNode",
                                           "BooleanNode", "BytesNode", "PathNode", "EnumNode",
                                           "InterpolationResultNode")),
    ],
    "Lightning hyper-parameters": [
        "lightning.fabric.utilities.data.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict", "lightning.pytorch.utilities.parsing.AttributeDict",
    ],
    # What every DeepSpeed engine.save_checkpoint writes into its optimizer states (read in
    # DeepSpeed 0.19.8; tests/test_scan.py checks the installed version still holds to it).
    # Importing each module is the installed library's own code.
    "DeepSpeed training state": [
        # a @dataclass of two ints (numel, start), no __new__, __setstate__, __reduce__ or
        # __getattr__: unpickled as object.__new__ then its __dict__ filled (NEWOBJ, BUILD)
        "deepspeed.utils.tensor_fragment.fragment_address",
        # LossScaler and DynamicLossScaler derive from LossScalerBase and DeepSpeedConfigObject,
        # plain classes defining none of __new__, __setstate__, __reduce__ or __getattr__:
        # unpickled as object.__new__ then __dict__ filled; __init__ is not called
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        # an (int, Enum) pickled as ZeroStageEnum(1): EnumType.__call__ looks the value up among
        # the members, or raises; given names too it makes a new Enum, which runs no code either
        "deepspeed.runtime.zero.config.ZeroStageEnum",
    ],
}

SAFE: frozenset[tuple[str, str]] = frozenset(
    tuple(path.rsplit(".", 1)) for paths in GROUPS.values() for path in paths  # type: ignore[misc]
)

#: well-known ways to run code, by module or global (the first match, longest first, gives the reason)
_KNOWN_DANGERS = {
    "os": "runs shell commands and changes files", "posix": "runs shell commands and changes files",
    "nt": "runs shell commands and changes files", "subprocess": "runs programs", "pty": "runs programs",
    "builtins.eval": "runs Python code", "builtins.exec": "runs Python code", "builtins.compile": "compiles Python code",
    "builtins.__import__": "imports any module", "builtins.getattr": "reaches any attribute, and from there anything",
    "builtins.setattr": "changes any attribute", "builtins.delattr": "changes any attribute",
    "builtins.open": "opens files", "builtins.globals": "reaches the interpreter's globals",
    "builtins.vars": "reaches any object's attributes", "builtins.breakpoint": "starts a debugger",
    "builtins.input": "reads the terminal", "builtins.exit": "ends the process", "builtins.quit": "ends the process",
    "importlib": "imports any module", "runpy": "runs modules", "sys": "changes the interpreter",
    "shutil": "copies and deletes files", "tempfile": "creates files", "socket": "opens network connections",
    "urllib": "opens network connections", "http": "opens network connections", "requests": "opens network connections",
    "ftplib": "opens network connections", "smtplib": "opens network connections", "webbrowser": "opens a browser",
    "pickle": "loads another pickle", "_pickle": "loads another pickle", "marshal": "loads code objects",
    "dill": "loads another pickle", "cloudpickle": "loads another pickle", "joblib": "loads another pickle",
    "shelve": "loads another pickle", "torch.load": "loads another pickle, unchecked",
    "torch.serialization.load": "loads another pickle, unchecked",
    "torch.storage._load_from_bytes": "loads another pickle, unchecked", "numpy.load": "loads another pickle",
    "operator.attrgetter": "reaches any attribute", "_operator.attrgetter": "reaches any attribute",
    "operator.methodcaller": "calls any method", "_operator.methodcaller": "calls any method",
    "types": "builds functions and code objects", "code": "runs Python code", "codeop": "compiles Python code",
    "ctypes": "calls native code", "multiprocessing": "starts processes", "asyncio": "starts processes",
    "threading": "starts threads", "pdb": "runs Python code", "bdb": "runs Python code", "timeit": "runs Python code",
    "functools.partial": "calls any function it is given", "torch.jit": "compiles and runs code",
    "torch.hub": "downloads and runs code", "numpy.testing._private.utils.runstring": "runs Python code",
}


@dataclass(frozen=True)
class Verdict:
    safe: bool
    #: why: the allowlist group, or what the global can do
    reason: str


def canonical(g: Global) -> tuple[str, str]:
    """(module, name) as Python 3's unpickler resolves them: Python 2 names mapped."""
    if (g.module, g.name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(g.module, g.name)]
    return _compat_pickle.IMPORT_MAPPING.get(g.module, g.module), g.name


_GROUP_OF = {tuple(path.rsplit(".", 1)): group for group, paths in GROUPS.items() for path in paths}


def classify(g: Global, allowed: tuple[str, ...] = ()) -> Verdict:
    """Whether loading a pickle that names `g` stays safe; `allowed` are
    the user's own fnmatch patterns of full paths (`--allow`)."""
    module, name = canonical(g)
    if (module, name) in SAFE:
        return Verdict(True, _GROUP_OF[(module, name)])
    path = f"{module}.{name}"
    if any(fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(g.path, pattern) for pattern in allowed):
        return Verdict(True, "allowed by --allow")
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        reason = _KNOWN_DANGERS.get(".".join(parts[:n]))
        if reason:
            return Verdict(False, reason)
    if "." in name:
        return Verdict(False, f"an attribute chain of {module}: reaches past the names the module defines")
    return Verdict(False, f"not on the allowlist: loading imports {module} and calls {name}")
