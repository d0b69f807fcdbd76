"""A checkpoint's tensors as a table, and the tree made from it when used.

A mount of a million tensors need not make a million folders, files and
records before it serves: `TensorTable` holds the tensors as columns (names
sorted, and per name a dtype, a shape, an offset and a length in packed
arrays), and `TableDir` is a folder that is a range of those sorted names,
which makes its entries (folders that are narrower ranges, `TensorFile`s)
when first listed or looked up. The tree shown is `tensors.tensor_tree`'s
for the same tensors (names split at dots, docs/layout.md): all names with
one prefix lie next to each other once sorted, so a folder's subfolder is
found by bisection, not by a scan.

`records()`, `by_name()` and `placed()` give what readers of a checkpoint
use (its `Tensor`s, by name, and where each lies in the tree); a record is
made once, when first asked for, and is the same object afterwards (a
folder of shards tells its tensors apart by identity).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate

from . import names as naming
from . import npy
from .dtypes import DType
from .nodes import Dir, Extent, LazyDir, Node
from .tensors import PlacedTensor, Tensor, TensorFile


class TensorTable:
    """Tensors of one source as columns in name order: `names`, and for each
    an index into `dtypes` and into `shapes` (both lists of the distinct
    values), its data's offset in `source` and its length."""

    __slots__ = ("source", "names", "dtypes", "shapes", "dtype_of", "shape_of", "offsets", "lengths",
                 "_records", "_parts", "_leaves")

    def __init__(self, source, rows: list[tuple[str, int, int, int, int]], dtypes: list[DType],
                 shapes: list[tuple[int, ...]], base: int = 0):
        """`rows`: (name, dtype index, shape index, start, end), names unique,
        in any order; the data lies at [base + start, base + end) of `source`."""
        rows.sort()
        self.source, self.dtypes, self.shapes = source, dtypes, shapes
        self.names = NameColumn([r[0] for r in rows])
        self.dtype_of = array("B", [r[1] for r in rows])
        self.shape_of = array("I", [r[2] for r in rows])
        self.offsets = array("q", [base + r[3] for r in rows])
        self.lengths = array("q", [r[4] - r[3] for r in rows])
        self._records: list[Tensor | None] = [None] * len(rows)
        #: escaped names of folders and of files, by name part: parts repeat
        #: (model, layers, 0, weight...), and so share one string each
        self._parts: dict[str, str] = {}
        self._leaves: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.names)

    def record(self, i: int) -> Tensor:
        """The `Tensor` of row `i`, made once."""
        tensor = self._records[i]
        if tensor is None:
            tensor = self._records[i] = Tensor(self.names[i], self.dtypes[self.dtype_of[i]],
                                               self.shapes[self.shape_of[i]],
                                               Extent(self.source, self.offsets[i], self.lengths[i]))
        return tensor

    def find(self, name: str) -> int:
        """The row of `name`, or -1."""
        i = bisect.bisect_left(self.names, name)
        return i if i < len(self.names) and self.names[i] == name else -1

    def records(self) -> list[Tensor]:
        """Every record, in the order of their bytes in the source."""
        order = sorted(range(len(self.names)), key=lambda i: (self.offsets[i], self.lengths[i]))
        return [self.record(i) for i in order]

    def by_name(self) -> TableTensors:
        return TableTensors(self)

    def placed(self) -> PlacedTensors:
        return PlacedTensors(self)

    def tree(self) -> TableDir:
        """The root folder of the tensors' files (`tensor_tree`'s layout)."""
        return TableDir(self, 0, len(self.names), 0)

    def folder_name(self, part: str) -> str:
        escaped = self._parts.get(part)
        if escaped is None:
            escaped = self._parts[part] = naming.escape(part)
        return escaped

    def file_name(self, leaf: str) -> str:
        escaped = self._leaves.get(leaf)
        if escaped is None:
            escaped = self._leaves[leaf] = naming.escape(leaf, ".npy")
        return escaped

    def path(self, i: int) -> str:
        """The path of row `i`'s file in the tree."""
        *folders, leaf = naming.split_dotted(self.names[i])
        return "/".join([*map(self.folder_name, folders), self.file_name(leaf)])


