"""Strided views and chunked tensors served in C order, against NumPy, for
every offset and several lengths (including reads past the end)."""

import numpy as np
import pytest

from ckptfs.formats.dcp import assemble
from ckptfs.formats.dcp.assemble import Assembled, Chunk, covers_exactly, row_pieces
from ckptfs.sources.base import Source
from ckptfs.tree.gather import Gather
from ckptfs.tree.nodes import Extent


class MemorySource(Source):
    path = "memory"

    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)

    def pread(self, offset, length):
        return self.data[offset : offset + length]


BASE = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)


@pytest.mark.parametrize(
    "view",
    [BASE[:, 1:3, :], BASE[1], BASE[::2, :, 1:4], BASE.transpose(1, 0, 2), BASE.transpose(2, 0, 1), BASE[:, 3, ::2]],
    ids=["slice", "row", "every-other", "swap01", "rotate", "column-every-other"],
)
def test_gather_matches_numpy(view):
    source = MemorySource(b"HEAD" + BASE.tobytes())
    start = (view.__array_interface__["data"][0] - BASE.__array_interface__["data"][0]) // 4
    gather = Gather(source, 4, 4, start, view.shape, tuple(s // 4 for s in view.strides))
    want = np.ascontiguousarray(view).tobytes()
    assert gather.length == len(want)
    for offset in range(len(want) + 3):
        for length in (1, 3, 7, 50, 1000):
            assert gather.read(offset, length) == want[offset : offset + length]


def _chunked(full: np.ndarray, boxes):
    """Chunks of `full` stored one after another in a memory source."""
    pieces = [np.ascontiguousarray(full[tuple(slice(o, o + s) for o, s in zip(off, size))]) for off, size in boxes]
    source = MemorySource(b"".join(p.tobytes() for p in pieces))
    chunks, position = [], 0
    for (off, size), piece in zip(boxes, pieces):
        chunks.append(Chunk(tuple(off), tuple(size), Extent(source, position, piece.nbytes)))
        position += piece.nbytes
    return chunks


@pytest.mark.parametrize(
    "shape, boxes",
    [
        ((5, 7), [((0, 0), (5, 3)), ((0, 3), (5, 4))]),  # column shards (2-D path)
        ((4, 6), [((0, 0), (2, 3)), ((0, 3), (2, 3)), ((2, 0), (2, 6))]),  # a grid
        ((2, 6, 3), [((0, 0, 0), (2, 2, 3)), ((0, 2, 0), (2, 4, 3))]),  # a middle dimension (general path)
    ],
)
@pytest.mark.parametrize("scatter", [False, True], ids=["numpy-copy", "scatter-rows"])
def test_assembled_matches_numpy(shape, boxes, scatter, monkeypatch):
    monkeypatch.setattr(assemble, "SCATTER_MIN_ROW", 1 if scatter else 1 << 30)
    full = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    chunks = _chunked(full, boxes)
    assert covers_exactly(shape, chunks) is None
    assert row_pieces(shape, chunks) is None
    assembled = Assembled(shape, 2, tuple(chunks))
    want = full.tobytes()
    for offset in range(len(want) + 2):
        for length in (1, 5, 33, 999):
            assert assembled.read(offset, length) == want[offset : offset + length]


def test_row_shards_are_laid_end_to_end_and_bad_tilings_are_named():
    full = np.arange(12, dtype=np.int32).reshape(4, 3)
    rows = _chunked(full, [((2, 0), (2, 3)), ((0, 0), (2, 3))])
    assert b"".join(p.read(0, p.length) for p in row_pieces((4, 3), rows)) == full.tobytes()
    gap = _chunked(full, [((0, 0), (2, 3))])
    assert covers_exactly((4, 3), gap) == "the chunks do not cover the whole tensor"
    overlap = _chunked(full, [((0, 0), (3, 3)), ((2, 0), (2, 3))])
    assert "overlap" in covers_exactly((4, 3), overlap)
    outside = _chunked(np.zeros((5, 3), np.int32), [((0, 0), (5, 3))])
    assert "outside the tensor" in covers_exactly((4, 3), outside)


class CountingSource(MemorySource):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.read_bytes = 0

    def pread(self, offset, length):
        self.read_bytes += length
        return super().pread(offset, length)


def test_rows_far_apart_are_fetched_without_the_span_between():
    """A small view of a big storage (a few rows, far apart) reads its rows,
    not the storage between them, however the request is cut."""
    storage = np.arange(4_000_000, dtype=np.uint8) * 7
    view = np.lib.stride_tricks.as_strided(storage, shape=(4, 2), strides=(1_000_000, 1))
    source = CountingSource(storage.tobytes())
    gather = Gather(source, 0, 1, 0, (4, 2), (1_000_000, 1))
    want = np.ascontiguousarray(view).tobytes()
    for offset in range(len(want)):
        assert gather.read(offset, 8) == want[offset:]
    assert source.read_bytes < 1000  # 8 reads of at most 8 bytes each; the span is 3 MB
