"""What `ckptfs diff` compares besides tensors: every other file of the two
trees a mount shows, and the values ckptfs renders as YAML.

The trees are the main trees (`.ckptfs/` is a view of them). A file is
compared unless its bytes are compared already: a tensor's `.npy` (compared
as a tensor), a read-only view of tensors held elsewhere (a Hugging Face
shard's folder, a distributed checkpoint's chunk files, a GGUF tensor
dequantized), or a file holding exactly a tensor's stored bytes (a GGUF
`raw.bin` of a tensor ckptfs reads). A YAML file ckptfs made from values (a
pickle's non-tensor values, a safetensors `__metadata__`, GGUF metadata, a
distributed checkpoint's items) is compared value by value: each value that
differs by its path (the file's path without `.yaml`, then its keys and list
indices) and its YAML text on both sides. Any other file is compared by its
bytes, read a block at a time: a text file of up to `TEXT_LIMIT` bytes as a
unified diff, any other by size and SHA-256. A folder only one side has is
named once, not file by file.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import yaml

from .tree import xattrs
from .tree.checkpoint import VIEW_NAME
from .tree.checkpoint import Checkpoint as Parsed
from .tree.nodes import Dir, Extent, File, Node, Symlink
from .tree.yamltext import Dumper

#: bytes read at a time
CHUNK = 1 << 20
#: the largest file shown as a unified diff (larger ones by size and hash)
TEXT_LIMIT = 1 << 20
#: the largest rendered YAML compared value by value (larger ones as files)
VALUES_LIMIT = 4 << 20
#: xattrs that mark a tensor's file
TENSOR_XATTRS = (xattrs.DTYPE, xattrs.DEQUANTIZED_FROM)

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Side:
    """One checkpoint's files to compare: path -> node, and its folders."""

    entries: dict[str, Node]
    folders: set[str]


def side(parsed: Parsed) -> Side:
    tensor_paths = {placed.path for placed in parsed.tensors}
    tensor_bytes = {id(placed.tensor.data) for placed in parsed.tensors if isinstance(placed.tensor.data, Extent)}
    out = Side({}, set())

    def walk(folder: Dir, prefix: str, read_only: bool) -> None:
        for name in sorted(folder.children):
            node, path = folder.children[name], prefix + name
            if not prefix and name == VIEW_NAME:
                continue
            if isinstance(node, Dir):
                out.folders.add(path)
                walk(node, path + "/", read_only or node.read_only)
            elif isinstance(node, Symlink) or not (
                    path in tensor_paths
                    or (read_only or node.read_only) and any(x in node.xattrs for x in TENSOR_XATTRS)
                    or len(node.content.pieces) == 1 and id(node.content.pieces[0]) in tensor_bytes):
                out.entries[path] = node

    walk(parsed.root, "", parsed.root.read_only)
    return out


def compare_files(a: Parsed, b: Parsed, selected: Callable[[str], bool]) -> tuple[list[dict], dict]:
    """(values that differ, files only in A, only in B and changed), as
    `ckptfs diff --json` gives them (docs/cli.md)."""
    left, right = side(a), side(b)
    values: list[dict] = []
    files: dict = {"removed": _only(left, right, selected), "added": _only(right, left, selected), "changed": []}
    for path in sorted(left.entries.keys() & right.entries.keys()):
        x, y = left.entries[path], right.entries[path]
        if _rendered(path, x) and _rendered(path, y):
            found = _value_changes(path, x, y)
            if found is not None:
                values += [v for v in found if selected(v["path"])]
                continue
        if selected(path):
            change = _file_change(path, x, y)
            if change is not None:
                files["changed"].append(change)
    return values, files


def _only(here: Side, there: Side, selected: Callable[[str], bool]) -> list[str]:
    """Paths of `here` that `there` lacks; a folder `there` lacks, once, as `folder/`."""
    out: list[str] = []
    for path in sorted(here.entries.keys() - there.entries.keys()):
        parts = path.split("/")
        missing = next((i for i in range(1, len(parts)) if "/".join(parts[:i]) not in there.folders), None)
        shown = path if missing is None else "/".join(parts[:missing]) + "/"
        if (not out or out[-1] != shown) and selected(shown.rstrip("/")):
            out.append(shown)
    return out


def _rendered(path: str, node: Node) -> bool:
    """A YAML file ckptfs wrote from values, held in memory, not read from the source."""
    return (isinstance(node, File) and path.endswith(".yaml") and node.content.size <= VALUES_LIMIT
            and all(isinstance(piece, bytes) for piece in node.content.pieces))


