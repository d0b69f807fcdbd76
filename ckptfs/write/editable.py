"""The tree of a writable mount: every change by path, journaled in the
overlay before it is made, so that replaying the journal on the source's
tree rebuilds the edited tree (`ckptfs recover`, `ckptfs mount --resume`).
Edited files' attributes say what they are now, not where they were."""

from __future__ import annotations

import os
import time
from typing import Callable

from ..errors import CkptfsError
from ..tree import npy, xattrs
from ..tree.nodes import Content, Dir, File, Node, unmade_view
from ..tree.tensors import dtype_before, shape_text
from .overlay import EditedContent, Overlay


def _describe_edited(file: File) -> None:
    for key in xattrs.LOCATION:
        file.xattrs.pop(key, None)
    file.xattrs[xattrs.EDITED] = f"its bytes are in the overlay (data/{file.content.number}) until the repack"


def describe_tensor(file: File) -> None:
    """An edited `.npy` file's dtype and shape attributes, from its header
    as it is now (unchanged while it is not valid NPY)."""
    try:
        descr, shape, _ = npy.parse_header(file.content.read(0, 65536), "")
    except ValueError:
        return
    dtype = npy.dtype_of(descr, dtype_before(file))
    if dtype is not None:
        file.xattrs[xattrs.DTYPE] = dtype.name
        file.xattrs[xattrs.SHAPE] = shape_text(shape)


def _moved(node: Node) -> None:
    """A file or folder a rename moved: every file in it stands at a path
    the source holds other bytes at (or none), and every name below it now
    comes from its path, not from the key it had at mount."""
    pending = [node]
    while pending:
        here = pending.pop()
        here.xattrs.pop(xattrs.NAME, None)
        if isinstance(here, File):
            here.moved = True
        elif isinstance(here, Dir) and not unmade_view(here):
            pending.extend(here.children.values())


