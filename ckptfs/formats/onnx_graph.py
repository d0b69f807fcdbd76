"""An ONNX model's graph as readable YAML (`graph.yaml`): its inputs and
outputs with their types and shapes, every node with its op_type, inputs,
outputs and attributes, and the subgraphs of If/Loop/Scan nested where
their attribute is. A tensor inside an attribute is summarized (its
dtype and shape), never dumped; initializers are the tree's `.npy` files
(`GraphText` finds those of the subgraphs it renders).

Subgraphs nest at most MAX_DEPTH deep and the whole file holds at most
`max_yaml_values` nodes and attribute values together: past either, a line
says what was left out (so its cost grows with the model only up to there).
"""

from __future__ import annotations

import json
import re
import struct

from ..errors import FormatError
from ..limits import LIMITS
from ..sources.base import Source
from . import protowire
from .onnx_proto import (
    DATA_TYPES,
    G_INITIALIZER,
    G_INPUT,
    G_NAME,
    G_NODE,
    G_OUTPUT,
    G_SPARSE_INITIALIZER,
    MAX_STRING,
    UNSHOWN_TYPES,
    counted,
    ints,
    read_tensor,
    text,
)
from .protowire import I32, LEN, VARINT

MAX_DEPTH = 16
#: the longest string attribute shown whole (a longer one: its length)
SHOWN_BYTES = 256


def type_name(data_type: int) -> str:
    return DATA_TYPES.get(data_type) or UNSHOWN_TYPES.get(data_type, f"type {data_type}").lower()


class GraphText:
    """Renders graphs, counting the nodes shown across all of them, and
    finds the initializers of the subgraphs it renders: `subgraph_initializers`,
    each (where: the node and attribute of each subgraph down to it, the
    TensorProto's field)."""

    def __init__(self, source: Source):
        #: nodes and attribute values shown so far, across every graph
        self.source, self.values = source, 0
        self.subgraph_initializers: list[tuple[tuple[str, ...], protowire.Field]] = []

    def graph(self, start: int, end: int, where: tuple[str, ...] = ()) -> dict:
        out: dict = {"name": "", "inputs": [], "outputs": [], "initializers": 0, "nodes": []}
        source, folders = self.source, set()
        for f in counted(source, start, end, "a graph"):
            if f.number == G_NAME:
                out["name"] = text(source, f)
            elif f.number in (G_INPUT, G_OUTPUT) and f.wire == LEN:
                out["inputs" if f.number == G_INPUT else "outputs"].append(self.value_info(f))
            elif f.number == G_INITIALIZER:
                out["initializers"] += 1
                if where and f.wire == LEN:
                    self.subgraph_initializers.append((where, f))
            elif f.number == G_SPARSE_INITIALIZER:
                out["sparse_initializers"] = out.get("sparse_initializers", 0) + 1
            elif f.number == G_NODE and f.wire == LEN:
                self.values += 1
                if self.values > LIMITS.yaml_values:
                    out["nodes"].append(f"... more nodes, past max_yaml_values ({LIMITS.yaml_values})")
                    break
                out["nodes"].append(self.node(f, where, len(out["nodes"]), folders))
        return out

    def value_info(self, f: protowire.Field) -> dict:
        """A ValueInfoProto: its name, and for a tensor its dtype and shape
        (a dimension by value, by name, or `?`)."""
        source, out = self.source, {"name": ""}
        for part in protowire.fields(source, f.offset, f.end):
            if part.number == 1:
                out["name"] = text(source, part)
            elif part.number == 2 and part.wire == LEN:
                out.update(self._type(part))
        return out

    def _type(self, f: protowire.Field) -> dict:
        source = self.source
        for kind in protowire.fields(source, f.offset, f.end):
            if kind.number != 1 or kind.wire != LEN:  # sequence, map, optional types: named only
                return {"type": {4: "sequence", 5: "map", 8: "sparse tensor", 9: "optional"}.get(kind.number, "other")}
            out: dict = {"type": "undefined"}
            for part in protowire.fields(source, kind.offset, kind.end):
                if part.number == 1 and part.wire == VARINT:
                    out["type"] = type_name(part.value)
                elif part.number == 2 and part.wire == LEN:
                    out["shape"] = [self._dim(d) for d in protowire.fields(source, part.offset, part.end)
                                    if d.number == 1 and d.wire == LEN]
            return out
        return {}

    def _dim(self, f: protowire.Field) -> int | str:
        for part in protowire.fields(self.source, f.offset, f.end):
            if part.number == 1 and part.wire == VARINT:
                return part.signed
            if part.number == 2:
                return text(self.source, part)
        return "?"

    def node(self, f: protowire.Field, where: tuple[str, ...], index: int, folders: set[str]) -> dict:
        """A NodeProto; `where` its graph's place, `index` its place in the
        graph, `folders` the names its graph's nodes took for their
        subgraphs' folders (`folder`)."""
        source = self.source
        out: dict = {"op_type": "", "name": "", "inputs": [], "outputs": []}
        attributes: dict = {}
        folder = None
        for part in protowire.fields(source, f.offset, f.end):
            if part.number in (1, 2):
                out["inputs" if part.number == 1 else "outputs"].append(text(source, part))
            elif part.number in (3, 4):
                out["name" if part.number == 3 else "op_type"] = text(source, part)
            elif part.number == 7:
                out["domain"] = text(source, part)
            elif part.number == 5 and part.wire == LEN:
                folder = folder or _folder(out["name"] or f"{out['op_type']}_{index}", index, folders)
                name, value = self.attribute(part, where + (folder,))
                attributes[name] = value
        if attributes:
            out["attributes"] = attributes
        return out

    def attribute(self, f: protowire.Field, where: tuple[str, ...]) -> tuple[str, object]:
        """An AttributeProto's (name, value): numbers and strings as they
        are, lists as lists, a tensor as a summary, a graph nested (`where`
        it lies: its node's, then the attribute's name, and a list's index)."""
        name, single, listed = "", None, None
        for part in protowire.fields(self.source, f.offset, f.end):
            if part.number == 1:
                name = text(self.source, part)
            elif part.number == 21:
                single = f"ref: {text(self.source, part)}"
            elif part.number in (2, 3, 4, 5, 6, 14, 22):
                single = self._value(part, where + (name,))
            elif part.number in (7, 8, 9, 10, 11, 15, 23):
                listed = [] if listed is None else listed
                listed.extend(self._values(part, where + (f"{name}_{len(listed)}",)))
                if self.values + len(listed) > LIMITS.yaml_values:
                    del listed[LIMITS.yaml_values - self.values:]
                    listed.append(f"... more values, past max_yaml_values ({LIMITS.yaml_values})")
                    break
        self.values += len(listed or ())
        return name, single if listed is None else listed

    def _value(self, f: protowire.Field, where: tuple[str, ...]) -> object:
        n = f.number
        if n == 2 and f.wire == I32:
            return _float(f.value)
        if n == 3 and f.wire == VARINT:
            return protowire.signed64(f.value)
        if f.wire != LEN:
            raise FormatError(self.source.path, f"attribute field {n} at offset {f.offset} has wire type {f.wire}")
        if n == 4:
            return text(self.source, f, SHOWN_BYTES)
        if n == 6:
            return self._subgraph(f, where)
        return "type" if n == 14 else self._tensor(f)

    def _values(self, f: protowire.Field, where: tuple[str, ...]) -> list:
        if f.number == 7:
            return _floats(self.source, f)
        if f.number == 8:
            return ints(self.source, f)
        return [self._value(protowire.Field(4 if f.number == 9 else 6 if f.number == 11 else 14 if f.number == 15
                                            else 5, f.wire, f.value, f.offset), where)]


    def _tensor(self, f: protowire.Field) -> str:
        """A tensor in an attribute, summarized: `tensor float32 [2, 3]`."""
        try:
            info = read_tensor(self.source, f.offset, f.end)
        except FormatError as e:
            return f"tensor (unreadable: {e.problem})"
        return f"tensor {type_name(info.data_type)} {info.dims}" + (f" {info.name}" if info.name else "")

    def _subgraph(self, f: protowire.Field, where: tuple[str, ...]) -> dict | str:
        if len(where) // 2 >= MAX_DEPTH:
            return f"a graph nested more than {MAX_DEPTH} deep, not shown"
        return self.graph(f.offset, f.end, where)


