"""Unpickled objects as YAML: plain values stay plain, omegaconf containers
become the mapping or list they hold (interpolations kept as text), and
everything else becomes a tagged node naming the class it would have been."""

from __future__ import annotations

import yaml

from ..humanize import plural
from ..limits import LIMITS
from ..tree import yamltext
from ..tree.nodes import Content, File
from .inert import Call, Global, Persistent, Unhashable, short_repr
from .torch_classes import StorageRef, TensorRef

MAX_DEPTH = 200
OMEGACONF_CONTAINERS = {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"}
PATHS = {f"pathlib.{k}" for k in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")}
#: what `plain` renders once per file and shares: YAML writes a repeat as an alias
_SHAREABLE = (dict, list, tuple, set, frozenset, Call)


class RenderError(Exception):
    pass


class Render:
    """The state of rendering one file: what is left of the budget (shared by
    every file of one pickle), and what this file rendered already, by id,
    so that a shared value is rendered once and written as an alias."""

    def __init__(self, budget: list[int]):
        self.budget = budget
        self.done: dict[int, object] = {}


def plain(value: object, depth: int = 0, path: tuple = (), render: Render | None = None) -> object:
    """`value` with placeholders turned into what a user would write in YAML."""
    render = render or Render([LIMITS.yaml_values])
    shareable = isinstance(value, _SHAREABLE)
    if shareable:
        done = render.done.get(id(value))
        if done is not None:
            return done
    render.budget[0] -= 1
    if render.budget[0] < 0:
        raise RenderError(f"more than {plural(LIMITS.yaml_values, 'value')} to render "
                          "(-o max_yaml_values raises the limit)")
    if depth > MAX_DEPTH:
        raise RenderError(f"nesting deeper than {MAX_DEPTH}")
    if any(value is seen for seen in path):
        return Tagged("!cycle", None)
    rendered = _plain(value, depth + 1, path + (value,) if shareable else path, render)
    if shareable:
        render.done[id(value)] = rendered
    return rendered


def _plain(value: object, deeper: int, path: tuple, render: Render) -> object:
    if isinstance(value, dict):
        return {_key(k): plain(v, deeper, path, render) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, deeper, path, render) for v in value]
    if isinstance(value, (set, frozenset)):
        return Tagged("!set", sorted((plain(v, deeper, path, render) for v in value), key=short_repr))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, TensorRef):
        return Tagged("!tensor", {"dtype": value.dtype.name, "shape": list(value.shape)})
    if isinstance(value, StorageRef):
        return Tagged("!storage", {"key": value.key, "size": value.size})
    if isinstance(value, Global):
        return Tagged("!python/name", value.path)
    if isinstance(value, Persistent):
        return Tagged("!persistent", short_repr(value.pid))
    if isinstance(value, Unhashable):
        return plain(value.key, deeper, path, render)
    if isinstance(value, Call):
        return _call(value, deeper - 1, path, render)
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


def _call(call: Call, depth: int, path: tuple, render: Render) -> object:
    numpy_value = _numpy_value(call)
    if numpy_value is not None:
        return numpy_value
    state = call.state if isinstance(call.state, dict) else {}
    if call.path in OMEGACONF_CONTAINERS:
        return plain(state.get("_content"), depth, path, render)
    if call.path.startswith("omegaconf.nodes."):
        return plain(state.get("_val"), depth, path, render)
    if call.path == "argparse.Namespace":
        return plain(state, depth, path, render)
    if call.path in PATHS and all(isinstance(a, str) for a in call.args):
        return "/".join(call.args).replace("//", "/")
    body = {}
    for field in ("args", "kwargs", "state", "items", "dictitems"):
        content = getattr(call, field)
        if content not in ((), {}, [], None):
            body[field] = plain(content, depth, path, render)
    return Tagged(f"!python/object:{call.path}", body)


def _key(key: object) -> object:
    if isinstance(key, str):
        return str(key)
    return key if isinstance(key, (int, float, bool)) or key is None else short_repr(key)


class Tagged:
    """A YAML node with an explicit tag, for what is not plain data."""

    def __init__(self, tag: str, value: object):
        self.tag = tag
        self.value = value


def _represent_tagged(dumper: yaml.SafeDumper, data: Tagged):
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    return dumper.represent_scalar(data.tag, "" if data.value is None else str(data.value))


for _dumper in yamltext.DUMPERS:
    _dumper.add_representer(Tagged, _represent_tagged)
    _dumper.add_representer(complex, lambda d, c: d.represent_scalar("!complex", repr(c)))


def to_yaml(value: object, budget: list[int] | None = None) -> str:
    """The YAML text for `value`; a value too deep or too large to render
    becomes a one-line error in the file instead of failing the mount.
    `budget` ([values left]) is shared by the files of one pickle."""
    try:
        rendered = plain(value, render=Render(budget if budget is not None else [LIMITS.yaml_values]))
    except RenderError as e:
        return f"# ckptfs: this value cannot be shown: {e}\n!unrendered null\n"
    return yamltext.dump(rendered).removesuffix("...\n")  # the end marker PyYAML puts after a lone scalar


def yaml_file(value: object) -> File:
    """A value (a file's JSON, an inert pickle's) as a YAML file of the tree (`to_yaml`)."""
    return File(Content([to_yaml(value).encode()]))