class NameColumn(Sequence):
    """Names as one string, each followed by a NUL, and where each ends: a
    name is a string of its own only while it is used. (A million names as
    strings hold 110 MB; the strings a JSON parser made also pin its freed
    objects' memory, which the process then keeps: kept in one piece, all
    of it is given back.)"""

    __slots__ = ("text", "ends", "_split")

    def __init__(self, names: list[str]):
        self.text = "".join(name + "\0" for name in names)
        self.ends = array("q", accumulate(len(name) + 1 for name in names))  # each just past its NUL
        #: whether the NULs are only the separators: then iterating is one `split` (the
        #: quantized-weight search reads every name six times at mount)
        self._split = self.text.count("\0") == len(names) > 0

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        end = self.ends[i]  # (IndexError past the end)
        i %= len(self.ends)
        return self.text[self.ends[i - 1] if i else 0:end - 1]

    def __iter__(self) -> Iterator[str]:
        if self._split:
            names = self.text.split("\0")
            names.pop()  # (the empty string after the last NUL)
            return iter(names)
        return (self[i] for i in range(len(self)))


class TableDir(LazyDir):
    """A folder of a `TensorTable`: the rows [lo, hi), whose names all
    start with the same `start` characters (its path, dotted); its entries
    are made when first used and kept (the FUSE layer numbers them)."""

    __slots__ = ("_table", "_lo", "_hi", "_start", "_own_xattrs")

    def __init__(self, table: TensorTable, lo: int, hi: int, start: int):  # (no Dir.__init__: a folder a tensor)
        self.mtime_ns, self.read_only, self.access, self.writer = None, False, None, None
        self._fill, self._subdirs, self._children = _fill_from_table, 0, None
        self._table, self._lo, self._hi, self._start, self._own_xattrs = table, lo, hi, start, None

    @property  # type: ignore[override]
    def xattrs(self) -> dict[str, str]:
        """Made when first asked for: most folders have none."""
        if self._own_xattrs is None:
            self._own_xattrs = {}
        return self._own_xattrs

    @xattrs.setter
    def xattrs(self, value: dict[str, str]) -> None:
        self._own_xattrs = value

    def subdir_count(self) -> int:
        return Dir.subdir_count(self)

    def unmade_totals(self) -> tuple[int, int] | None:
        """Counted from the table (`statfs` of a mount of a million
        tensors); None once made: its entries are then counted as nodes."""
        if self.filled:
            return None
        table, names, start = self._table, self._table.names, self._start
        folders: set[str] = set()
        size = 0
        headers: dict[tuple[int, int, int], int] = {}
        for i in range(self._lo, self._hi):
            name = names[i]
            dot = name.find(".", start)
            while dot >= 0:  # the folders `_fill_from_table` makes on the way down
                folders.add(name[:dot])
                dot = name.find(".", dot + 1)
            kind = (table.dtype_of[i], table.shape_of[i], table.lengths[i])
            header = headers.get(kind)
            if header is None:
                layout = npy.served_layout(table.dtypes[kind[0]], table.shapes[kind[1]], kind[2])
                header = headers[kind] = len(npy.header(*layout))
            size += header + kind[2]
        return size, self._hi - self._lo + len(folders)


def _fill_from_table(folder: TableDir) -> None:
    """A folder's entries: a `TensorFile` for each name with no dot after the
    folder's prefix, a `TableDir` for each part before the next dot."""
    table, names, start, hi = folder._table, folder._table.names, folder._start, folder._hi
    children: dict[str, Node] = {}
    i = folder._lo
    while i < hi:
        name = names[i]
        dot = name.find(".", start)
        if dot < 0:
            children[table.file_name(name[start:])] = TensorFile(table.record(i))
            i += 1
        else:  # every name with this prefix and a dot: they sort before prefix + "/" ("." + 1)
            end = bisect.bisect_left(names, name[:dot] + "/", i + 1, hi)
            children[table.folder_name(name[start:dot])] = TableDir(table, i, end, dot + 1)
            i = end
    folder._children = children
    folder._table, folder._lo, folder._hi = None, 0, 0  # (a million folders' ints: 50 MB)


class TableTensors(Mapping):
    """A table's records by name, made when asked for (`Writer`, the
    quantized-weight search and `info` read a few, or all)."""

    __slots__ = ("table",)

    def __init__(self, table: TensorTable):
        self.table = table

    def __getitem__(self, name: str) -> Tensor:
        i = self.table.find(name) if isinstance(name, str) else -1
        if i < 0:
            raise KeyError(name)
        return self.table.record(i)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.table.find(name) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.names)

    def __len__(self) -> int:
        return len(self.table)


class PlacedTensors(Sequence):
    """`Checkpoint.tensors` of a table: each `PlacedTensor` made when read,
    in name order (a list of 100,000 of them and their paths is 20 MB a
    mount would hold for `info.yaml` alone)."""

    __slots__ = ("table",)

    def __init__(self, table: TensorTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return PlacedTensor(self.table.path(i), self.table.record(i))

    def __iter__(self) -> Iterator[PlacedTensor]:
        table = self.table
        for i in range(len(table)):
            yield PlacedTensor(table.path(i), table.record(i))
