"""Zarr v2 arrays, read by ckptfs itself: a folder holding `.zarray` (JSON:
shape, chunks, dtype, compressor...) and one file per chunk, named by its
indices in the chunk grid (`1.0`, or `1/0` with dimension_separator `/`).
Megatron-Core's `zarr` distributed checkpoints store each sharded tensor so
(formats/megatron_zarr.py).

Everything `.zarray` claims is checked before it is used; a chunk is found
by listing the folder and looked up by the name its indices make, never by
a name a file holds. Each array is served whole in C order: a read touches
only the chunks its range covers, and decodes at most one chunk at a time
(a chunk that is missing holds fill_value, as zarr reads it). An array whose
chunks are stored raw and split only its first dimension is laid end to end
from the chunk files, zero-copy.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from itertools import product

import numpy as np

from ..errors import CkptfsError, FormatError
from ..humanize import plural
from ..sources.base import Source, scatter
from ..sources.zstd import zstd
from ..tree import xattrs
from ..tree.dtypes import BY_NAME, DType
from ..tree.gather import read_elements
from ..tree.kept import Kept
from ..tree.nodes import Extent
from ..tree.npy import MAX_FILE_SIZE
from ..tree.tensors import PiecedTensor, Tensor, shape_text
from .jsontext import json_object
from .quantized.base import numpy_dtype

#: bytes of a `.zarray` read at most (a real one holds a few hundred)
MAX_META_BYTES = 1 << 20
#: dimensions of an array (NumPy's own limit is 64)
MAX_DIMS = 32
#: bytes of a compressed chunk decompressed at most: its whole is kept while read
MAX_DECODED_CHUNK = 256 << 20
#: decoded chunks kept between reads, in bytes
KEPT_BYTES = 256 << 20
#: the compressors read, by numcodecs id -> zlib's wbits (None: zstd)
CODECS = {"zlib": 15, "gzip": 31, "zstd": None}
#: the dtypes as `.zarray` spells them: NumPy's type strings, and Megatron's `bfloat16`
DTYPES = {d.npy_descr: d for d in BY_NAME.values() if d.npy_descr and d.npy_descr[0] in "<|"}
DTYPES["bfloat16"] = BY_NAME["bfloat16"]
#: how JSON spells the float fill values it has no numbers for
FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class ArrayMeta:
    """What `.zarray` says of an array, checked."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: DType
    fill: bytes  # one element
    codec: str | None
    separator: str

    @property
    def itemsize(self) -> int:
        return self.dtype.bits // 8

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    @property
    def chunk_bytes(self) -> int:
        return math.prod(self.chunks) * self.itemsize

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks along each dimension."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))

    def chunk_name(self, index: tuple[int, ...]) -> str:
        """The chunk's file, relative to the array's folder (a 0-d array's is `0`)."""
        return self.separator.join(map(str, index)) or "0"

    def index_of(self, name: str) -> tuple[int, ...] | None:
        """The grid index a chunk file's name spells, None if it spells none
        (only the name `chunk_name` makes of it counts)."""
        parts = name.split(self.separator) if self.shape else [] if name == "0" else [""]
        if len(parts) != len(self.shape) or not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts):
            return None
        index = tuple(map(int, parts))
        if self.chunk_name(index) != name or any(i >= n for i, n in zip(index, self.grid)):
            return None
        return index


