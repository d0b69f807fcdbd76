"""HDF5 files (`.h5`, `.weights.h5`, and the `model.weights.h5` inside a
`.keras` zip), read through h5py, an optional extra (`ckptfs[keras]`)
imported only when such a file is opened.

h5py opens the file through a file object over a ckptfs source (a slice
of a zip record too), so nothing is extracted. The mount walks it once,
bounded (objects, depth, what each dataset claims), and closes it: a
dataset stored contiguous and unfiltered is then served zero-copy from
the byte range HDF5 gives for it (`get_offset`, checked against the
file's size and dtype x shape); any other (chunked, compressed, compact,
big-endian) is read through h5py by slices, as many elements as a read
asks for, by a handle each process opens for itself (the mount daemon
forks after the walk) and closes at exit. h5py is not thread-safe: every
call into it holds one lock.

Attributes are shown as YAML: every group's and dataset's, by path, in
`attributes.yaml`; Keras's legacy `model_config` and `training_config`
(JSON) parsed, in `model_config.yaml` and `training_config.yaml`.
h5py parsing a hostile file is a risk of that library (docs/security.md):
whatever it raises becomes one line naming the file.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import signal
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..limits import apply as apply_limits
from ..pickle.pyobjects import to_yaml
from ..sources.base import FileSource, SeekableReader, SliceSource, Source
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME, DType
from ..tree.nodes import Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import PiecedTensor, PlacedTensor, Tensor, TensorFile
from .base import FileFormat, Opening
from .child import run as run_child

MAGIC = b"\x89HDF\r\n\x1a\n"
#: groups inside groups the walk enters
MAX_DEPTH = 64
#: what a filtered (compressed) dataset may claim, in times its stored bytes
#: (plus one MiB): more is a decompression bomb, refused as Keras refuses it
MAX_EXPANSION = 1024
#: the most one chunk of a dataset read through h5py may hold, decoded: the
#: chunk cache of each open dataset (`_Handles.CHUNK_CACHE`), so a chunk is
#: inflated once for the reads it serves, and a read inflates at most a few
#: (a 256 MiB gzip chunk took 1 s per 128 KiB read, inflated each time)
MAX_CHUNK_BYTES = 16 << 20
#: how long the child that reads a file's objects (`_isolated`) may take: h5py
#: reads no data there, only objects and attributes, bounded in number
CHILD_SECONDS = 60
#: attributes the YAML files show, for the whole file (and at most max_header_bytes stored, yaml_values values)
MAX_ATTRIBUTES = 100_000
#: the JSON the walk's child may answer, in bytes per max_header_bytes (a number's text outgrows its 8 bytes)
ANSWER_BYTES_PER_HEADER_BYTE = 4
#: bytes of one attribute's value shown
MAX_ATTRIBUTE_BYTES = 16 << 20
#: root attributes of a Keras legacy file that hold JSON, each shown in `<name>.yaml`
JSON_ATTRIBUTES = ("model_config", "training_config")

#: every call into h5py holds it (h5py is not thread-safe; reads of a slow source run in threads)
_LOCK = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_LOCK=threading.Lock()))


def h5py_module(name: str):
    """h5py, or FormatError naming the file and the extra to install."""
    try:
        import h5py
    except ImportError:
        raise FormatError(name, "an HDF5 file: reading it needs h5py, the keras extra (pip install h5py, or "
                                "pip install -e '.[keras]' in a clone of ckptfs)") from None
    return h5py


def sniff(head: bytes) -> bool:
    """HDF5's signature at the start. (A file whose signature follows a user
    block, at 512 bytes or beyond, is not mounted: Keras and h5py write
    none; `ckptfs scan` finds it, `after_user_block`.)"""
    return head.startswith(MAGIC)


def after_user_block(source: Source) -> bool:
    """Whether HDF5's signature lies after a user block: at 512, 1024,
    2048... bytes, where the HDF5 library (and so h5py and Keras) looks for
    it; one 8-byte read per power of two below the file's size."""
    offset = 512
    while offset + len(MAGIC) <= source.size:
        if source.pread(offset, len(MAGIC)) == MAGIC:
            return True
        offset *= 2
    return False


class _Reader(SeekableReader):
    """The file object h5py reads a source through."""

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