# -- values
def _value_changes(path: str, x: File, y: File) -> list[dict] | None:
    """The values that differ between two rendered YAML files; None when
    either does not parse (then they are compared as files)."""
    a, b = _whole(x), _whole(y)
    if a == b:
        return []
    try:
        roots = yaml.compose(a, Loader=Loader), yaml.compose(b, Loader=Loader)
    except yaml.YAMLError:
        return None
    return [{"path": where, "a": _text(m), "b": _text(n)}
            for where, m, n in _walk(*roots, path.removesuffix(".yaml"), set())]


def _walk(x: yaml.Node | None, y: yaml.Node | None, where: str, seen: set) -> Iterator[tuple]:
    """(path, node in A, node in B) of every value that differs, None for a
    side that lacks it; a pair of nodes met again (an alias) is not walked twice."""
    if x is None or y is None:
        if x is not y:
            yield where, x, y
        return
    if (id(x), id(y)) in seen:
        return
    seen.add((id(x), id(y)))
    if type(x) is not type(y) or x.tag != y.tag:
        yield where, x, y
    elif isinstance(x, yaml.MappingNode):
        xs, ys = ({_key(k): v for k, v in node.value} for node in (x, y))
        for key in list(xs) + [k for k in ys if k not in xs]:
            yield from _walk(xs.get(key), ys.get(key), f"{where}/{key}", seen)
    elif isinstance(x, yaml.SequenceNode):
        for i in range(max(len(x.value), len(y.value))):
            yield from _walk(*(n.value[i] if i < len(n.value) else None for n in (x, y)), f"{where}/{i}", seen)
    elif x.value != y.value:
        yield where, x, y


def _key(node: yaml.Node) -> str:
    """A key as YAML writes it: `lr`, `0`, and `'0'` for the string (quoted
    as the rendering quoted it), so that no two keys read alike."""
    return node.value if isinstance(node, yaml.ScalarNode) and node.style is None else _text(node)


def _text(node: yaml.Node | None) -> str | None:
    """A value as YAML writes it on one line (`0.1`, `[0.9, 0.999]`, `!u32 1`)."""
    if node is None:
        return None
    _flow(node)
    text = yaml.serialize(node, Dumper=Dumper, width=float("inf"), allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").removesuffix("\n")


def _flow(node: yaml.Node) -> None:
    """Mark every value below `node` to be written on one line."""
    todo, done = [node], set()
    while todo:
        node = todo.pop()
        if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            node.style = '"'
        elif isinstance(node, yaml.CollectionNode) and id(node) not in done:
            done.add(id(node))
            node.flow_style = True
            todo += [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value


# -- files
def _file_change(path: str, x: Node, y: Node) -> dict | None:
    if isinstance(x, Symlink) or isinstance(y, Symlink):
        a, b = _describe_link(x), _describe_link(y)
        return None if a == b else {"path": path, "a": a, "b": b}
    if max(x.content.size, y.content.size) > TEXT_LIMIT:
        return _large_change(path, x.content, y.content)
    (a, a_head), (b, b_head) = _digest(x), _digest(y)
    if a == b:
        return None
    change = {"path": path, "a": a, "b": b}
    texts = [_decoded(head) for head in (a_head, b_head)]
    if None not in texts:
        lines = difflib.unified_diff(*(t.splitlines(True) for t in texts), f"A/{path}", f"B/{path}")
        change["diff"] = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                                 for line in lines)
    return change


def _large_change(path: str, a, b) -> dict | None:
    """How two contents of which one passes TEXT_LIMIT differ: by size
    without reading a byte (a multi-GB `pytorch_model.bin` beside the
    safetensors weights, on a remote source too), else by the first block
    that differs, read a block at a time from both."""
    change = {"path": path, "a": {"size": a.size}, "b": {"size": b.size}}
    if a.size != b.size:
        return change
    for offset in range(0, a.size, CHUNK):
        length = min(CHUNK, a.size - offset)
        x, y = a.read(offset, length), b.read(offset, length)
        if x != y:
            change["differs_at"] = offset + next(i for i, (p, q) in enumerate(zip(x, y)) if p != q)
            return change
    return None


def _describe_link(node: Node) -> dict:
    """A link's target; a file's size, and its digest if it is small."""
    if isinstance(node, Symlink):
        return {"link": node.target}
    return {"size": node.content.size} if node.content.size > TEXT_LIMIT else _digest(node)[0]


def _digest(node: File) -> tuple[dict, bytes | None]:
    """({size, sha256}, its bytes) of a file of at most TEXT_LIMIT bytes."""
    data = node.content.read(0, node.content.size)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, data


def _whole(node: File) -> bytes:
    return node.content.read(0, node.content.size)


def _decoded(data: bytes | None) -> str | None:
    """The text of a file that holds text (UTF-8, no NUL), else None."""
    if data is None or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
