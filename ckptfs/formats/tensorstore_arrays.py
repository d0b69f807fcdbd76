"""Zarr arrays read through tensorstore (Orbax checkpoints: formats/orbax.py),
a few chunks at a time.

tensorstore is an optional extra, imported only when such a checkpoint is
opened. Once it has started its threads, a `fork` aborts the child ("fork()
use detected"), and the mount daemon forks after the checkpoint is opened
(mount/daemon.py): so the process that opens a checkpoint never reads an
array through it. Arrays are opened on their first read, in the process that
reads them (the daemon), and metadata only tensorstore can read (an OCDBT
store's) is read by a short-lived subprocess (`ocdbt_metadata`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading

import numpy as np

from ..errors import FormatError
from ..limits import LIMITS
from ..sources.base import Source
from ..tree.dtypes import DType
from .child import run as run_child
from .orbax_metadata import METADATA_BYTES, ArrayInfo

#: what `pip` installs for these checkpoints
EXTRA = "pip install -e '.[tensorstore]' in a clone of ckptfs"
#: how long one array's open or read, and the OCDBT metadata probe, may take (seconds)
TIMEOUT = 300


def require(path: str) -> None:
    """FormatError naming `path` and the extra to install, unless tensorstore
    is installed. Found, not imported: its import starts a thread, which a
    process that forks next (the mount) should not have."""
    if importlib.util.find_spec("tensorstore") is None:
        raise FormatError(path, f"an Orbax checkpoint is read through tensorstore, the tensorstore extra: {EXTRA}")


#: the most the chunk cache holds, unless one chunk is larger
CACHE_CAP = 2 << 30


def cache_bytes(infos: list[ArrayInfo]) -> int:
    """What the chunk cache of a checkpoint of these arrays holds: the
    largest band of chunks (`ArrayInfo.band_bytes`) and one more chunk, so a
    sequential read decodes each chunk once; at most CACHE_CAP, or two of
    its largest chunks where they are larger."""
    band = max((i.band_bytes + i.chunk_bytes for i in infos), default=0)
    chunk = max((i.chunk_bytes for i in infos), default=0)
    return max(2 * chunk, min(band, CACHE_CAP)) + (16 << 20)


class Store:
    """How every array of one checkpoint is reached: its folder, whether
    through an OCDBT database, and the tensorstore context its arrays share
    (made in the process that reads, once: a chunk cache of `cache_bytes`,
    and one thread to decode, which keeps what the decoders' memory
    allocators hold small)."""

    def __init__(self, root: str, ocdbt: bool, cache_bytes: int):
        self.root, self.ocdbt, self.cache_bytes = root, ocdbt, cache_bytes
        self.lock = threading.Lock()
        self._context: tuple[int, object] | None = None

    def spec(self, param: str, driver: str) -> dict:
        """The tensorstore spec of the array `param` (a name checked to stay inside: orbax.py)."""
        if self.ocdbt:
            kvstore = {"driver": "ocdbt", "base": {"driver": "file", "path": self.root + "/"}, "path": param + "/"}
        else:
            kvstore = {"driver": "file", "path": f"{self.root}/{param}/"}
        # the source does not change under a mount: a chunk decoded once is not checked again on each read
        return {"driver": driver, "kvstore": kvstore, "recheck_cached_data": "open", "recheck_cached_metadata": "open"}

    def context(self):
        """The context of this process (called with `lock` held)."""
        import tensorstore as ts

        if self._context is None or self._context[0] != os.getpid():
            self._context = (os.getpid(), ts.Context({"cache_pool": {"total_bytes_limit": self.cache_bytes},
                                                      "data_copy_concurrency": {"limit": 1}}))
        return self._context[1]


class ArraySource(Source):
    """An array's C-order bytes, read through tensorstore a slab of
    elements at a time: a read of n bytes asks for at most n bytes' worth of
    elements (in at most 2 x ndim + 1 boxes), and tensorstore decodes only
    the chunks they touch. Slow: reads decode chunks, so fuse/operations.py
    serves them off the event loop."""

    slow = True

    def __init__(self, store: Store, param: str, info: ArrayInfo, path: str):
        self.store, self.param, self.info, self.path = store, param, info, path
        self.itemsize = info.dtype.bits // 8
        self.size = math.prod(info.shape) * self.itemsize
        self._opened: tuple[int, object] | None = None

    def _array(self):
        with self.store.lock:
            if self._opened is None or self._opened[0] != os.getpid():
                self._opened = (os.getpid(), self._open())
            return self._opened[1]

    def _open(self):
        import tensorstore as ts

        info = self.info
        try:
            array = ts.open(self.store.spec(self.param, info.driver), open=True, read=True,
                            context=self.store.context()).result(timeout=TIMEOUT)
        except Exception as e:  # tensorstore says what is wrong in its own exception types
            raise FormatError(self.path, f"array {self.param!r} cannot be opened: {_said(e)}") from None
        if tuple(array.shape) != info.shape or _dtype_name(array.dtype.numpy_dtype) != info.dtype.name:
            raise FormatError(self.path, f"array {self.param!r} is now {array.dtype} {list(array.shape)}, "
                                         f"not {info.dtype.name} {list(info.shape)} as at mount")
        return array

    def pread(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // self.itemsize, -(-end // self.itemsize)
        array = self._array()
        try:
            parts = [_little(array[box].read().result(timeout=TIMEOUT), self.info.dtype)
                     for box in boxes(self.info.shape, first, last)]
        except FormatError:
            raise
        except Exception as e:
            raise FormatError(self.path, f"array {self.param!r} cannot be read: {_said(e)}") from None
        data = b"".join(parts)
        skip = offset - first * self.itemsize
        return data[skip: skip + end - offset]


class Broken:
    """The bytes of an array that cannot be read (its metadata is unfit):
    every read fails (EIO) with the file and the reason."""

    length = 1
    slow = False

    def __init__(self, path: str, problem: str):
        self.path, self.problem, self.source = path, problem, self

    def read(self, offset: int, length: int) -> bytes:
        raise FormatError(self.path, self.problem)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        raise FormatError(self.path, self.problem)


def boxes(shape: tuple[int, ...], first: int, last: int) -> list[tuple]:
    """Index boxes covering the elements [first, last) of an array of
    `shape` in C order, in order, each a contiguous run: at most
    2 x len(shape) + 1 of them, none holding an element outside the range."""
    if first >= last:
        return []
    if not shape:
        return [()]
    inner = math.prod(shape[1:])
    row0, col0 = divmod(first, inner)
    row1, col1 = divmod(last, inner)
    full = (slice(None),) * (len(shape) - 1)
    if row0 == row1:
        return [(slice(row0, row0 + 1), *box) for box in boxes(shape[1:], col0, col1)]
    out = []
    if col0:
        out += [(slice(row0, row0 + 1), *box) for box in boxes(shape[1:], col0, inner)]
        row0 += 1
    if row1 > row0:
        out.append((slice(row0, row1), *full))
    if col1:
        out += [(slice(row1, row1 + 1), *box) for box in boxes(shape[1:], 0, col1)]
    return out


def _little(values: np.ndarray, dtype: DType) -> bytes:
    """The values' bytes as the `.npy` file holds them: C order, little-endian."""
    values = np.ascontiguousarray(values)
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    if values.dtype.itemsize * 8 != dtype.bits:
        raise ValueError(f"tensorstore gave {values.dtype}, not {dtype.name}")
    return values.tobytes()


