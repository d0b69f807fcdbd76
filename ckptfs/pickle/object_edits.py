"""An edited YAML view applied to the pickled objects it was rendered from
(`pyobjects`), changing only what the user changed.

The new text is parsed into YAML nodes and walked beside the original
value. Where the rendering is unchanged the original object is kept as it
is (a DictConfig with its metadata, a tuple, a NumPy scalar, a placeholder
of an unknown class); where a scalar changed, the new one takes the type of
the old (`lr: 1e-4`, a string to YAML 1.1, stays a float), or the edit is
refused with the reason. Containers are changed in place, so the objects
that refer to them (an omegaconf node's parent) stay linked.
"""

from __future__ import annotations

import math

import yaml

from .inert import Call, Global
from .pyobjects import (
    NUMPY_RECONSTRUCT,
    NUMPY_SCALAR,
    OMEGACONF_CONTAINERS,
    PATHS,
    Tagged,
    _key,
    _numpy_dtype,
    _numpy_value,
    plain,
)
from .torch_classes import Device, Size, new_size

ANY_NODE = "omegaconf.nodes.AnyNode"


class EditError(ValueError):
    """An edit that cannot be made without changing a value's type or a
    part of the checkpoint YAML cannot change."""


class _Loader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node) or None
    return Tagged("!" + suffix, value)


_Loader.add_multi_constructor("!", _tagged)


#: how many nodes an edited YAML view may stand for once its aliases are
#: expanded: a few hundred bytes of nested aliases (a "billion laughs") would
#: otherwise make the merge walk billions of nodes
MAX_EXPANDED_NODES = 100_000


def parse(text: bytes, name: str) -> yaml.Node | None:
    """The YAML node tree of an edited view; EditError if it is not YAML, or
    if its aliases expand beyond MAX_EXPANDED_NODES or into a cycle."""
    try:
        node = yaml.compose(text.decode("utf-8"), Loader=_Loader)
    except UnicodeDecodeError:
        raise EditError(f"{name}: not UTF-8 text") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise EditError(f"{name}: not valid YAML (line {mark.line + 1}, column {mark.column + 1}: {e.problem})") from None
    except yaml.YAMLError as e:
        raise EditError(f"{name}: not valid YAML ({' '.join(str(e).split())})") from None
    if node is not None and _expanded_size(node, name) > MAX_EXPANDED_NODES:
        raise EditError(f"{name}: its aliases expand to more than {MAX_EXPANDED_NODES:,} values")
    return node