def parse_meta(data: bytes, label: str) -> ArrayMeta:
    """The `.zarray` of the array at `label`, checked; FormatError naming the problem."""
    meta = json_object(data, f"{label}/.zarray", MAX_META_BYTES, "a .zarray")
    if meta.get("zarr_format") != 2:
        raise FormatError(label, ".zarray is not the metadata of a zarr v2 array (zarr_format 2)")
    shape = _dims(meta.get("shape"), label, "shape", 0)
    chunks = _dims(meta.get("chunks"), label, "chunks", 1)
    if len(chunks) != len(shape):
        raise FormatError(label, f"chunks {list(chunks)} do not match shape {list(shape)}")
    dtype = _dtype(meta.get("dtype"), label)
    for size in (math.prod(shape), math.prod(chunks)):
        if size * (dtype.bits // 8) >= MAX_FILE_SIZE:
            raise FormatError(label, f"shape {list(shape)}, chunks {list(chunks)}: more than a file can hold")
    _refuse_layout(meta, label)
    separator = meta.get("dimension_separator", ".")
    if separator not in (".", "/"):
        raise FormatError(label, f"dimension_separator {separator!r} is neither '.' nor '/'")
    codec = _codec(meta.get("compressor"), label)
    array = ArrayMeta(shape, chunks, dtype, _fill(meta.get("fill_value"), dtype, label), codec, separator)
    if codec is not None and array.chunk_bytes > MAX_DECODED_CHUNK:
        raise FormatError(label, f"compressed chunks of {plural(array.chunk_bytes, 'byte')}: more than ckptfs "
                                 f"decompresses ({MAX_DECODED_CHUNK >> 20} MiB)")
    return array


def _dims(value: object, label: str, what: str, least: int) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) > MAX_DIMS
            or not all(type(n) is int and least <= n < MAX_FILE_SIZE for n in value)):
        raise FormatError(label, f"{what} {str(value)[:80]} is not a list of at most {MAX_DIMS} integers "
                                 f"of at least {least}")
    return tuple(value)


def _dtype(value: object, label: str) -> DType:
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise FormatError(label, f"dtype {str(value)[:80]!r} is not one ckptfs reads (little-endian numbers, bool, "
                             "bfloat16)")


def _refuse_layout(meta: dict, label: str) -> None:
    if meta.get("order", "C") != "C":
        raise FormatError(label, f"order {str(meta.get('order'))[:20]!r}: only C order is read")
    if meta.get("filters") not in (None, []):
        raise FormatError(label, f"filters {str(meta.get('filters'))[:80]}: arrays with filters are not read")


def _codec(compressor: object, label: str) -> str | None:
    if compressor is None:
        return None
    name = compressor.get("id") if isinstance(compressor, dict) else compressor
    if not isinstance(compressor, dict) or not isinstance(name, str) or name not in CODECS:
        raise FormatError(label, f"compressor {str(name)[:40]!r} is not one ckptfs reads (none, zlib, gzip, zstd)")
    return name