def _folder(name: str, index: int, taken: set[str]) -> str:
    """The folder of a node's subgraphs: its name (or op_type and index),
    `_INDEX` appended while an earlier node of its graph took it (two nodes
    of one name, or one named `If_0` beside an unnamed If)."""
    while name in taken:
        name = f"{name}_{index}"
    taken.add(name)
    return name


def _float(bits: int) -> float:
    return struct.unpack("<f", bits.to_bytes(4, "little"))[0]


def _floats(source: Source, f: protowire.Field) -> list[float]:
    if f.wire == I32:
        return [_float(f.value)]
    if f.wire != LEN or f.value > MAX_STRING:
        raise FormatError(source.path, f"field {f.number} at offset {f.offset} holds no floats")
    data = source.read_exact(f.offset, f.value // 4 * 4)
    return [v for (v,) in struct.iter_unpack("<f", data)]


# -- the YAML text, written here: PyYAML's representer takes seconds for a graph of 20,000 nodes
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./:\-]*(?<!:)\Z")
#: words YAML 1.1 (PyYAML) reads as something other than a string
_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def yaml_text(value: dict) -> str:
    """Block-style YAML of a graph's description (dicts, lists, strings,
    numbers, None), lists of scalars on one line, strings quoted as JSON
    where plain would not read back as the same string."""
    out: list[str] = []
    _mapping(value, "", out)
    return "\n".join(out) + "\n"


def _mapping(value: dict, indent: str, out: list[str], first: str | None = None) -> None:
    if not value:
        out.append(f"{first or indent}{{}}")
        return
    for i, (key, item) in enumerate(value.items()):
        lead = first if first is not None and i == 0 else indent
        _entry(f"{lead}{_scalar(key)}:", item, indent + "  ", out)


def _entry(head: str, item, indent: str, out: list[str]) -> None:
    if isinstance(item, dict) and item:
        out.append(head)
        _mapping(item, indent, out)
    elif isinstance(item, list) and any(isinstance(v, (dict, list)) for v in item):
        out.append(head)
        for v in item:
            if isinstance(v, dict):
                _mapping(v, indent + "  ", out, first=indent + "- ")
            else:
                _entry(indent + "-", v, indent + "  ", out)
    else:
        out.append(f"{head} {_flow(item)}")


def _flow(item) -> str:
    if isinstance(item, list):
        return "[" + ", ".join(_flow(v) for v in item) + "]"
    return "{}" if isinstance(item, dict) else _scalar(item)


def _scalar(item) -> str:
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if item != item:
            return ".nan"
        if item in (float("inf"), float("-inf")):
            return ".inf" if item > 0 else "-.inf"
        text = repr(item)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text  # 1e-05 reads back as a float
    text = str(item)
    if _PLAIN.match(text) and text.lower() not in _WORDS and not text.startswith("//"):
        return text
    return json.dumps(text, ensure_ascii=not text.isprintable())  # YAML takes no unprintable character unescaped
