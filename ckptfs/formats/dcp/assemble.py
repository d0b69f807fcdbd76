"""A tensor assembled from chunks (distributed checkpoints), served in C order.

Chunks that split only the first dimension are laid end to end by the
caller as plain pieces. Any other layout (column shards, 2-D grids) uses
`Assembled`: a read maps its elements to the chunks that hold them and reads
from each only the stretch the request covers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...tree import xattrs
from ...tree.dtypes import DType
from ...tree.gather import read_elements
from ...tree.nodes import Extent
from ...tree.tensors import PiecedTensor

if TYPE_CHECKING:
    import numpy as np


#: Chunks whose rows are at least this many bytes are read row by row straight
#: into the reply (`os.preadv`); narrower ones are read as blocks and copied
#: into place with NumPy, which costs less than thousands of tiny buffers.
SCATTER_MIN_ROW = 1024


@dataclass(frozen=True)
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    piece: object  # the chunk's own C-order bytes, with `read` and `readv`: an Extent, a Gather...


@dataclass(frozen=True)
class Assembled:
    shape: tuple[int, ...]
    itemsize: int
    chunks: tuple[Chunk, ...]

    @property
    def source(self):
        return self.chunks[0].piece.source

    @property
    def length(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def prefetch(self, offset: int, length: int) -> None:
        """Every chunk whole: a range of the tensor touches most of them."""
        for chunk in self.chunks:
            ahead = getattr(chunk.piece, "prefetch", None)
            if ahead is not None:
                ahead(0, chunk.piece.length)

    def read(self, offset: int, length: int) -> bytes | bytearray:
        if len(self.shape) == 2 and min(c.sizes[1] for c in self.chunks) * self.itemsize >= SCATTER_MIN_ROW:
            return self._scatter_rows(offset, length)
        return read_elements(self, offset, length, self._read_2d if len(self.shape) == 2 else self._elements)

    def _scatter_rows(self, offset: int, length: int) -> bytearray:
        """Bytes [offset, offset + length) of a matrix whose chunks have wide
        rows. A chunk's share of the request is one contiguous range of its
        bytes (rows follow each other in it), read straight into its places
        in the reply: one buffer per row, no copy in between."""
        length = max(0, min(length, self.length - offset))
        out = bytearray(length)
        view, end = memoryview(out), offset + length
        row_bytes = self.shape[1] * self.itemsize
        first_row, last_row = offset // row_bytes, -(-end // row_bytes)
        for chunk in self.chunks:
            (r0, c0), (nr, nc) = chunk.offsets, chunk.sizes
            span = nc * self.itemsize
            rows = range(max(first_row, r0), min(last_row, r0 + nr))
            if not rows or not span:
                continue
            # where the chunk's part of each row goes in the reply; only the first
            # and the last row can be cut by the request's ends, or be empty
            first = rows[0] * row_bytes + c0 * self.itemsize - offset
            last = first + (len(rows) - 1) * row_bytes
            buffers = [view[d : d + span] for d in range(first + row_bytes, last, row_bytes)]
            buffers.insert(0, view[max(0, first) : max(0, min(length, first + span))])
            if len(rows) > 1:
                buffers.append(view[last : min(length, last + span)])
            chunk.piece.readv((rows[0] - r0) * span + min(span, max(0, -first)), buffers)
        return out

    def _elements(self, first: int, last: int) -> np.ndarray:
        """Elements [first, last) of any layout: each mapped to its chunk."""
        import numpy as np  # imported on the first read: mounting does not need NumPy

        index = np.unravel_index(np.arange(first, last, dtype=np.int64), self.shape)
        out = np.empty((last - first, self.itemsize), dtype=np.uint8)
        for chunk in self.chunks:
            inside = np.ones(last - first, dtype=bool)
            for axis, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
                inside &= (index[axis] >= start) & (index[axis] < start + size)
            if not inside.any():
                continue
            local = np.ravel_multi_index(
                tuple(index[axis][inside] - start for axis, start in enumerate(chunk.offsets)), chunk.sizes
            )
            low, high = int(local.min()), int(local.max()) + 1
            data = chunk.piece.read(low * self.itemsize, (high - low) * self.itemsize)
            out[inside] = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.itemsize)[local - low]
        return out

    def _read_2d(self, first: int, last: int) -> np.ndarray:
        """Elements [first, last) of a matrix: for each chunk, the block of
        rows the request covers is read in one piece and copied into place."""
        import numpy as np  # imported on the first read: mounting does not need NumPy

        rows, width = self.shape
        row_first, row_last = first // width, -(-last // width)
        out = np.empty((row_last - row_first, width * self.itemsize), dtype=np.uint8)
        for chunk in self.chunks:
            (r0, c0), (nr, nc) = chunk.offsets, chunk.sizes
            top, bottom = max(row_first, r0), min(row_last, r0 + nr)
            if top >= bottom or nc == 0:
                continue
            block = chunk.piece.read((top - r0) * nc * self.itemsize, (bottom - top) * nc * self.itemsize)
            out[top - row_first : bottom - row_first, c0 * self.itemsize : (c0 + nc) * self.itemsize] = np.frombuffer(
                block, dtype=np.uint8
            ).reshape(bottom - top, nc * self.itemsize)
        begin = first - row_first * width
        return out.reshape(-1, self.itemsize)[begin : begin + (last - first)]


def covers_exactly(shape: tuple[int, ...], chunks: list[Chunk]) -> str | None:
    """None if the chunks tile `shape` with no gap or overlap, else why not."""
    for c in chunks:
        if len(c.offsets) != len(shape) or any(o + s > n for o, s, n in zip(c.offsets, c.sizes, shape)):
            return f"chunk at {list(c.offsets)} of size {list(c.sizes)} lies outside the tensor {list(shape)}"
    if shape:  # a sweep along the first dimension: only chunks whose rows meet can overlap
        active: list[Chunk] = []
        for c in sorted((c for c in chunks if math.prod(c.sizes)), key=lambda c: c.offsets[0]):
            active = [a for a in active if a.offsets[0] + a.sizes[0] > c.offsets[0]]
            for a in active:
                if all(oa < ob + sb and ob < oa + sa for oa, sa, ob, sb in zip(a.offsets, a.sizes, c.offsets, c.sizes)):
                    return f"chunks at {list(a.offsets)} and {list(c.offsets)} overlap"
            active.append(c)
    if sum(math.prod(c.sizes) for c in chunks) != math.prod(shape):
        return "the chunks do not cover the whole tensor"
    return None


def row_pieces(shape: tuple[int, ...], chunks: list[Chunk]) -> list | None:
    """The chunks' pieces in order when they split only the first dimension
    (or one chunk holds the whole tensor, 0-d tensors included)."""
    if len(chunks) == 1 and chunks[0].sizes == shape:
        return [chunks[0].piece]
    if not shape or any(c.offsets[1:] != (0,) * (len(shape) - 1) or c.sizes[1:] != shape[1:] for c in chunks):
        return None
    return [c.piece for c in sorted(chunks, key=lambda c: c.offsets[0])]


def assembled_tensor(name: str, dtype: DType, shape: tuple[int, ...], chunks: list[Chunk], first: Extent) -> PiecedTensor:
    """The record of a tensor read from `chunks`, which cover it exactly
    (`covers_exactly`): laid end to end where they split its first
    dimension only, else `Assembled`. `first` is where its first chunk lies,
    which the index shows; its file lists the chunks (`user.ckptfs.chunks`)."""
    pieces = row_pieces(shape, chunks) or [Assembled(shape, dtype.bits // 8, tuple(chunks))]
    listed = json.dumps([[list(c.offsets), list(c.sizes)] for c in chunks])
    return PiecedTensor(name, dtype, shape, first, tuple(pieces), ((xattrs.CHUNKS, listed),))