@dataclass(frozen=True)
class Dataset:
    """One dataset as the walk found it: where its bytes lie when they are
    stored contiguous and unfiltered (`extent`), else read through h5py."""

    path: str
    dtype: DType
    shape: tuple[int, ...]
    extent: Extent | None
    #: how it is stored, for its file's attributes (layout, filters, chunks)
    facts: tuple[tuple[str, str], ...] = ()


@dataclass
class Contents:
    """What the walk found: datasets, attributes by object path, and notes."""

    datasets: list[Dataset] = field(default_factory=list)
    attributes: dict[str, dict[str, object]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def walk(source: Source, name: str) -> Contents:
    """Every dataset and attribute of the HDF5 file in `source`, bounded;
    FormatError naming `name` for a file h5py cannot read (or that crashes
    it: `_isolated`)."""
    found = _isolated("walk", source, name)
    return Contents([Dataset(path, BY_NAME[dtype], tuple(shape), None if offset is None else
                             Extent(source, offset, BY_NAME[dtype].nbytes(math.prod(shape))), tuple(map(tuple, facts)))
                     for path, dtype, shape, offset, facts in found["datasets"]],
                    found["attributes"], found["notes"])


def _walk(source: Source, name: str) -> Contents:
    h5py = h5py_module(name)
    contents = _Walk(source, name, h5py)
    with _LOCK:
        try:
            with h5py.File(_Reader(source), "r") as f:
                contents.first_seen(f, "")
                contents.group(f, "", 0)
        except FormatError:
            raise
        except Exception as e:  # whatever h5py raises on a damaged file: one line
            raise FormatError(name, f"not a readable HDF5 file ({type(e).__name__}: {_first_line(e)})") from None
    return contents.found


def _as_json(contents: Contents) -> dict:
    datasets = [(d.path, d.dtype.name, d.shape, None if d.extent is None else d.extent.offset, d.facts)
                for d in contents.datasets]
    return {"datasets": datasets, "attributes": contents.attributes, "notes": contents.notes}


def model_config(source: Source, name: str) -> object:
    """The parsed `model_config` attribute of a Keras legacy `.h5` file (the
    model `load_model` builds), or None where it has none; FormatError for a
    file h5py cannot read or a config that is no JSON."""
    text = _isolated("model_config", source, name)
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FormatError(name, f"its model_config attribute is not readable JSON ({type(e).__name__})") from None


def _model_config_text(source: Source, name: str) -> object:
    h5py = h5py_module(name)
    with _LOCK:
        try:
            with h5py.File(_Reader(source), "r") as f:
                return _plain(f.attrs["model_config"]) if "model_config" in f.attrs else None
        except Exception as e:  # whatever h5py raises on a damaged file: one line
            raise FormatError(name, f"not a readable HDF5 file ({type(e).__name__}: {_first_line(e)})") from None


#: what the child runs: `_child` of this module, found below the folder holding ckptfs (argv[1])
_CHILD_CODE = "import sys; sys.path.insert(0, sys.argv[1]); from ckptfs.formats.hdf5 import _child; _child(*sys.argv[2:])"
_CKPTFS_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _isolated(task: str, source: Source, name: str) -> object:
    """`_TASKS[task](source, name)` (a value JSON holds) run in a child
    process, a new Python (not a fork of this one, whose threads' locks a
    fork would copy held), handed the file's descriptor: a hostile file
    that crashes the HDF5 library there (a byte-flipped attribute did, in
    H5Aread) is refused in one line, and the command or mount goes on. A
    source that is no byte range of a local file (remote, deflated in a
    zip) is read here."""
    on_disk = _on_disk(source)
    if on_disk is None:
        return _TASKS[task](source, name)
    h5py_module(name)  # its absence is one line here
    fd, offset, path = on_disk
    limits = json.dumps(dataclasses.asdict(LIMITS))  # -o max_...: the child spends what this process may
    code, data = run_child([sys.executable, "-c", _CHILD_CODE, _CKPTFS_PARENT, str(fd), path, str(offset),
                           str(source.size), task, name, limits], name, CHILD_SECONDS,
                          ANSWER_BYTES_PER_HEADER_BYTE * LIMITS.header_bytes, pass_fds=(fd,))
    if not data:
        why = signal.Signals(-code).name if code < 0 else f"exit {code}"
        raise FormatError(name, f"the HDF5 library crashed reading it ({why}): a damaged or hostile HDF5 file")
    out = json.loads(data)
    if "problem" in out:
        raise FormatError(name, out["problem"])
    return out["value"]


def _on_disk(source: Source) -> tuple[int, int, str] | None:
    """The descriptor and path of the local file `source` is a byte range
    of, and where the range starts; else None."""
    offset = 0
    while isinstance(source, SliceSource):
        offset += source.offset
        source = source.parent
    return (source.fd, offset, source.path) if isinstance(source, FileSource) else None


def _child(fd: str, path: str, offset: str, size: str, task: str, name: str, limits: str) -> None:
    """The child's side of `_isolated`: the value, or the FormatError's problem, as JSON on stdout."""
    apply_limits(json.loads(limits))
    file = FileSource(f"/proc/self/fd/{fd}")  # the parent's file, whatever its path now holds
    file.path = path
    source = file.slice(int(offset), int(size))
    try:
        out = {"value": _TASKS[task](source, name)}
    except FormatError as e:
        out = {"problem": e.problem}
    sys.stdout.write(json.dumps(out, default=repr))


#: what `_isolated` runs, by name (the child is handed a name, not code)
_TASKS = {"walk": lambda source, name: _as_json(_walk(source, name)), "model_config": lambda source, name:
          _model_config_text(source, name)}


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0]