def _expanded_size(root: yaml.Node, name: str) -> int:
    """How many nodes `root` stands for with every alias expanded, counted
    once per distinct node (so the count itself costs little)."""
    sizes: dict[int, int] = {}
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while pending:
        node, children_done = pending.pop()
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(MAX_EXPANDED_NODES + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise EditError(f"{name}: an alias refers to a value that holds it (a cycle)")
        on_path.add(id(node))
        pending.append((node, True))
        pending.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def construct(node: yaml.Node, where: str) -> object:
    """The value of a node; EditError if YAML cannot build it (a mapping
    used as a key, a bad `!!int`)."""
    loader = _Loader("")
    try:
        return loader.construct_document(node)
    except (yaml.YAMLError, TypeError, ValueError) as e:
        raise EditError(f"{where}: not a value YAML can build ({' '.join(str(e).split())})") from None
    finally:
        loader.dispose()


def new_value(node: yaml.Node | None, where: str) -> object:
    """A value for a new key: plain YAML data only."""
    value = construct(node, where) if node is not None else None
    if _has_tags(value):
        raise EditError(f"{where}: a new value must be plain YAML data (no ! tags)")
    return value


def _has_tags(value: object) -> bool:
    if isinstance(value, Tagged):
        return True
    if isinstance(value, dict):
        return any(_has_tags(k) or _has_tags(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_tags(v) for v in value)
    return False


def child(where: str, key: object) -> str:
    """Where a value is, for messages: `config.yaml: model.hidden`, `x.yaml: [2]`."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{where}[{key}]" if not where.endswith(".yaml") else f"{where}: [{key}]"
    return f"{where}: {key}" if where.endswith(".yaml") else f"{where}.{key}"


def merge(old: object, node: yaml.Node | None, where: str) -> object:
    """`old` changed to what `node` says; the same object when nothing
    changed, the same container changed in place, or a new value. `where`
    names it in messages (the file's path for a whole view)."""
    if node is None:  # an empty document
        node = yaml.ScalarNode("tag:yaml.org,2002:null", "")
    if node.tag == "!cycle":
        return old
    if isinstance(old, Call):
        return _merge_call(old, node, where)
    if isinstance(old, dict):
        return _merge_dict(old, node, where)
    if isinstance(old, list):
        return _merge_list(old, node, where)
    if isinstance(old, tuple):
        items = _merge_list(list(old), node, where)
        if len(items) == len(old) and all(a is b for a, b in zip(items, old)):
            return old
        return new_size(items) if isinstance(old, Size) else tuple(items)
    return _scalar(old, node, where)


def _merge_dict(old: dict, node: yaml.Node, where: str, wrap=None) -> dict:
    """The dict changed in place: its keys in the edit's order, new ones
    where the edit puts them."""
    if not isinstance(node, yaml.MappingNode) or node.tag != "tag:yaml.org,2002:map":
        raise EditError(f"{where}: was a mapping, the edit makes it {_kind(node)}")
    by_rendering = {_key(k): k for k in old}
    items = {}
    for key_node, value_node in node.value:
        rendered = construct(key_node, where)
        try:
            key = by_rendering.get(rendered, _UNSET)
        except TypeError:
            raise EditError(f"{where}: a key must be a scalar, not {rendered!r:.40}") from None
        if (rendered if key is _UNSET else key) in items:
            raise EditError(f"{where}: key {rendered!r} appears twice")
        if key is _UNSET:
            value = new_value(value_node, child(where, rendered))
            items[rendered] = wrap(rendered, value) if wrap else value
        else:
            items[key] = merge(old[key], value_node, child(where, rendered))
    if list(items) != list(old) or any(items[k] is not old[k] for k in items):
        old.clear()
        old.update(items)
    return old


def _merge_list(old: list, node: yaml.Node, where: str, wrap=None) -> list:
    if not isinstance(node, yaml.SequenceNode) or node.tag != "tag:yaml.org,2002:seq":
        raise EditError(f"{where}: was a list, the edit makes it {_kind(node)}")
    for i, item_node in enumerate(node.value):
        if i < len(old):
            value = merge(old[i], item_node, child(where, i))
            if value is not old[i]:
                old[i] = value
        else:
            value = new_value(item_node, child(where, i))
            old.append(wrap(i, value) if wrap else value)
    del old[len(node.value) :]
    return old


_UNSET = object()


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the scalar {node.value!r}"


def _scalar(old: object, node: yaml.Node, where: str) -> object:
    """The new value of a scalar (or of a value shown as a tagged node), of
    the old one's type."""
    value = construct(node, where)
    if _same(value, plain(old)):
        return old
    if old is None:
        return new_value(node, where)
    if not isinstance(node, yaml.ScalarNode):
        raise EditError(f"{where}: was {_describe(old)}, the edit makes it {_kind(node)}")
    new = _coerce(old, value, node, where)
    return old if _same(new, old) else new


def _coerce(old: object, value: object, node: yaml.ScalarNode, where: str) -> object:
    kind = type(old)
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(old, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return kind(value)
    elif isinstance(old, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-4 as a string
            except ValueError:
                pass
    elif isinstance(old, str):
        text = value if isinstance(value, str) else None
        if value is not None and not isinstance(value, (bytes, Tagged)) and node.style is None:
            text = node.value  # `name: 123` stays a string
        if text is not None:
            return _device(text) if isinstance(old, Device) else text
    elif isinstance(old, bytes):
        if isinstance(value, bytes):
            return value
    elif isinstance(old, complex):
        if isinstance(value, Tagged) and value.tag == "!complex":
            try:
                return complex(value.value)
            except (TypeError, ValueError):
                pass
    else:
        raise EditError(f"{where}: {_describe(old)} cannot be changed in YAML")
    raise EditError(f"{where}: was {_describe(old)}; {node.value!r} would change its type")


def _describe(value: object) -> str:
    if isinstance(value, Call):
        return f"a {value.path}"
    article = "an" if type(value).__name__[0] in "aeiou" else "a"
    return f"{article} {type(value).__name__} ({plain(value)!r:.40})"


def _same(a: object, b: object) -> bool:
    """Equal as YAML values: of one type, NaN equal to NaN."""
    if isinstance(a, Tagged) or isinstance(b, Tagged):
        return isinstance(a, Tagged) and isinstance(b, Tagged) and a.tag == b.tag and _same(a.value or None, b.value or None)
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------- calls


def _merge_call(call: Call, node: yaml.Node, where: str) -> object:
    path = call.path
    state = call.state if isinstance(call.state, dict) else None
    if path in OMEGACONF_CONTAINERS and state is not None:
        state["_content"] = _merge_omegaconf(call, state.get("_content"), node, where)
        return call
    if path.startswith("omegaconf.nodes.") and state is not None:
        state["_val"] = merge(state.get("_val"), node, where)
        return call
    if path == "argparse.Namespace" and state is not None:
        _merge_dict(state, node, where)
        return call
    if path in NUMPY_SCALAR and _numpy_value(call) is not None:
        return _numpy_scalar(call, node, where)
    if path in NUMPY_RECONSTRUCT and _numpy_value(call) is not None:
        return _numpy_array(call, node, where)
    if path in PATHS and all(isinstance(a, str) for a in call.args):
        text = _scalar(plain(call), node, where)
        return call if text == plain(call) else Call(call.func, (text,), kind=call.kind)
    return _merge_object(call, node, where)


def _merge_omegaconf(container: Call, content: object, node: yaml.Node, where: str) -> object:
    """A DictConfig's or ListConfig's content; a new key gets a node made
    like its siblings' (an AnyNode)."""

    def wrap(key, value):
        return _new_any_node(container, content, key, value, where)

    if isinstance(content, dict) and isinstance(node, yaml.MappingNode):
        return _merge_dict(content, node, where, wrap)
    if isinstance(content, list) and isinstance(node, yaml.SequenceNode):
        return _merge_list(content, node, where, wrap)
    return merge(content, node, where)


def _new_any_node(parent: Call, siblings, key, value, where: str) -> Call:
    if isinstance(value, (dict, list)):
        raise EditError(f"{child(where, key)}: a new mapping or list in an omegaconf config cannot be added here;"
                        " add scalar values")
    pattern = next((v for v in (siblings.values() if isinstance(siblings, dict) else siblings)
                    if isinstance(v, Call) and v.path == ANY_NODE and isinstance(v.state, dict)), None)
    metadata = pattern.state.get("_metadata") if pattern else None
    if not (isinstance(metadata, Call) and isinstance(metadata.state, dict)):
        raise EditError(f"{child(where, key)}: no plain value beside it to copy an omegaconf node from")
    new_metadata = Call(metadata.func, metadata.args, kind=metadata.kind, state={**metadata.state, "key": key})
    new_metadata.state["flags"] = dict(metadata.state.get("flags") or {})
    state = {**pattern.state, "_metadata": new_metadata, "_parent": parent, "_val": value}
    return Call(pattern.func, pattern.args, kind=pattern.kind, state=state)


def _numpy_scalar(call: Call, node: yaml.Node, where: str) -> Call:
    import numpy as np

    old = plain(call)
    new = _scalar(old, node, where)
    if new is old:
        return call
    dtype = _numpy_dtype(call.args[0])
    try:
        data = np.array(new, dtype=dtype).tobytes()
    except (OverflowError, ValueError, TypeError) as e:
        raise EditError(f"{where}: {new!r} does not fit NumPy {dtype} ({e})") from None
    return Call(call.func, (call.args[0], data), kind=call.kind)


def _numpy_array(call: Call, node: yaml.Node, where: str) -> Call:
    import numpy as np

    old = plain(call)
    value = construct(node, where)
    if _same(value, old):
        return call
    if not (isinstance(old, Tagged) and isinstance(value, Tagged) and value.tag == old.tag
            and isinstance(value.value, dict) and value.value.get("dtype") == old.value["dtype"]):
        raise EditError(f"{where}: a NumPy array keeps its tag and dtype {old.value['dtype']}; change its data")
    try:
        array = np.array(value.value.get("data"), dtype=old.value["dtype"])
    except (OverflowError, ValueError, TypeError) as e:
        raise EditError(f"{where}: the data does not fit NumPy {old.value['dtype']} ({e})") from None
    version, _, dtype, _, _ = call.state
    new = Call(call.func, call.args, kind=call.kind)
    new.state = (version, tuple(array.shape), dtype, False, array.tobytes())
    return new


def _merge_object(call: Call, node: yaml.Node, where: str) -> Call:
    """An object of another class (a `!python/object:` node): its fields."""
    rendered = plain(call)
    if _same(construct(node, where), rendered):
        return call
    if not (isinstance(rendered, Tagged) and node.tag == rendered.tag and isinstance(node, yaml.MappingNode)):
        raise EditError(f"{where}: {_describe(call)} cannot be changed in YAML")
    try:
        fields = {construct(k, where): v for k, v in node.value}
    except TypeError:
        raise EditError(f"{where}: a {call.path} keeps its fields ({', '.join(rendered.value)})") from None
    if set(fields) != set(rendered.value):
        raise EditError(f"{where}: a {call.path} keeps its fields ({', '.join(rendered.value)})")
    for name, field_node in fields.items():
        old = getattr(call, name)
        value = merge(old, field_node, child(where, name))
        if value is not old:
            setattr(call, name, tuple(value) if name == "args" else value)
    return call


def _device(name: str) -> Device:
    device = Device(name)
    device.pickled = Call(Global("torch", "device"), (name,))
    return device