def _dtype_name(dtype: np.dtype) -> str:
    return "bool" if dtype == np.bool_ else dtype.name


def _said(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


#: run by `ocdbt_metadata` in a subprocess: reads each array's zarr
#: metadata from the OCDBT database at argv[1], for the names on stdin
_PROBE = r"""
import json, sys
import tensorstore as ts
base, names, limit = sys.argv[1], json.load(sys.stdin), int(sys.argv[2])
try:
    store = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": base + "/"}}).result()
except Exception as e:
    json.dump({"unreadable": " ".join(str(e).split())[:300]}, sys.stdout)
    sys.exit(0)
found = {}
for name in names:
    try:
        for key, zarr3 in ((name + "/zarr.json", True), (name + "/.zarray", False)):
            got = store.read(key).result()
            if got.state == "value":
                value = bytes(got.value)
                found[name] = ["ok", zarr3, value.decode("latin-1")] if len(value) <= limit else ["big", len(value)]
                break
        else:
            found[name] = ["missing"]
    except Exception as e:
        found[name] = ["error", " ".join(str(e).split())[:300]]
json.dump({"arrays": found}, sys.stdout)
"""


def ocdbt_metadata(root: str, params: list[str]) -> dict[str, tuple[bool, bytes] | str]:
    """Each array's zarr metadata in the OCDBT database of the folder
    `root`: (zarr3, its bytes), or why there is none. Read by a subprocess,
    so this process never starts tensorstore's threads (a later fork would
    abort); FormatError if the database cannot be read at all."""
    # -I: neither the folder the user stands in nor PYTHONPATH lends it modules
    code, answer = run_child([sys.executable, "-I", "-c", _PROBE, root, str(METADATA_BYTES)], root, TIMEOUT,
                             LIMITS.header_bytes, stdin=json.dumps(params).encode())
    if code != 0:
        raise FormatError(root, f"its OCDBT database cannot be read (tensorstore's reader ended with status {code})")
    try:
        found = json.loads(answer)
    except (ValueError, RecursionError):
        found = None
    if isinstance(found, dict) and isinstance(found.get("unreadable"), str):
        raise FormatError(root, f"its OCDBT database cannot be read: {found['unreadable']}")
    if not isinstance(found, dict) or not isinstance(found.get("arrays"), dict):
        raise FormatError(root, "its OCDBT database cannot be read: tensorstore's answer is not a JSON object")
    return {name: _answer(found["arrays"].get(name)) for name in params}


def _answer(said: object) -> tuple[bool, bytes] | str:
    if not isinstance(said, list) or not said:
        return "the OCDBT database was not asked for it"
    if said[0] == "ok":
        return bool(said[1]), said[2].encode("latin-1")
    if said[0] == "big":
        return f"its zarr metadata is {said[1]} bytes, more than {METADATA_BYTES}"
    if said[0] == "missing":
        return "the OCDBT database holds no zarr metadata for it"
    return f"its zarr metadata cannot be read: {said[1]}"

