"""The object graph a `tf.train.Checkpoint` saves beside its variables
(the `_CHECKPOINTABLE_OBJECT_GRAPH` string, a `TrackableObjectGraph`:
tensorflow/core/protobuf/trackable_object_graph.proto), as plain values for
`object_graph.yaml`: every node, by its number, with the path from the root
by which `tf.train.Checkpoint` finds it, its children, the checkpoint keys
of its values, and its optimizer slots."""

from __future__ import annotations

from collections import deque

from ..errors import FormatError
from ..limits import LIMITS
from ..sources.base import BytesSource
from .protowire import LEN, VARINT, Field, fields, signed64

KEY = b"_CHECKPOINTABLE_OBJECT_GRAPH"


def object_graph(data: bytes, label: str) -> dict:
    """The graph, as `object_graph.yaml` shows it."""
    source = BytesSource(data, label)
    nodes = []
    for f in fields(source):
        if f.number == 1 and f.wire == LEN:
            if len(nodes) >= LIMITS.members:
                raise FormatError(label, f"more than {LIMITS.members} objects, the max_members "
                                         "(-o max_members raises the limit)")
            nodes.append(_node(source, f))
    _paths(nodes)
    return {"nodes": nodes}


def _node(source: BytesSource, node: Field) -> dict:
    out: dict = {"id": None, "path": None, "children": {}, "attributes": [], "slot_variables": []}
    for f in fields(source, node.offset, node.end):
        if f.wire != LEN:
            continue
        values = _message(source, f)
        text, number = (lambda n: _of(values, n, str, "")), (lambda n: _of(values, n, int, 0))
        if f.number == 1:
            out["children"][text(2)] = number(1)
        elif f.number == 2:
            out["attributes"].append({"name": text(1), "full_name": text(2), "checkpoint_key": text(3)})
        elif f.number == 3:
            out["slot_variables"].append({"variable": number(1), "slot": text(2), "slot_variable": number(3)})
        elif f.number == 4:
            out["registered_saver"] = {"name": text(1), "object_name": text(2)}
    return {k: v for k, v in out.items() if v != [] and v != {}}


def _of(values: dict[int, object], number: int, kind: type, default: object) -> object:
    """A field's value if it is of the kind the message says (a string, an
    integer), else the default, as protobuf reads a message that lacks it."""
    value = values.get(number, default)
    return value if isinstance(value, kind) else default


def _message(source: BytesSource, f: Field) -> dict[int, object]:
    """A small message's scalar fields: strings decoded, int32s with their sign."""
    values: dict[int, object] = {}
    for v in fields(source, f.offset, f.end):
        if v.wire == VARINT:
            values[v.number] = signed64(v.value)
        elif v.wire == LEN:
            values[v.number] = source.data[v.offset : v.end].decode("utf-8", "replace")
    return values


def _paths(nodes: list[dict]) -> None:
    """Number each node and give it the path from the root (node 0) by
    which its first parent, breadth first, reaches it."""
    for number, node in enumerate(nodes):
        node["id"] = number
    if not nodes:
        return
    nodes[0]["path"] = "/"
    pending = deque([0])
    while pending:
        parent = nodes[pending.popleft()]
        for name, child in parent.get("children", {}).items():
            if isinstance(child, int) and 0 <= child < len(nodes) and nodes[child]["path"] is None:
                nodes[child]["path"] = parent["path"].rstrip("/") + "/" + name
                pending.append(child)
