"""GGUF's typed metadata values, both ways: as `metadata.yaml` shows them
(a number carries its GGUF type as a tag, `!u32 4096`; strings and booleans
are plain) and, from an edited `metadata.yaml`, as the bytes a GGUF header
holds.

A value is (type, value): a scalar as a Python number, bool or str (bytes
that were no UTF-8 kept as surrogates); an array as (its items' type, the
items), numbers as a NumPy array, strings and arrays as a list.

An edit keeps each key's type: an untagged number or list takes the type
the key had, and a new key's untagged numbers take the types gguf-py's
writer gives them (int32, float32). A value that does not fit its type is
refused, never wrapped or rounded to infinity.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import yaml

from ..humanize import plural
from ..limits import LIMITS

#: GGUF value types: id -> (tag, struct format); STRING (8) and ARRAY (9) apart
SCALARS = {0: ("u8", "<B"), 1: ("i8", "<b"), 2: ("u16", "<H"), 3: ("i16", "<h"), 4: ("u32", "<I"), 5: ("i32", "<i"),
           6: ("f32", "<f"), 7: ("bool", "<?"), 10: ("u64", "<Q"), 11: ("i64", "<q"), 12: ("f64", "<d")}
STRING, ARRAY, BOOL, INT32, FLOAT32 = 8, 9, 7, 5, 6
#: what YAML calls untagged values; any other tag is refused
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("seq", "map", "str", "int", "float", "bool", "null")}
#: arrays inside arrays, as deep as the reader takes them
MAX_DEPTH = 8
BY_TAG = {tag: kind for kind, (tag, _) in SCALARS.items() if kind != BOOL}
NUMBER_KINDS = frozenset(BY_TAG.values())

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
HEADER_LINE = "# GGUF metadata: numbers carry their type as a tag (!u32, !f32, ...); strings and booleans are plain"


# -- shown
def _quoted(text: str) -> str:
    """A YAML double-quoted string; bytes that were no UTF-8 (kept as
    surrogates) escaped as `\\udcXX`, so the file stays UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text)
    return json.dumps(text, ensure_ascii=False)


def _scalar(kind: int, value) -> str:
    if kind == STRING:
        return _quoted(value)
    if kind == BOOL:
        return "true" if value else "false"
    if SCALARS[kind][0].startswith("f"):
        text = str(np.float32(value)) if kind == FLOAT32 else repr(value)  # the shortest text that reads back the same
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(text, text)
    return str(value)


def value_count(kind: int, value) -> int:
    """How many values `metadata.yaml` would show for one key: 1 for a
    scalar, an array's items (those of the arrays inside it counted)."""
    if kind != ARRAY:
        return 1
    inner, items = value
    return sum(value_count(ARRAY, item) for item in items) if inner == ARRAY else len(items)


def elided(metadata) -> set[str]:
    """The keys whose arrays `metadata.yaml` shows as `[]` with a comment,
    kept as they are unless values are written in their place: those that
    would take the file, counted in order, past `max_yaml_values` values."""
    left, keys = LIMITS.yaml_values, set()
    for key, kind, value in metadata:
        count = value_count(kind, value)
        if kind == ARRAY and count > left:
            keys.add(key)
        else:
            left -= count
    return keys


def _elided_text(value) -> str:
    inner, items = value
    tag = f"!{SCALARS[inner][0]} " if inner in SCALARS and inner != BOOL else ""
    return (f" {tag}[]  # ckptfs: {plural(value_count(ARRAY, value), 'value')}, past the max_yaml_values this file shows; "
            "kept unless you write some")


def _value_text(kind: int, value, indent: str) -> str:
    if kind != ARRAY:
        tag = "" if kind in (STRING, BOOL) else f"!{SCALARS[kind][0]} "
        return " " + tag + _scalar(kind, value)
    inner, items = value
    if inner == STRING:  # one per line: tokenizer vocabularies read down a page
        return "".join(f"\n{indent}- {_scalar(STRING, v)}" for v in items) if items else " []"
    if inner == ARRAY:
        return "".join(f"\n{indent}-{_value_text(ARRAY, v, indent + '  ')}" for v in items) if items else " []"
    tag = "" if inner == BOOL else f"!{SCALARS[inner][0]} "
    return f" {tag}[" + ", ".join(_scalar(inner, v) for v in items.tolist()) + "]"


def metadata_yaml(metadata) -> str:
    """The key-value metadata [(key, type, value)] as YAML, within `max_yaml_values` values."""
    hidden = elided(metadata)
    lines = [HEADER_LINE]
    for key, kind, value in metadata:
        shown = key if _PLAIN_KEY.fullmatch(key) else _quoted(key)
        lines.append(f"{shown}:{_elided_text(value) if key in hidden else _value_text(kind, value, '  ')}")
    return "\n".join(lines) + "\n"


# -- edited
class _Loader(yaml.SafeLoader):
    """YAML read as nodes: a value's type comes from its tag, or the key's
    type before, not from PyYAML's guess."""


def parse(text: bytes, before) -> list:
    """The metadata [(key, type, value)] an edited `metadata.yaml` says, types
    kept from `before` (the metadata at mount) where no tag is given.
    ValueError naming the key and the problem."""
    try:
        loader = _Loader(text.decode("utf-8"))
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ValueError("not valid YAML (nested too deep)") from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("must map each key to its value")
    try:
        return _metadata(root, {key: (kind, value) for key, kind, value in before}, elided(before))
    except yaml.YAMLError as e:
        raise ValueError(f"not GGUF metadata ({str(e).splitlines()[0]})") from None