def _fill(value: object, dtype: DType, label: str) -> bytes:
    """One element of fill_value; null reads as zeros, as zarr reads it."""
    if value is None:
        return bytes(dtype.bits // 8)
    number = FLOAT_WORDS.get(value, value) if isinstance(value, str) else value
    whole = dtype.name.startswith(("int", "uint", "bool"))
    try:
        if isinstance(number, (list, dict, str)) or whole and isinstance(number, float):
            raise TypeError(type(number).__name__)
        with np.errstate(all="ignore"):  # a value too large for float16 is inf, as NumPy makes it
            element = np.array(number).astype(numpy_dtype(dtype))
        if element.dtype.kind in "iub" and element.item() != number:
            raise OverflowError(f"out of the range of {dtype.name}")
        return element.tobytes()
    except (TypeError, ValueError, OverflowError, CkptfsError) as e:
        raise FormatError(label, f"fill_value {str(value)[:40]} is not a {dtype.name} ({type(e).__name__})") from None


class ChunkedArray:
    """An array's bytes in C order, a piece of its tensor file: each read
    maps its range to boxes of whole elements, and each box to the chunks
    it crosses (`source` names the array for `slow`)."""

    def __init__(self, meta: ArrayMeta, chunks: dict[tuple[int, ...], Source], label: str, source: Source):
        self.meta, self.chunks, self.label, self.source = meta, chunks, label, source
        self.itemsize, self.length = meta.itemsize, meta.nbytes
        #: a chunk's strides, in bytes
        self.strides = tuple(math.prod(meta.chunks[d + 1:]) * meta.itemsize for d in range(len(meta.shape)))

    @property
    def sources(self) -> list[Source]:
        """The files its bytes come from (whoever reads the tensor must be
        able to read them all: tree.tensors.own_access)."""
        return [self.source, *self.chunks.values()]

    def read(self, offset: int, length: int) -> bytes:
        return read_elements(self, offset, length, self._elements)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        scatter(self.read(offset, sum(map(len, buffers))), buffers)

    def _elements(self, first: int, last: int) -> np.ndarray:
        """Elements [first, last), as rows of `itemsize` bytes."""
        out = np.empty((last - first, self.itemsize), dtype=np.uint8)
        for start, box in boxes(self.meta.shape, first, last):
            sizes = tuple(hi - lo for lo, hi in box)
            view = out[start - first : start - first + math.prod(sizes)].reshape(*sizes, self.itemsize)
            self._fill_box(view, box)
        return out

    def _fill_box(self, view: np.ndarray, box: tuple[tuple[int, int], ...]) -> None:
        spans = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(box, self.meta.chunks)]
        indices = product(*spans)
        if math.prod(map(len, spans)) > len(self.chunks):  # more chunks than are stored: most hold the fill value
            view[...] = np.frombuffer(self.meta.fill, np.uint8)
            indices = (i for i in self.chunks if all(n in span for n, span in zip(i, spans)))
        for index in indices:
            inside, there = [], []
            for (lo, hi), c, i in zip(box, self.meta.chunks, index):
                a, b = max(lo, i * c), min(hi, i * c + c)
                inside.append((a - i * c, b - i * c))
                there.append(slice(a - lo, b - lo))
            view[tuple(there)] = self._part(index, inside)

    def _part(self, index: tuple[int, ...], inside: list[tuple[int, int]]) -> np.ndarray:
        """The part `inside` (per dimension, [start, end) within the chunk)
        of chunk `index`, as (sizes..., itemsize) bytes."""
        sizes = tuple(b - a for a, b in inside)
        source = self.chunks.get(index)
        if source is None:
            return np.broadcast_to(np.frombuffer(self.meta.fill, np.uint8), (*sizes, self.itemsize))
        if self.meta.codec is not None:
            chunk = _KEPT.get((self, index), lambda: self.decode(index)).reshape(*self.meta.chunks, self.itemsize)
            return chunk[tuple(slice(a, b) for a, b in inside)]
        first = sum(a * s for (a, _), s in zip(inside, self.strides))
        span = sum((n - 1) * s for n, s in zip(sizes, self.strides)) + self.itemsize
        data = np.frombuffer(source.read_exact(first, span), np.uint8)
        return np.lib.stride_tricks.as_strided(data, (*sizes, self.itemsize), (*self.strides, 1), writeable=False)

    def decode(self, index: tuple[int, ...]) -> np.ndarray:
        """Chunk `index` decompressed, checked to hold a whole chunk."""
        source, want = self.chunks[index], self.meta.chunk_bytes
        name = f"{self.label}/{self.meta.chunk_name(index)}"
        if source.size > want + want // 8 + 1024:  # zlib and zstd add a few bytes a block at worst
            raise FormatError(name, f"{plural(source.size, 'byte')} compressed: more than a chunk of "
                                    f"{plural(want, 'byte')} compresses to")
        data = source.read_exact(0, source.size)
        wbits = CODECS[self.meta.codec]
        try:
            stream = zstd.ZstdDecompressor() if wbits is None else zlib.decompressobj(wbits)
            out = stream.decompress(data, want + 1)  # one byte more tells a chunk that holds too much
            ended, more = stream.eof, stream.unused_data
        except (zlib.error, zstd.ZstdError, EOFError) as e:
            raise FormatError(name, f"not a {self.meta.codec} stream ({e})") from None
        problem = _decoded_problem(len(out), want, ended, bool(more))
        if problem is not None:
            raise FormatError(name, problem)
        return np.frombuffer(out, np.uint8)


