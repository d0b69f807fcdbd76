"""The format-blind tree: directories, files, symlinks.

A file's content is a list of pieces: byte ranges of sources (`Extent`) or
short synthesized byte strings (an NPY header, a YAML rendering). Readers of
every format build these; the FUSE layer serves them and knows nothing else.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Protocol, Union

from ..sources.base import Source

if TYPE_CHECKING:
    from .tensors import Tensor


@dataclass(frozen=True, slots=True)
class Extent:
    """`length` bytes of `source` starting at `offset`."""

    source: Source
    offset: int
    length: int

    def read(self, offset: int, length: int) -> bytes:
        return self.source.read_exact(self.offset + offset, length)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        self.source.readv(self.offset + offset, buffers)

    def prefetch(self, offset: int, length: int) -> None:
        self.source.prefetch(self.offset + offset, min(length, self.length - offset))


#: A piece is bytes, or anything with `source`, `length` and `read(offset, length)`:
#: an `Extent`, or a `gather.Gather` for a strided view.
Piece = Union[Extent, bytes, "Gather"]  # noqa: F821


class Content:
    """The bytes of a file: pieces laid end to end."""

    __slots__ = ("pieces", "starts", "size", "_slow")

    #: bytes written through the mount (a writable mount's content says True)
    edited = False

    def __init__(self, pieces: list[Piece]):
        self.pieces = [p for p in pieces if len_of(p)]
        self.starts = []
        pos = 0
        for p in self.pieces:
            self.starts.append(pos)
            pos += len_of(p)
        self.size = pos
        self._slow: bool | None = None

    @property
    def slow(self) -> bool:
        """Asked on every read: found once (a file of many pieces has many to ask)."""
        if self._slow is None:
            self._slow = any(not isinstance(p, bytes) and p.source.slow for p in self.pieces)
        return self._slow

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        i = bisect.bisect_right(self.starts, offset) - 1
        out = []
        pos = offset
        while pos < end:
            piece, start = self.pieces[i], self.starts[i]
            take = min(end, start + len_of(piece)) - pos
            if isinstance(piece, bytes):
                out.append(piece[pos - start : pos - start + take])
            else:
                out.append(piece.read(pos - start, take))
            pos += take
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def reply(self, offset: int, length: int) -> bytes | bytearray:
        """`read`'s bytes for a FUSE read's answer: a read across pieces (an
        NPY header and the first bytes after it, read whole for every file
        smaller than a request) is one buffer that the bytes pieces are
        copied into and the rest read into (`readv`: `preadv` for a file),
        not each piece read into bytes of its own and then all joined."""
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        i = bisect.bisect_right(self.starts, offset) - 1
        if end <= self.starts[i] + len_of(self.pieces[i]):
            return self.read(offset, length)  # within one piece: nothing to join
        buffer = bytearray(end - offset)
        into, pos = memoryview(buffer), offset
        while pos < end:
            piece, start = self.pieces[i], self.starts[i]
            take = min(end, start + len_of(piece)) - pos
            part = into[pos - offset : pos - offset + take]
            if isinstance(piece, bytes):
                part[:] = piece[pos - start : pos - start + take]
            elif hasattr(piece, "readv"):
                piece.readv(pos - start, [part])
            else:
                part[:] = piece.read(pos - start, take)
            pos += take
            i += 1
        return buffer

    def prefetch(self, offset: int, length: int) -> None:
        """Start fetching the bytes [offset, offset + length) where a source
        fetches (a remote one); elsewhere nothing."""
        end = min(self.size, offset + length)
        if offset >= end:
            return
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        while i < len(self.pieces) and self.starts[i] < end:
            piece, start = self.pieces[i], self.starts[i]
            ahead = getattr(piece, "prefetch", None)
            if ahead is not None:
                first = max(offset, start) - start
                ahead(first, min(end, start + len_of(piece)) - start - first)
            i += 1


def len_of(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.length


@dataclass(frozen=True)
class Access:
    """Who may read a node: the owner, group and read bits of the file (or
    files) of the source its bytes come from."""

    uid: int
    gid: int
    read_bits: int  # e.g. 0o444

    @classmethod
    def of(cls, st) -> Access:
        return _interned(cls(st.st_uid, st.st_gid, st.st_mode & 0o444))

    @classmethod
    def of_all(cls, stats) -> Access:
        """What every one of these files allows, never more: their owner and
        group where they share them; where they do not, only what all of them
        let anybody read."""
        return cls.common({cls.of(st) for st in stats})

    @classmethod
    def common(cls, accesses: set[Access]) -> Access:
        """What every one of these accesses allows, never more (`of_all`)."""
        if len(accesses) == 1:
            return accesses.pop()
        first = min(accesses, key=lambda a: (a.uid, a.gid, a.read_bits))
        if len({a.uid for a in accesses}) == 1 and len({a.gid for a in accesses}) == 1:
            bits = 0o444
            for a in accesses:
                bits &= a.read_bits
            return _interned(cls(first.uid, first.gid, bits))
        others = all(a.read_bits & 0o004 for a in accesses)
        return _interned(cls(first.uid, first.gid, 0o444 if others else 0))


_ACCESSES: dict[Access, Access] = {}


def _interned(access: Access) -> Access:
    return _ACCESSES.setdefault(access, access)


# Nodes have slots: a mount of 100,000 tensors holds 200,000 of them.
@dataclass(eq=False, slots=True)
class Node:
    #: modification time in ns; None means the source's
    mtime_ns: int | None = field(default=None, kw_only=True)
    #: extended attributes shown by getfattr (names without the `user.` prefix)
    xattrs: dict[str, str] = field(default_factory=dict, kw_only=True)
    #: true for parts of a writable mount that stay read-only (and all below them):
    #: the `.ckptfs/` view, checkpoints nested in an archive
    read_only: bool = field(default=False, kw_only=True)
    #: who may read it (and all below it that say nothing else), where that is
    #: not the source's: a file of a directory source with its own owner and mode
    access: Access | None = field(default=None, kw_only=True)


@dataclass(eq=False, slots=True)
class File(Node):
    content: Content
    #: true once a rename took it (or a folder above it) from where the
    #: source has it: what lies at its path is no longer the source's
    #: bytes there, whatever its own bytes (pack/changes.py `is_edited`)
    moved: bool = field(default=False, kw_only=True)
    #: the tensor a `.npy` file of the source shows (`tensors.TensorFile`
    #: has one): what writers take its key and dtype from; None for any
    #: other file, and for a file made through the mount
    tensor: ClassVar[Tensor | None] = None

    @property
    def edited(self) -> bool:
        """Whether its path no longer holds the source's bytes there: its
        bytes were written through the mount, or a rename moved it."""
        return self.moved or getattr(self.content, "edited", False)

    @property
    def computed(self) -> bool:
        """Whether it shows values computed from the checkpoint's tensors (a
        quantized weight dequantized): a view, which no repack writes."""
        return self.tensor is not None and self.tensor.computed


@dataclass(eq=False, slots=True)
class Symlink(Node):
    target: str


class Writer(Protocol):
    """A format's writer as the tree holds it (formats/base.py implements
    it): the edit session and an outer writer call it, the tree never does."""

    adds_tensors: bool
    directory: bool
    renames: bool

    def check(self, path: str, node: File) -> None: ...

    def check_move(self, moved: list) -> None: ...


class PathConflict(Exception):
    """A path needs a directory where a file is, or the reverse."""


@dataclass(eq=False, slots=True)
class Dir(Node):
    children: dict[str, Node] = field(default_factory=dict)
    #: for a checkpoint shown expanded inside another (a `.nemo`'s
    #: `model_weights.ckpt/`): the writer that rebuilds its bytes from edits
    writer: Writer | None = field(default=None, kw_only=True)

    def add(self, name: str, node: Node, *, replace: bool = False) -> Node:
        if name in self.children and not replace:
            raise PathConflict(name)
        self.children[name] = node
        return node

    def subdir(self, parts: list[str]) -> Dir:
        """The directory at `parts` below this one, created where missing."""
        here = self
        for i, part in enumerate(parts):
            node = here.children.get(part)
            if node is None:
                node = here.children[part] = Dir()
            elif not isinstance(node, Dir):
                raise PathConflict("/".join(parts[: i + 1]))
            here = node
        return here

    def subdir_count(self) -> int:
        """How many directories this one holds (for its link count)."""
        return sum(isinstance(c, Dir) for c in self.children.values())

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """Every node below this one, as (path, node), in sorted order."""
        for name in sorted(self.children):
            node = self.children[name]
            path = f"{prefix}{name}"
            yield path, node
            if isinstance(node, Dir):
                yield from node.walk(path + "/")


class LazyDir(Dir):
    """A directory whose entries are made when first used, by `fill(self)`.

    For folders of many entries that few users open (the chunk files of
    every DCP shard): mounting then does not pay for them. `subdirs` is how
    many directories `fill` will add, so that `stat` needs no fill.
    """

    __slots__ = ("_fill", "_subdirs", "_children")

    def __init__(self, fill: Callable[[Dir], None], subdirs: int, **kwargs):
        self._fill: Callable[[Dir], None] | None = None
        super().__init__(**kwargs)
        self._fill, self._subdirs = fill, subdirs

    @property  # type: ignore[override]
    def children(self) -> dict[str, Node]:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)
        return self._children

    @children.setter
    def children(self, value: dict[str, Node]) -> None:
        self._children = value

    @property
    def filled(self) -> bool:
        return self._fill is None

    def subdir_count(self) -> int:
        return self._subdirs if self._fill is not None else super().subdir_count()

    def unmade_totals(self) -> tuple[int, int] | None:
        """(bytes of its files, its entries), all the way down, where they
        can be counted without making them (`statfs`); None here."""
        return None


def unmade_view(node: Node) -> bool:
    """Whether `node` is a read-only folder whose entries are not made yet
    (a shard's chunks, the export view): what an edit moves or changes lies
    elsewhere, so a walk for it leaves them unmade. A folder of tensors
    made when used (`table.TableDir`) is entered: its entries are the
    checkpoint's, and a rename moves them."""
    return isinstance(node, LazyDir) and not node.filled and node.read_only