def _metadata(root: yaml.MappingNode, old: dict, hidden: set[str]) -> list:
    loader = _Loader("")
    metadata, seen = [], set()
    for key_node, value_node in root.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ValueError(f"key {key!r} is not a string")
        if key in seen:
            raise ValueError(f"{key!r} is given twice")
        seen.add(key)
        kind, value = _typed(loader, value_node, old.get(key), key)
        if key in hidden and kind == ARRAY and not len(value[1]):
            kind, value = old[key]  # shown as [] because the file showed enough values: kept
        _check_encodes(kind, value, key)
        metadata.append((key, kind, value))
    return metadata


def _typed(loader: _Loader, node: yaml.Node, like, key: str, depth: int = 0):
    """(type, value) of one YAML node; `like` is the key's (type, value) before."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{key!r}: arrays nested more than {MAX_DEPTH} deep")
    if node.tag.startswith("!") and node.tag[1:] in BY_TAG:
        kind = BY_TAG[node.tag[1:]]
        if isinstance(node, yaml.SequenceNode):
            return ARRAY, (kind, _numbers(loader, node.value, kind, key))
        return kind, _numbers(loader, [node], kind, key)[0].item()
    if node.tag.startswith("!") or node.tag not in _PLAIN_TAGS:
        raise ValueError(f"{key!r}: unknown tag {node.tag} (GGUF's are !" + ", !".join(BY_TAG) + ")")
    if isinstance(node, yaml.SequenceNode):
        old_inner = like[1] if like is not None and like[0] == ARRAY else None
        return ARRAY, _array(loader, node.value, old_inner, key, depth)
    if isinstance(node, yaml.MappingNode):
        raise ValueError(f"{key!r}: GGUF has no mappings inside values")
    value = loader.construct_object(node, deep=True)
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, str):
        return STRING, value
    if isinstance(value, (int, float)):
        kind = like[0] if like is not None and like[0] in NUMBER_KINDS else (INT32 if isinstance(value, int) else FLOAT32)
        if isinstance(value, int) and kind == INT32 and like is None and not -2**31 <= value < 2**31:
            kind = BY_TAG["i64"]
        return kind, _numbers(loader, [node], kind, key)[0].item()
    raise ValueError(f"{key!r}: {type(value).__name__} values have no GGUF type")


def _array(loader: _Loader, nodes: list, like, key: str, depth: int):
    """(items' type, items) of an untagged YAML list; `like` is the key's
    (items' type, items) before, if it was an array."""
    if not nodes:
        return (like[0] if like is not None else STRING), (np.zeros(0, SCALARS[like[0]][1].replace("?", "b1"))
                                                           if like is not None and like[0] in SCALARS else [])
    if any(isinstance(n, yaml.SequenceNode) for n in nodes):  # an array of arrays
        if not all(isinstance(n, yaml.SequenceNode) for n in nodes):
            raise ValueError(f"{key!r}: an array of arrays holds arrays only")
        olds = like[1] if like is not None and like[0] == ARRAY else []
        return ARRAY, [_typed(loader, n, (ARRAY, olds[i]) if i < len(olds) else None, key, depth + 1)[1]
                       for i, n in enumerate(nodes)]
    if any(n.tag.startswith("!") or not isinstance(n, yaml.ScalarNode) for n in nodes):
        raise ValueError(f"{key!r}: tag the whole list, not its items (!u32 [1, 2])")
    values = [loader.construct_object(n, deep=True) for n in nodes]
    if all(isinstance(v, bool) for v in values):
        return BOOL, np.array(values, dtype=bool)
    if all(isinstance(v, str) for v in values):
        return STRING, values
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if like is not None and like[0] in NUMBER_KINDS:
            kind = like[0]
        else:
            kind = FLOAT32 if any(isinstance(v, float) for v in values) else INT32
        return kind, _numbers(loader, nodes, kind, key)
    raise ValueError(f"{key!r}: a GGUF array holds values of one type")


def _numbers(loader: _Loader, nodes: list, kind: int, key: str) -> np.ndarray:
    """The scalars of `nodes` as an array of `kind`; ValueError for one that
    is no number of that type or does not fit it."""
    tag, fmt = SCALARS[kind]
    values = []
    for node in nodes:
        if not isinstance(node, yaml.ScalarNode):
            raise ValueError(f"{key!r}: a !{tag} array holds numbers only")
        try:
            value = loader.construct_yaml_float(node) if tag.startswith("f") else loader.construct_yaml_int(node)
            struct.pack(fmt, value)
        except (ValueError, OverflowError, IndexError, struct.error):  # PyYAML's own resolvers raise all of these
            raise ValueError(f"{key!r}: {node.value!r} is not a {tag} number") from None
        values.append(value)
    return np.array(values, dtype=fmt)


def _check_encodes(kind: int, value, key: str) -> None:
    try:
        encode(kind, value)
    except (UnicodeEncodeError, struct.error) as e:
        raise ValueError(f"{key!r}: cannot be written ({e})") from None


# -- bytes
def _string_bytes(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(data)) + data


def encode(kind: int, value) -> bytes:
    """A value's bytes as a GGUF header holds them after its type."""
    if kind in SCALARS:
        return struct.pack(SCALARS[kind][1], value)
    if kind == STRING:
        return _string_bytes(value)
    inner, items = value
    head = struct.pack("<IQ", inner, len(items))
    if inner in SCALARS:
        return head + np.ascontiguousarray(items, dtype=SCALARS[inner][1].replace("?", "b1")).tobytes()
    return head + b"".join(encode(inner, item) for item in items)


def key_value_bytes(key: str, kind: int, value) -> bytes:
    return _string_bytes(key) + struct.pack("<I", kind) + encode(kind, value)
