"""Unpickled objects as YAML: plain values stay plain, omegaconf containers
become the mapping or list they hold (interpolations kept as text), and
everything else becomes a tagged node naming the class it would have been."""

from __future__ import annotations

import yaml

from .inert import Call, Global, Persistent
from .torch_classes import StorageRef, TensorRef

MAX_DEPTH = 200
MAX_NODES = 1_000_000  # shared references can make a small pickle render huge
OMEGACONF_CONTAINERS = {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"}
PATHS = {f"pathlib.{k}" for k in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")}


class RenderError(Exception):
    pass


def plain(value: object, depth: int = 0, path: tuple = (), budget: list | None = None) -> object:
    """`value` with placeholders turned into what a user would write in YAML."""
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise RenderError(f"more than {MAX_NODES} values to render")
    if depth > MAX_DEPTH:
        raise RenderError(f"nesting deeper than {MAX_DEPTH}")
    if any(value is seen for seen in path):
        return Tagged("!cycle", None)
    path = path + (value,) if isinstance(value, (dict, list, tuple, Call)) else path
    deeper = depth + 1
    if isinstance(value, dict):
        return {_key(k): plain(v, deeper, path, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, deeper, path, budget) for v in value]
    if isinstance(value, (set, frozenset)):
        return Tagged("!set", sorted((plain(v, deeper, path, budget) for v in value), key=repr))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, TensorRef):
        return Tagged("!tensor", {"dtype": value.dtype.name, "shape": list(value.shape)})
    if isinstance(value, StorageRef):
        return Tagged("!storage", {"key": value.key, "size": value.size})
    if isinstance(value, Global):
        return Tagged("!python/name", value.path)
    if isinstance(value, Persistent):
        return Tagged("!persistent", repr(value.pid))
    if isinstance(value, Call):
        return _call(value, deeper, path, budget)
    if isinstance(value, str) and type(value) is not str:
        return str(value)  # a torch.device
    return value


NUMPY_RECONSTRUCT = {f"{m}.multiarray._reconstruct" for m in ("numpy.core", "numpy._core")}
NUMPY_SCALAR = {f"{m}.multiarray.scalar" for m in ("numpy.core", "numpy._core")}


def _numpy_dtype(value: object):
    """The NumPy dtype a pickled `numpy.dtype(...)` call stands for, or None."""
    import numpy as np

    if not (isinstance(value, Call) and value.path in ("numpy.dtype", "numpy.core.multiarray.dtype") and value.args):
        return None
    order = value.state[1] if isinstance(value.state, tuple) and len(value.state) > 1 else "|"
    try:
        dtype = np.dtype(value.args[0])
        return dtype.newbyteorder(order) if order in "<>" else dtype
    except TypeError:
        return None


def _numpy_value(call: Call):
    """A pickled NumPy array or scalar as data, or None if it is not one."""
    import numpy as np

    if call.path in NUMPY_SCALAR and len(call.args) == 2 and isinstance(call.args[1], bytes):
        dtype = _numpy_dtype(call.args[0])
        if dtype is not None and dtype.itemsize == len(call.args[1]) and not dtype.hasobject:
            return np.frombuffer(call.args[1], dtype)[0].item()
    if call.path in NUMPY_RECONSTRUCT and isinstance(call.state, tuple) and len(call.state) == 5:
        _, shape, dtype, fortran, raw = call.state
        dtype = _numpy_dtype(dtype)
        if dtype is not None and isinstance(raw, bytes) and not dtype.hasobject:
            array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
            return Tagged("!numpy.ndarray", {"dtype": dtype.str, "shape": list(shape), "data": array.tolist()})
    return None


def _call(call: Call, depth: int, path: tuple, budget: list) -> object:
    numpy_value = _numpy_value(call)
    if numpy_value is not None:
        return numpy_value
    state = call.state if isinstance(call.state, dict) else {}
    if call.path in OMEGACONF_CONTAINERS:
        return plain(state.get("_content"), depth, path, budget)
    if call.path.startswith("omegaconf.nodes."):
        return plain(state.get("_val"), depth, path, budget)
    if call.path == "argparse.Namespace":
        return plain(state, depth, path, budget)
    if call.path in PATHS and all(isinstance(a, str) for a in call.args):
        return "/".join(call.args).replace("//", "/")
    body = {}
    for field in ("args", "kwargs", "state", "items", "dictitems"):
        content = getattr(call, field)
        if content not in ((), {}, [], None):
            body[field] = plain(content, depth, path, budget)
    return Tagged(f"!python/object:{call.path}", body)


def _key(key: object) -> object:
    if isinstance(key, str):
        return str(key)
    return key if isinstance(key, (int, float, bool)) or key is None else repr(key)


class Tagged:
    """A YAML node with an explicit tag, for what is not plain data."""

    def __init__(self, tag: str, value: object):
        self.tag = tag
        self.value = value


class _Dumper(yaml.SafeDumper):
    pass


def _represent_tagged(dumper: yaml.SafeDumper, data: Tagged):
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    return dumper.represent_scalar(data.tag, "" if data.value is None else str(data.value))


_Dumper.add_representer(Tagged, _represent_tagged)
_Dumper.add_representer(complex, lambda d, c: d.represent_scalar("!complex", repr(c)))


def to_yaml(value: object) -> str:
    """The YAML text for `value`; a value too deep or too large to render
    becomes a one-line error in the file instead of failing the mount."""
    try:
        rendered = plain(value)
    except RenderError as e:
        return f"# ckptfs: this value cannot be shown: {e}\n!unrendered null\n"
    text = yaml.dump(rendered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.removesuffix("...\n")  # the end marker PyYAML puts after a lone scalar