class EditableTree:
    """The tree of a writable mount: changes by path, each journaled first.

    The same methods replay a journal (`ckptfs recover`), so the tree a
    recovery rebuilds is the one the mount had.
    """

    def __init__(self, root: Dir, overlay: Overlay, journal: bool = True):
        self.root, self.overlay, self.journal = root, overlay, journal
        self.contents: dict[int, EditedContent] = {}
        self.generation = 0  # counts changes, for views that follow them
        #: called once, before the tree first changes: what needs the tree as
        #: it was at mount takes it then, not at mount (a snapshot of 200,000 paths)
        self.before_first_change: list[Callable[[], object]] = []

    def _log(self, **fields) -> None:
        """Every change comes here before it touches the tree."""
        while self.before_first_change:
            self.before_first_change.pop(0)()
        self.generation += 1
        if self.journal:
            self.overlay.record(**fields)

    def node(self, path: str) -> Node:
        here: Node = self.root
        for part in path.split("/") if path else []:
            if not isinstance(here, Dir) or part not in here.children:
                raise FileNotFoundError(path)
            here = here.children[part]
        return here

    def _parent(self, path: str) -> tuple[Dir, str]:
        head, _, name = path.rpartition("/")
        parent = self.node(head)
        if not isinstance(parent, Dir):
            raise NotADirectoryError(head)
        return parent, name

    def create(self, path: str, number: int | None = None) -> File:
        parent, name = self._parent(path)
        if isinstance(parent.children.get(name), Dir):
            raise IsADirectoryError(path)
        content = self._content(None, number)
        file = File(content, mtime_ns=time.time_ns())
        self._log(op="create", path=path, file=content.number)  # journaled, then done: a failed write changes nothing
        parent.children[name] = file
        _describe_edited(file)
        return file

    def edit(self, path: str, number: int | None = None) -> File:
        """Make a file of the source editable (its content copied up on write)."""
        file = self.node(path)
        if not isinstance(file, File):
            raise IsADirectoryError(path)
        if not isinstance(file.content, EditedContent):
            content = self._content(file.content, number)
            self._log(op="edit", path=path, file=content.number)
            file.content = content
            _describe_edited(file)
        return file

    def _content(self, base: Content | None, number: int | None) -> EditedContent:
        if number is None:
            content = self.overlay.new_content(base)
        else:  # replaying: the data file exists
            content = EditedContent(self.overlay.data_file(number, create=False), number, base)
        self.contents[content.number] = content
        return content

    def write(self, content: EditedContent, offset: int, data: bytes) -> int:
        blocks = content.blocks_to_copy(offset, len(data))
        if blocks:
            content.copy_up(blocks)
            self._log(op="dirty", file=content.number, blocks=blocks)
        self.generation += 1
        written = os.pwrite(content.fd, data, offset)
        content.written_crc.wrote(offset, memoryview(data)[:written])
        return written

    def truncate(self, content: EditedContent, size: int) -> None:
        if not content.whole and size < content.base_size:
            content.copy_up(content.blocks_to_copy(0, size))
            content.whole = True
            self._log(op="whole", file=content.number)
        self.generation += 1
        os.ftruncate(content.fd, size)
        content.written_crc.truncated(size)

    def holds(self, content: EditedContent) -> bool:
        """Whether an edited content is this tree's (one of before a commit is
        not: its edits were written)."""
        return self.contents.get(content.number) is content

    def describe(self, path: str, file: File) -> None:
        """An edited file that passed its format's check: a `.npy` file's
        dtype and shape attributes follow its header."""
        if path.endswith(".npy"):
            describe_tensor(file)

    def fsync(self, file: File | None = None) -> None:
        """The journal to disk, and the bytes written to `file` if it is edited."""
        self.overlay.fsync(file.content if file is not None and file.content.edited else None)

    def room(self) -> int:
        """Bytes free where the edits are kept."""
        st = os.statvfs(os.path.dirname(self.overlay.path))
        return st.f_bavail * st.f_frsize

    def mkdir(self, path: str) -> Dir:
        parent, name = self._parent(path)
        if name in parent.children:
            raise FileExistsError(path)
        self._log(op="mkdir", path=path)
        folder = parent.children[name] = Dir(mtime_ns=time.time_ns())
        return folder

    def remove(self, path: str) -> None:
        parent, name = self._parent(path)
        node = parent.children.get(name)
        if node is None:
            raise FileNotFoundError(path)
        if isinstance(node, Dir) and node.children:
            raise OSError(39, "Directory not empty", path)  # ENOTEMPTY
        self._log(op="remove", path=path)
        del parent.children[name]

    def rename(self, old: str, new: str) -> None:
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        node = old_parent.children.get(old_name)
        if node is None:
            raise FileNotFoundError(old)
        target = new_parent.children.get(new_name)
        if target is node:
            return  # rename(2) of a name onto itself (or a hard link of it): nothing happens
        if isinstance(node, Dir) and (new + "/").startswith(old + "/"):
            raise OSError(22, "Invalid argument", new)  # EINVAL: a folder into itself
        if isinstance(target, Dir) and (not isinstance(node, Dir) or target.children):
            raise IsADirectoryError(new) if not isinstance(node, Dir) else OSError(39, "Directory not empty", new)
        if target is not None and isinstance(node, Dir) and not isinstance(target, Dir):
            raise NotADirectoryError(new)
        self._log(op="rename", old=old, new=new)
        del old_parent.children[old_name]
        new_parent.children[new_name] = node
        _moved(node)

    def exchange(self, a: str, b: str) -> None:
        """renameat2's RENAME_EXCHANGE: `a` and `b` (files or folders) swap places."""
        a_parent, a_name = self._parent(a)
        b_parent, b_name = self._parent(b)
        first, second = a_parent.children.get(a_name), b_parent.children.get(b_name)
        if first is None or second is None:
            raise FileNotFoundError(a if first is None else b)
        if first is second:
            return
        if (b + "/").startswith(a + "/") or (a + "/").startswith(b + "/"):
            raise OSError(22, "Invalid argument", b)  # EINVAL: a folder with what it holds
        self._log(op="exchange", old=a, new=b)
        a_parent.children[a_name], b_parent.children[b_name] = second, first
        _moved(first)
        _moved(second)

    def replay(self, records: list[dict]) -> None:
        """Apply the journal of an earlier mount to the source's tree."""
        for r in records:
            op = r["op"]
            if op == "create":
                self.create(r["path"], r["file"])
            elif op == "edit":
                self.edit(r["path"], r["file"])
            elif op == "dirty":
                self.contents[r["file"]].dirty.update(r["blocks"])
            elif op == "whole":
                self.contents[r["file"]].whole = True
            elif op == "mkdir":
                self.mkdir(r["path"])
            elif op == "remove":
                self.remove(r["path"])
            elif op == "rename":
                self.rename(r["old"], r["new"])
            elif op == "exchange":
                self.exchange(r["old"], r["new"])
            else:
                raise CkptfsError(f"{self.overlay.path}: unknown journal record {r!r:.80}")