def _decoded_problem(made: int, want: int, ended: bool, more: bool) -> str | None:
    """What is wrong with a chunk's stream that made `made` bytes (at most
    `want` + 1 are asked for), or None."""
    if made > want:
        return f"decompresses to more than the {plural(want, 'byte')} of a chunk"
    if made < want:
        return f"decompresses to {plural(made, 'byte')}, not the {plural(want, 'byte')} of a chunk"
    if more:
        return "holds more bytes after its compressed stream"
    return None if ended else "its compressed stream is cut short"


def boxes(shape: tuple[int, ...], first: int, last: int, start: int = 0):
    """Elements [first, last) of an array of `shape` in C order, as boxes
    each of which is a run of consecutive elements: (its first element,
    ((start, end) per dimension)); at most two per dimension."""
    if first >= last:
        return
    if not shape:
        yield start, ()
        return
    inner = math.prod(shape[1:])
    a, b = first // inner, last // inner
    full = tuple((0, n) for n in shape[1:])
    if a == b:
        for at, box in boxes(shape[1:], first - a * inner, last - a * inner, start + a * inner):
            yield at, ((a, a + 1), *box)
        return
    if first % inner:
        for at, box in boxes(shape[1:], first - a * inner, inner, start + a * inner):
            yield at, ((a, a + 1), *box)
        a += 1
    if a < b:
        yield start + a * inner, ((a, b), *full)
    if last % inner:
        for at, box in boxes(shape[1:], 0, last - b * inner, start + b * inner):
            yield at, ((b, b + 1), *box)


#: the chunks decoded last: sequential reads through a compressed chunk decode it once
_KEPT = Kept(KEPT_BYTES, lambda chunk: chunk.nbytes)


def find_chunks(meta: ArrayMeta, files: dict[str, Source]) -> dict[tuple[int, ...], Source]:
    """The chunk files among `files` (the folder's, by path relative to
    it), by grid index: only names a grid index makes count."""
    found = {}
    for name, source in files.items():
        index = meta.index_of(name)
        if index is not None:
            found[index] = source
    return found


def array_tensor(name: str, meta: ArrayMeta, chunks: dict[tuple[int, ...], Source], label: str,
                 meta_source: Source) -> Tensor:
    """The tensor record of the array `name` whose chunk files are `chunks`:
    zero-copy where the chunks are stored raw, all present, and split the
    first dimension only; else read chunk by chunk. FormatError where a raw
    chunk's file is not a chunk's size."""
    if meta.codec is None:
        for index, source in chunks.items():
            if source.size != meta.chunk_bytes:
                raise FormatError(f"{label}/{meta.chunk_name(index)}", f"{plural(source.size, 'byte')}, "
                                  f"not the {plural(meta.chunk_bytes, 'byte')} of a raw chunk")
    first = next(iter(chunks.values()), meta_source)
    data = Extent(first, 0, meta.nbytes)
    storage = f"zarr chunks {shape_text(meta.chunks)}, {meta.codec or 'raw'}"
    facts = ((xattrs.SOURCE, label), (xattrs.STORAGE, storage))
    if meta.codec is None and meta.chunks[1:] == meta.shape[1:] and len(chunks) == math.prod(meta.grid):
        rows = meta.chunk_bytes
        keys = [(i,) + (0,) * (len(meta.shape) - 1) for i in range(meta.grid[0])] if meta.shape else [()]
        extents = tuple(Extent(chunks[key], 0, min(rows, meta.nbytes - n * rows)) for n, key in enumerate(keys))
        if len(extents) == 1:
            return Tensor(name, meta.dtype, meta.shape, extents[0])
        return PiecedTensor(name, meta.dtype, meta.shape, data, extents, facts)
    return PiecedTensor(name, meta.dtype, meta.shape, data, (ChunkedArray(meta, chunks, label, meta_source),), facts)