class _Walk:
    def __init__(self, source: Source, name: str, h5py):
        self.source, self.name, self.h5py = source, name, h5py
        self.found = Contents()
        self.objects = 0
        self.attribute_count = self.attribute_bytes = self.attribute_values = 0
        self.attributes_cut = False
        #: the path each object was first found at, by its address: each is read once, however many links it has
        self.seen: dict[int, str] = {}

    def first_seen(self, node, path: str) -> str:
        """Where the walk first found `node`: `path`, unless another hard link led to it before."""
        return self.seen.setdefault(self.h5py.h5o.get_info(node.id).addr, path or "/")

    def group(self, group, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.found.notes.append(f"{path}: groups more than {MAX_DEPTH} deep: what it holds is not shown")
            return
        self.attributes(group, path)
        for key in group:
            self.objects += 1
            if self.objects > LIMITS.members:
                raise FormatError(self.name, f"more than {plural(LIMITS.members, 'object')} (-o max_members raises "
                                             "the limit)")
            child = f"{path}/{key}" if path else key
            link = group.get(key, getlink=True)
            if not isinstance(link, self.h5py.HardLink):
                self.found.notes.append(f"{child}: a {type(link).__name__}, not followed")
                continue
            try:
                node = group[key]
            except Exception as e:  # what h5py raises on a damaged object breaks only that one
                self.found.notes.append(f"{child}: h5py cannot open it ({type(e).__name__}: {_first_line(e)}): "
                                        "left out")
                continue
            first = self.first_seen(node, child)
            if first != child:
                self.found.notes.append(f"{child}: a hard link to {first}, shown there only")
                continue
            if isinstance(node, self.h5py.Dataset):
                self.attributes(node, child)
                self.dataset(node, child)
            elif isinstance(node, self.h5py.Group):
                self.group(node, child, depth + 1)

    def attributes(self, node, path: str) -> None:
        shown = {}
        for key in node.attrs:
            if self.attributes_cut:
                break
            try:
                self.within_budget(node.attrs.get_id(key), path)
                if self.attributes_cut:
                    break
                shown[key] = _plain(node.attrs[key])
                self.attribute_bytes += len(shown[key]) if isinstance(shown[key], str) else 0  # a variable-length one
            except (OSError, RuntimeError, TypeError, ValueError) as e:
                shown[key] = f"<unreadable: {_first_line(e)}>"
        if shown:
            self.found.attributes[path or "/"] = shown

    def within_budget(self, attribute, path: str) -> None:
        """Counts one more attribute before it is read: past MAX_ATTRIBUTES
        in all, max_header_bytes or yaml_values values in all, it and the
        rest of the file's are not shown (`attributes_cut`, a note)."""
        self.attribute_count += 1
        values = math.prod(attribute.shape or ())
        self.attribute_bytes += values * attribute.get_type().get_size()  # a variable-length string's text: after
        self.attribute_values += values
        if (self.attribute_count > MAX_ATTRIBUTES or self.attribute_bytes > LIMITS.header_bytes
                or self.attribute_values > LIMITS.yaml_values):
            self.attributes_cut = True
            self.found.notes.append(f"{path or '/'}: attributes past {MAX_ATTRIBUTES}, max_header_bytes or "
                                    "yaml_values values in all: the rest of the file's not shown")

    def dataset(self, dset, path: str) -> None:
        """One dataset: a tensor, or a note saying why it is not shown."""
        try:
            self.found.datasets.append(self._tensor_of(dset, path))
        except _Skipped as e:
            self.found.notes.append(f"{path}: {e}")
        except Exception as e:  # what h5py raises on a damaged dataset breaks only that one
            self.found.notes.append(f"{path}: h5py cannot read it ({type(e).__name__}: {_first_line(e)}): left out")

    def _tensor_of(self, dset, path: str) -> Dataset:
        dtype = _dtype_of(dset)
        shape = tuple(int(n) for n in (dset.shape or ()))
        if dset.shape is None:
            raise _Skipped("an empty (null) dataspace: no values")
        nbytes = dtype.nbytes(math.prod(shape))
        stored = dset.id.get_storage_size()
        plist = dset.id.get_create_plist()
        layout, filters = plist.get_layout(), plist.get_nfilters()
        if plist.get_external_count() > 0:
            raise _Skipped("its values are kept in other files (HDF5 external storage): not followed, as links "
                           "are not: left out")
        if layout == self.h5py.h5d.VIRTUAL:
            raise _Skipped("a virtual dataset, whose values come from other HDF5 files: not followed, as links "
                           "are not: left out")
        facts = ((xattrs.SOURCE, self.source.locate(0)[0]), (xattrs.HDF5_STORAGE, _storage(dset, plist, layout)))
        offset = dset.id.get_offset()
        native = dset.dtype.byteorder in ("<", "=", "|")
        if layout == self.h5py.h5d.CONTIGUOUS and not filters and native and offset is not None and self.plain(dset):
            if stored != nbytes:
                raise _Skipped(f"stores {plural(stored, 'byte')} for {dtype.name} {list(shape)}, which take {nbytes}: "
                               "left out")
            if offset + nbytes > self.source.size:
                raise _Skipped(f"its {plural(nbytes, 'byte')} at {offset} run past the end of the file "
                               f"({plural(self.source.size, 'byte')}): left out")
            return Dataset(path, dtype, shape, Extent(self.source, offset, nbytes), facts)
        chunk = dtype.nbytes(math.prod(dset.chunks)) if dset.chunks else 0
        if chunk > MAX_CHUNK_BYTES:
            raise _Skipped(f"one chunk holds {plural(chunk, 'byte')} decoded, more than the "
                           f"{MAX_CHUNK_BYTES >> 20} MiB a read may inflate: left out")
        if nbytes > stored * MAX_EXPANSION + (1 << 20):
            raise _Skipped(f"claims {plural(nbytes, 'byte')} ({dtype.name} {list(shape)}) from "
                           f"{plural(stored, 'stored byte')}, more than {MAX_EXPANSION} times: left out")
        return Dataset(path, dtype, shape, None, facts)


    def plain(self, dset) -> bool:
        """Whether a dataset's stored bytes are its values: a number type
        HDF5 converts on read (precision or offset within its bytes, a
        float of its own layout) is not, and is read through h5py."""
        return dset.dtype.kind not in "biuf" or dset.id.get_type().equal(self.h5py.h5t.py_create(dset.dtype))


class _Skipped(Exception):
    """A dataset not served (no tensor, values in other files, sizes that do
    not add up): left out, in a note."""


_LAYOUTS = {0: "compact", 1: "contiguous", 2: "chunked", 3: "virtual"}


def _storage(dset, plist, layout: int) -> str:
    """How a dataset is stored, as its file's `user.ckptfs.hdf5_storage` says it."""
    shown = _LAYOUTS.get(layout, f"layout {layout}")
    if dset.chunks:
        shown += " " + json.dumps(list(dset.chunks))
    filters = [plist.get_filter(i)[3].decode("utf-8", "replace") for i in range(plist.get_nfilters())]
    if filters:
        shown += ", filters: " + ", ".join(filters)
    if dset.dtype.byteorder == ">":
        shown += ", big-endian"
    return shown


def _dtype_of(dset) -> DType:
    """The tensor type of a dataset; a 2-byte dataset Keras marks
    `dtype: bfloat16` is one."""
    dt = dset.dtype
    if dt.kind == "V" and dt.itemsize == 2 and dset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return BY_NAME["bfloat16"]
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise _Skipped(f"a dataset of {dt} values, not a tensor: not shown")
    found = BY_NAME.get(dt.newbyteorder("<").name if dt.kind != "b" else "bool")
    if found is None:
        raise _Skipped(f"a dataset of {dt} values, a type ckptfs does not serve: not shown")
    return found


def _plain(value: object) -> object:
    """An attribute's value as YAML can show it: text decoded, arrays as lists."""
    if isinstance(value, bytes):
        return value[:MAX_ATTRIBUTE_BYTES].decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        if getattr(value, "nbytes", 0) > MAX_ATTRIBUTE_BYTES:
            return f"<{value.nbytes} bytes, not shown>"
        return _plain_list(value.tolist())
    if isinstance(value, str):
        return value[:MAX_ATTRIBUTE_BYTES]
    return value


def _plain_list(value: object) -> object:
    if isinstance(value, list):
        return [_plain_list(v) for v in value]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- reading through h5py
class _Handles:
    """The h5py files and datasets this process opened to read datasets
    through h5py: a few of each kept open, least recently read closed
    first, the rest closed at exit, before the interpreter tears h5py
    down. A dataset stays open between reads for its chunk cache, made to
    hold a row of chunks of a large weight: with HDF5's default (1 MiB, and
    a cache per open dataset) a mount's 128 KiB reads of a gzip dataset of
    4096 x 4096 float32 in 256 x 256 chunks inflated each chunk 16 times.
    At most MOST_DATASETS x CHUNK_CACHE bytes of chunks are kept."""

    MOST_FILES, MOST_DATASETS = 4, 4
    CHUNK_CACHE = MAX_CHUNK_BYTES

    def __init__(self):
        self.files: OrderedDict[tuple[int, int], object] = OrderedDict()
        self.datasets: OrderedDict[tuple[int, int, str], object] = OrderedDict()
        atexit.register(self.close_all)

    def dataset(self, source: Source, name: str, path: str):
        key = (os.getpid(), id(source), path)
        dset = self.datasets.get(key)
        if dset is None:
            dset = self.datasets[key] = self._file(source, name)[path]
            while len(self.datasets) > self.MOST_DATASETS:
                self.datasets.popitem(last=False)
        self.datasets.move_to_end(key)
        return dset

    def _file(self, source: Source, name: str):
        key = (os.getpid(), id(source))
        handle = self.files.get(key)
        if handle is None:
            handle = self.files[key] = h5py_module(name).File(_Reader(source), "r", rdcc_nbytes=self.CHUNK_CACHE,
                                                               rdcc_nslots=100_003)
            while len(self.files) > self.MOST_FILES:
                self._close(*self.files.popitem(last=False))
        self.files.move_to_end(key)
        return handle

    def close_all(self) -> None:
        with _LOCK:
            while self.files:
                self._close(*self.files.popitem())

    def _close(self, key: tuple[int, int], handle) -> None:
        for held in [k for k in self.datasets if k[:2] == key]:
            del self.datasets[held]
        if key[0] == os.getpid():  # a parent's handle is the parent's to close
            handle.close()


_HANDLES = _Handles()


class H5Values(Source):
    """A dataset's C-order bytes, read through h5py on demand: the elements
    a read covers, no more (whole rows where they fit, else row by row).
    Slow: a read may inflate chunks (up to MAX_CHUNK_BYTES each), so
    fuse/operations.py serves it in a worker thread, off the event loop
    (`_LOCK` still lets one thread at a time into h5py)."""

    slow = True

    def __init__(self, source: Source, name: str, dataset: Dataset):
        self.file, self.name, self.dataset_path = source, name, dataset.path
        self.path = f"{name}:{dataset.path}"
        self.shape, self.itemsize = dataset.shape, dataset.dtype.bits // 8
        self.size = math.prod(self.shape) * self.itemsize

    @property
    def origin(self):
        return self.file.origin

    def pread(self, offset: int, length: int) -> bytes:
        first, last = offset // self.itemsize, -(-min(self.size, offset + length) // self.itemsize)
        if first >= last:
            return b""
        with _LOCK:
            try:
                dset = _HANDLES.dataset(self.file, self.name, self.dataset_path)
                data = b"".join(_elements(dset, (), self.shape, first, last))
            except FormatError:
                raise
            except Exception as e:
                raise FormatError(self.name, f"{self.dataset_path}: h5py cannot read it ({type(e).__name__}: "
                                             f"{_first_line(e)})") from None
        skip = offset - first * self.itemsize
        return data[skip : skip + length]


def _elements(dset, index: tuple, shape: tuple[int, ...], first: int, last: int):
    """The little-endian bytes of elements [first, last) (C order) of
    `dset[index]`, whose shape is `shape`: whole rows in one read, a
    partial first or last row recursively."""
    if not shape:
        yield _little(dset[index] if index else dset[()])
        return
    inner = math.prod(shape[1:])
    start_row, end_row = -(-first // inner), last // inner
    if start_row > end_row:  # inside one row
        row = first // inner
        yield from _elements(dset, (*index, row), shape[1:], first - row * inner, last - row * inner)
        return
    if first % inner:
        row = first // inner
        yield from _elements(dset, (*index, row), shape[1:], first - row * inner, inner)
    if end_row > start_row:
        yield _little(dset[(*index, slice(start_row, end_row))])
    if last % inner:
        yield from _elements(dset, (*index, end_row), shape[1:], 0, last - end_row * inner)


def _little(values) -> bytes:
    import numpy as np

    array = np.asarray(values)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


# -- the tree
@dataclass
class Shown:
    """An HDF5 file as a tree: its datasets as `.npy` files, its attributes as YAML."""

    root: Dir
    placed: list[PlacedTensor]
    notes: list[str]
    attributes: dict[str, dict[str, object]]


def expand(source: Source, name: str) -> Shown:
    """The tree of the HDF5 file in `source`: each dataset at its path
    (`layers/dense/vars/0` -> `layers/dense/vars/0.npy`), keyed by its path
    with dots (`layers.dense.vars.0`); `attributes.yaml`, and each legacy
    Keras JSON attribute of the root as YAML."""
    contents = walk(source, name)
    shown = Shown(Dir(), [], contents.notes, contents.attributes)
    keys: set[str] = set()
    for dataset in contents.datasets:
        parts = dataset.path.split("/")
        key = ".".join(parts)
        if key in keys:
            shown.notes.append(f"{dataset.path}: left out: another dataset has the key {key!r}")
            continue
        keys.add(key)
        tensor = _tensor(source, name, dataset, key)
        path = [names.escape(p) for p in parts[:-1]] + [names.escape(parts[-1], ".npy")]
        try:
            shown.root.subdir(path[:-1]).add(path[-1], TensorFile(tensor))
        except PathConflict:
            shown.notes.append(f"{dataset.path}: left out: another file or folder takes its path")
            continue
        shown.placed.append(PlacedTensor("/".join(path), tensor))
    root_attributes = contents.attributes.get("/", {})
    for attribute in JSON_ATTRIBUTES:
        text = root_attributes.get(attribute)
        if isinstance(text, str):
            _yaml(shown, f"{attribute}.yaml", _json(text, f"{name}: the {attribute} attribute", shown.notes))
            root_attributes[attribute] = f"<JSON, shown in {attribute}.yaml>"
    _yaml(shown, "attributes.yaml", contents.attributes)
    return shown


def _tensor(source: Source, name: str, dataset: Dataset, key: str) -> Tensor:
    if dataset.extent is not None:
        return Tensor(key, dataset.dtype, dataset.shape, dataset.extent)
    values = H5Values(source, name, dataset)
    return PiecedTensor(key, dataset.dtype, dataset.shape, Extent(source, 0, 0), (Extent(values, 0, values.size),),
                        dataset.facts)


def _json(text: str, label: str, notes: list[str]) -> object:
    """A JSON attribute's value, or its text where it is not JSON (noted)."""
    if len(text) > LIMITS.header_bytes:
        notes.append(f"{label}: more than max_header_bytes of JSON, shown as text")
        return text
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        notes.append(f"{label}: not readable JSON ({type(e).__name__}), shown as text")
        return text


def _yaml(shown: Shown, file_name: str, value: object) -> None:
    if value in ({}, None):
        return
    try:
        shown.root.add(file_name, File(Content([to_yaml(value).encode()])))
    except PathConflict:
        shown.notes.append(f"{file_name}: left out: a dataset of the file takes its name")


def open_file(opening: Opening) -> Checkpoint:
    source, st = opening.source, opening.stat
    shown = expand(source, source.path)
    return Checkpoint("HDF5 (Keras .h5)", source.path, st, shown.root, raw_mirror(source), shown.placed,
                      shown.notes)


FORMAT = FileFormat("HDF5 (Keras .h5)", sniff, open_file,
                    "HDF5 files: Keras legacy .h5 models and .weights.h5 (h5py, the keras extra)", None)
