"""Strided views served in C order, gathered on read in bounded memory.

A transposed or sliced tensor (torch.save keeps views as they are) lies in
its storage with strides. A read of bytes [a, b) of its C-order image maps
to scattered elements of the storage; they are fetched as clusters of
nearby elements (one pread per cluster), so memory and reads stay
proportional to the request, never to the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sources.base import Source, scatter

if TYPE_CHECKING:
    import numpy as np

#: Elements closer than this in the storage are fetched by one read.
GAP_BYTES = 4096


def read_elements(piece, offset: int, length: int, elements) -> bytes:
    """Bytes [offset, offset + length) of a piece served in C order, where
    `elements(first, last)` returns its elements [first, last) as rows of
    `itemsize` bytes. Reads past the end are short, as at EOF."""
    length = max(0, min(length, piece.length - offset))
    if length == 0:
        return b""
    first = offset // piece.itemsize
    last = -(-(offset + length) // piece.itemsize)
    skip = offset - first * piece.itemsize
    return elements(first, last).reshape(-1)[skip : skip + length].tobytes()


@dataclass(frozen=True)
class Gather:
    source: Source
    base: int  # byte offset of storage element 0 in the source
    itemsize: int
    start: int  # storage offset of the view, in elements
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements

    @property
    def length(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        scatter(self.read(offset, sum(map(len, buffers))), buffers)

    def prefetch(self, offset: int, length: int) -> None:
        """The storage bytes the whole view spans."""
        if math.prod(self.shape):
            span = sum((n - 1) * s for n, s in zip(self.shape, self.strides)) + 1
            self.source.prefetch(self.base + self.start * self.itemsize, span * self.itemsize)

    def read(self, offset: int, length: int) -> bytes:
        return read_elements(self, offset, length, self._elements)

    def _elements(self, first: int, last: int) -> np.ndarray:
        import numpy as np  # imported on the first read: mounting does not need NumPy

        if self.shape and self.strides[-1] == 1 and self.shape[-1] > 1:
            return self._rows(first, last)
        index = np.unravel_index(np.arange(first, last, dtype=np.int64), self.shape)
        elements = np.full(last - first, self.start, dtype=np.int64)
        for axis_index, stride in zip(index, self.strides):
            elements += axis_index * stride
        return self._fetch(elements)

    def _rows(self, first: int, last: int) -> np.ndarray:
        """Elements [first, last) when rows are contiguous in the storage
        (the last stride is 1): whole rows are copied, no per-element work."""
        import numpy as np  # imported on the first read: mounting does not need NumPy

        width = self.shape[-1]
        row_first, row_last = first // width, -(-last // width)
        starts = np.full(row_last - row_first, self.start, dtype=np.int64)
        if len(self.shape) > 1:
            index = np.unravel_index(np.arange(row_first, row_last, dtype=np.int64), self.shape[:-1])
            for axis_index, stride in zip(index, self.strides[:-1]):
                starts += axis_index * stride
        low, high = int(starts.min()), int(starts.max()) + width
        begin = first - row_first * width
        if high - low > 2 * len(starts) * width + GAP_BYTES // self.itemsize:
            # rows far apart (a few rows of a big storage): fetch them, never the span between
            elements = (starts[:, None] + np.arange(width, dtype=np.int64)[None, :]).reshape(-1)
            return self._fetch(elements)[begin : begin + (last - first)]
        span = self.source.read_exact(self.base + low * self.itemsize, (high - low) * self.itemsize)
        flat = np.frombuffer(span, dtype=np.uint8)
        steps = np.diff(starts)
        if len(starts) == 1 or (steps > 0).all() and (steps == steps[0]).all():
            # evenly spaced rows (any matrix view): a strided view, copied at memory speed
            step = int(steps[0]) if len(steps) else width
            view = np.lib.stride_tricks.as_strided(
                flat[(int(starts[0]) - low) * self.itemsize :],
                shape=(len(starts), width * self.itemsize),
                strides=(step * self.itemsize, 1),
                writeable=False,
            )
            rows = np.ascontiguousarray(view).reshape(-1, self.itemsize)
        else:
            flat = flat.reshape(-1, self.itemsize)
            rows = flat[(starts - low)[:, None] + np.arange(width)[None, :]].reshape(-1, self.itemsize)
        return rows[begin : begin + (last - first)]

    def _fetch(self, elements: np.ndarray) -> np.ndarray:
        """The `itemsize`-byte rows at storage elements `elements`, in order."""
        import numpy as np  # imported on the first read: mounting does not need NumPy

        wanted = np.unique(elements)
        gap = max(1, GAP_BYTES // self.itemsize)
        breaks = np.nonzero(np.diff(wanted) > gap)[0] + 1
        starts = wanted[np.concatenate(([0], breaks))]
        ends = wanted[np.concatenate((breaks - 1, [len(wanted) - 1]))] + 1
        chunks = [
            self.source.read_exact(self.base + int(s) * self.itemsize, int(e - s) * self.itemsize)
            for s, e in zip(starts, ends)
        ]
        buffer = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(-1, self.itemsize)
        chunk_base = np.concatenate(([0], np.cumsum(ends - starts)[:-1]))
        which = np.searchsorted(starts, elements, side="right") - 1
        return buffer[chunk_base[which] + (elements - starts[which])]
