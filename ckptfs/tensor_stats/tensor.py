"""Reading one tensor for its measures: its `.npy` as a mount serves it
(`Checkpoint.read_range`), a chunk of whole elements at a time, every
element or a sample's runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..api import Checkpoint, TensorInfo
from ..errors import CkptfsError
from ..humanize import plural
from ..tree import npy
from ..tree.dtypes import BY_NAME
from .decode import Decoder, decoder
from .measure import Moments, finite, histogram

#: stored bytes read at a time (rounded down to whole elements)
CHUNK_BYTES = 8 << 20
#: contiguous runs a sampled tensor is read in, spread evenly over it
SAMPLE_RUNS = 16
#: the longest NPY header read (NumPy's own reader refuses longer ones)
MAX_HEADER = 1 << 16


@dataclass(frozen=True)
class Layout:
    """Where a tensor's elements lie in its `.npy` and how to decode them."""

    path: str
    start: int  # the data's offset, past the header
    elements: int
    decoder: Decoder | None


def layout(ckpt: Checkpoint, info: TensorInfo) -> Layout:
    """Where the data of a tensor's `.npy` starts, and its decoder, from its
    header (which ckptfs makes for most formats: no source is read)."""
    head = ckpt.read_range(info.path, 0, 12)
    if head[:6] == npy.MAGIC[:6] and len(head) == 12:  # the header's length: 2 bytes in NPY 1.0, 4 after
        length = 10 + int.from_bytes(head[8:10], "little") if head[6] == 1 else 12 + int.from_bytes(head[8:12], "little")
        head = ckpt.read_range(info.path, 0, min(length, MAX_HEADER))
    try:
        descr, shape, start = npy.parse_header(head, info.path)
    except ValueError as e:
        raise CkptfsError(f"{ckpt.path}: {e}") from None
    raw = info.dtype in BY_NAME and BY_NAME[info.dtype].npy_descr is None  # served as raw bytes (docs/dtypes.md)
    return Layout(info.path, start, math.prod(shape), None if raw else decoder(descr))


def runs(elements: int, per_chunk: int, sample: int | None) -> list[tuple[int, int]]:
    """(first element, count) of the reads: the whole tensor chunk by chunk,
    or about `sample` elements in `SAMPLE_RUNS` runs spread evenly over it
    (the same runs every time)."""
    if sample is None or sample >= elements:
        spans = [(0, elements)]
    else:
        count = min(SAMPLE_RUNS, sample)
        lengths = [sample // count + (i < sample % count) for i in range(count)]  # `sample` in all
        # what is not read, in equal gaps between the runs; in integers (a float's spacing past 2^53 elements
        # would move the last run past the end), the last run ending at the last element
        skipped, gaps = elements - sample, max(1, count - 1)
        spans = [(sum(lengths[:i]) + i * skipped // gaps, lengths[i]) for i in range(count)]
    return [(first + k, min(per_chunk, length - k)) for first, length in spans for k in range(0, length, per_chunk)]


def chunks(ckpt: Checkpoint, where: Layout, reads: list[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The values of each read, decoded."""
    size = where.decoder.stored.itemsize
    for first, count in reads:
        data = ckpt.read_range(where.path, where.start + first * size, count * size)
        if len(data) != count * size:
            raise CkptfsError(f"{ckpt.path}: {where.path}: {plural(len(data), 'byte')} where "
                              f"{plural(count * size, 'byte')} were expected at element {first:,} (truncated?)")
        yield where.decoder.values(np.frombuffer(data, where.decoder.stored))


def measured(ckpt: Checkpoint, where: Layout, sample: int | None, bins: int) -> dict:
    """The measures of one tensor (its entry of the report, less its name)."""
    if where.decoder is None:  # raw bytes: no numbers to measure
        return {"counted": 0, **Moments().report(), "histogram": None}
    reads = runs(where.elements, max(1, CHUNK_BYTES // where.decoder.stored.itemsize), sample)
    moments = Moments()
    if len(reads) == 1:  # one chunk: its finite values kept for the bins
        kept = [moments.add(values) for values in chunks(ckpt, where, reads)]
    else:  # the bins need min and max: the chunks are read again
        for values in chunks(ckpt, where, reads):
            moments.add(values)
        clean = not (moments.nan or moments.posinf or moments.neginf)
        kept = (values if clean else finite(values) for values in chunks(ckpt, where, reads))
    return {"counted": sum(count for _, count in reads), **moments.report(),
            "histogram": histogram(moments, kept, bins) if moments.finite else None}
