"""`ckptfs ls` and `ckptfs cat`: the tree a mount shows, without FUSE, for
containers and scripts. The same nodes serve both, so names and bytes are
the mount's own, the `.ckptfs/` view included; nothing is written."""

from __future__ import annotations

import json
from typing import BinaryIO, Iterator

from ..errors import CkptfsError
from ..tree import xattrs
from ..tree.checkpoint import VIEW_NAME, Checkpoint
from ..tree.nodes import Dir, File, Node, Symlink
from ..tree.tensors import shape_text
from . import metaview

#: bytes `cat` reads at a time
CHUNK = 1 << 20


def tree(ckpt: Checkpoint) -> Dir:
    """The checkpoint's tree as a read-only mount shows it (the view is
    added once, as a mount adds it)."""
    if VIEW_NAME not in ckpt.root.children:
        ckpt.root.add(VIEW_NAME, metaview.build(ckpt))
    return ckpt.root


def find(ckpt: Checkpoint, path: str) -> Node:
    """The node at `path` (`a/b.npy`, `/a/b.npy`, `.` for the root); links
    are not followed: they lead out of the checkpoint."""
    node: Node = tree(ckpt)
    walked = []
    for part in (p for p in path.split("/") if p not in ("", ".")):
        if not isinstance(node, Dir) or part not in node.children:
            where = "/".join(walked + [part])
            raise CkptfsError(f"{ckpt.source_path}: {where}: no such file or folder in the checkpoint")
        node = node.children[part]
        walked.append(part)
    return node


def _kind(node: Node) -> str:
    return "dir" if isinstance(node, Dir) else "link" if isinstance(node, Symlink) else "file"


def entries(node: Node, path: str, recursive: bool) -> Iterator[tuple[str, Node]]:
    """(path, node) of what `ls` lists: a folder's entries in the mount's
    order (sorted names), everything below with `recursive`; a file itself."""
    if not isinstance(node, Dir):
        yield path, node
        return
    prefix = "" if path in ("", ".", "/") else path.strip("/") + "/"
    for name in sorted(node.children):
        child = node.children[name]
        yield prefix + name, child
        if recursive and isinstance(child, Dir):
            yield from entries(child, prefix + name, True)


def describe(path: str, node: Node) -> dict:
    """One entry of `ckptfs ls --json` (docs/cli.md)."""
    entry: dict = {"path": path, "type": _kind(node)}
    if isinstance(node, File):
        entry["size"] = node.content.size
        attributes = node.xattrs  # a tensor's file says what it is, as getfattr shows on a mount
        if xattrs.DTYPE in attributes:
            entry.update(name=attributes[xattrs.NAME], dtype=attributes[xattrs.DTYPE],
                         shape=json.loads(attributes[xattrs.SHAPE]))
    elif isinstance(node, Symlink):
        entry["target"] = node.target
    return entry


def long_line(path: str, node: Node) -> str:
    """`ls -l`: type, size, path, and what a tensor is."""
    entry = describe(path, node)
    kind = {"dir": "d", "file": "-", "link": "l"}[entry["type"]]
    what = ""
    if "dtype" in entry:
        what = f"  {entry['dtype']} {shape_text(tuple(entry['shape']))}"
    elif "target" in entry:
        what = f" -> {entry['target']}"
    return f"{kind} {entry.get('size', 0):>14,} {path}{what}"


def copy(ckpt: Checkpoint, path: str, node: Node, out: BinaryIO) -> None:
    """Write the bytes of the file at `path`, as the mount serves them."""
    if isinstance(node, Dir):
        raise CkptfsError(f"{ckpt.source_path}: {path}: a folder (ckptfs ls lists it)")
    if isinstance(node, Symlink):
        raise CkptfsError(f"{ckpt.source_path}: {path}: a link to {node.target}, which is outside the checkpoint")
    content = node.content
    for offset in range(0, content.size, CHUNK):
        out.write(content.read(offset, min(CHUNK, content.size - offset)))
