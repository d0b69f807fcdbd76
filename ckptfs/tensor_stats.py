"""`ckptfs stats`: per tensor min, max, mean, std, NaN, ±inf and zero
counts and a histogram, in bounded memory, over every format ckptfs reads
(docs/cli.md, "ckptfs stats").

Each tensor's `.npy` is read as a mount serves it (`Checkpoint.read_range`),
a chunk of whole elements at a time, so memory stays within a few chunks
per worker whatever the tensor's size and however the format stores it
(memory-mapped, gathered, assembled from shards, decompressed, dequantized).
bfloat16 and float8 are decoded here (no ml_dtypes needed): bfloat16 by
shifting its bits into a float32, an 8-bit float by a table of its 256
values built from its bit layout.

NaN and ±inf are counted apart and left out of min, max, mean, std and the
histogram. Mean and std (the population std, NumPy's default ddof=0) are
accumulated in float64, chunk moments combined by Chan's parallel formula.
The histogram has `bins` equal bins over [min, max] of the counted finite
values (a second read of the tensor, unless its counted elements fit one
chunk); a constant tensor's single value gets [v - 0.5, v + 0.5], as
`np.histogram` gives it.
"""

from __future__ import annotations

import fnmatch
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .api import Checkpoint, TensorInfo, open_checkpoint
from .errors import CkptfsError
from .humanize import plural
from .tree import npy
from .tree.dtypes import BY_NAME

#: stored bytes read at a time (rounded down to whole elements)
CHUNK_BYTES = 8 << 20
#: contiguous runs a sampled tensor is read in, spread evenly over it
SAMPLE_RUNS = 16
DEFAULT_BINS = 32
#: the longest NPY header read (NumPy's own reader refuses longer ones)
MAX_HEADER = 1 << 16
#: the largest `--bins` (each tensor's counts are kept in the report)
MAX_BINS = 10_000


# --- decoding stored bits into numbers -------------------------------------

#: the 8-bit floats: (exponent bits, mantissa bits, bias, which codes are not finite)
#: "ieee": all-ones exponent is inf (mantissa 0) or NaN; "fn": only all-ones is NaN, no inf;
#: "fnuz": only 0x80 (negative zero's code) is NaN, no inf; "e8m0": 2**(e-127), 0xff NaN
FLOAT8 = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
    "float8_e8m0fnu": (8, 0, 127, "e8m0"),
}


def float8_table(name: str) -> np.ndarray:
    """The 256 float32 values of an 8-bit float type, indexed by its byte."""
    exponent_bits, mantissa_bits, bias, kind = FLOAT8[name]
    values = np.empty(256, np.float32)
    for code in range(256):
        if kind == "e8m0":
            values[code] = math.nan if code == 0xFF else math.ldexp(1.0, code - bias)
            continue
        sign = -1.0 if code >> 7 else 1.0
        exponent = (code >> mantissa_bits) & ((1 << exponent_bits) - 1)
        mantissa = code & ((1 << mantissa_bits) - 1)
        top = exponent == (1 << exponent_bits) - 1
        if (kind == "ieee" and top and mantissa) or (kind == "fn" and code & 0x7F == 0x7F) or (
                kind == "fnuz" and code == 0x80):
            values[code] = math.nan
        elif kind == "ieee" and top:
            values[code] = sign * math.inf
        elif exponent == 0:  # subnormal (and zero)
            values[code] = sign * math.ldexp(mantissa, 1 - bias - mantissa_bits)
        else:
            values[code] = sign * math.ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits)
    return values


@dataclass(frozen=True)
class Decoder:
    """How a tensor's stored bytes become numbers: the stored element's
    NumPy type, and what turns an array of them into values."""

    stored: np.dtype
    values: Callable[[np.ndarray], np.ndarray]


def _bfloat16(bits: np.ndarray) -> np.ndarray:
    return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)  # bfloat16 is float32's upper half


def decoder(descr: str) -> Decoder | None:
    """The decoder of an NPY descr, or None where its elements are not
    numbers (raw bytes, strings, records)."""
    if descr == "bfloat16":
        return Decoder(np.dtype("<u2"), _bfloat16)
    if descr in FLOAT8:
        table = float8_table(descr)
        return Decoder(np.dtype("u1"), table.__getitem__)
    try:
        dtype = np.dtype(descr)
    except TypeError:
        return None
    if dtype.kind == "b":
        return Decoder(dtype, lambda a: a.view(np.uint8))
    if dtype.kind in "iuf":
        return Decoder(dtype, lambda a: a)
    if dtype.kind == "c":  # complex numbers have no order: their magnitudes are measured
        return Decoder(dtype, np.abs)
    return None


# --- accumulating one tensor's statistics ------------------------------------

@dataclass
class Moments:
    """Counts, extremes and float64 moments of the values seen so far."""

    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0  # the sum of squared deviations from the mean
    low: float | int | None = None
    high: float | int | None = None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zeros: int = 0

    def add(self, values: np.ndarray) -> np.ndarray:
        """Count a chunk of values in; returns its finite ones (for the histogram)."""
        if values.size == 0:
            return values
        self.zeros += values.size - int(np.count_nonzero(values))
        low, high = values.min(), values.max()
        if values.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):  # NaN wins min and max
            nan = np.isnan(values)
            self.nan += int(np.count_nonzero(nan))
            self.posinf += int(np.count_nonzero(values == np.inf))
            self.neginf += int(np.count_nonzero(values == -np.inf))
            values = values[np.isfinite(values)]
            if values.size == 0:
                return values
            low, high = values.min(), values.max()
        self._extremes(low.item(), high.item())
        wide = values.astype(np.float64)
        mean = float(wide.sum()) / wide.size
        wide -= mean
        self._combine(wide.size, mean, float(np.dot(wide, wide)))
        return values

    def _extremes(self, low, high) -> None:
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def _combine(self, count: int, mean: float, m2: float) -> None:
        """Chan, Golub and LeVeque's update of the pooled mean and M2."""
        total = self.finite + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.finite * count / total
        self.finite = total

    def report(self) -> dict:
        seen = self.finite > 0
        return {"min": self.low, "max": self.high, "mean": self.mean if seen else None,
                "std": math.sqrt(self.m2 / self.finite) if seen else None,
                "nan": self.nan, "posinf": self.posinf, "neginf": self.neginf, "zeros": self.zeros}


#: elements binned at a time: the work arrays stay in the processor's cache
BIN_BLOCK = 1 << 16


def bin_counts(values: np.ndarray, lo: np.float64, hi: np.float64, bins: int) -> np.ndarray:
    """`np.histogram(values, bins, (lo, hi))[0]`, in half its time: each
    value's bin is guessed from its position, (v - lo) * bins / (hi - lo),
    and only a value whose guess lies within rounding of a bin's border is
    placed by comparing it with the edges, which decide (edges[i] <= v <
    edges[i + 1], the last bin closed) as they decide for NumPy."""
    edges = np.linspace(lo, hi, bins + 1)
    scale = bins / (hi - lo)
    # how far a guess may stray from the true position, in bins: a few roundings of the largest magnitude
    tolerance = 1e-9 + 8 * np.finfo(np.float64).eps * bins * max(abs(lo), abs(hi)) / (hi - lo)
    if not tolerance <= 0.25:  # a range within rounding of its magnitude: NumPy's own way
        return np.histogram(values, bins, (lo, hi))[0]
    counts = np.zeros(bins, np.int64)
    size = min(BIN_BLOCK, values.size)
    position, index, stray = np.empty(size), np.empty(size, np.intp), np.empty(size)
    for start in range(0, values.size, BIN_BLOCK):
        block = values[start:start + BIN_BLOCK]
        guess, bin_of, off = position[:block.size], index[:block.size], stray[:block.size]
        np.subtract(block, lo, out=guess, dtype=np.float64)
        guess *= scale
        bin_of[:] = guess  # truncated: every value is at least lo
        np.rint(guess, out=off)
        off -= guess
        np.abs(off, out=off)
        near = np.flatnonzero(off < tolerance)
        if near.size:
            bin_of[near] = np.searchsorted(edges, block[near].astype(np.float64), side="right") - 1
        np.minimum(bin_of, bins - 1, out=bin_of)
        counts += np.bincount(bin_of, minlength=bins)
    return counts


def histogram_range(low, high) -> tuple[np.float64, np.float64]:
    """[low, high] as float64 (so that `np.histogram` bins in float64
    whatever the data's type), widened by 0.5 each way when they are equal."""
    low, high = np.float64(low), np.float64(high)
    return (low - 0.5, high + 0.5) if low == high else (low, high)


# --- reading a tensor ------------------------------------------------------

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
        gap = (elements - sample) / max(1, count - 1)  # what is not read, in equal gaps between the runs
        spans = [(sum(lengths[:i]) + round(i * gap), lengths[i]) for i in range(count)]
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


def tensor_stats(ckpt: Checkpoint, where: Layout, sample: int | None, bins: int) -> dict:
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
        kept = (values if clean else _finite(values) for values in chunks(ckpt, where, reads))
    return {"counted": sum(count for _, count in reads), **moments.report(),
            "histogram": _histogram(moments, kept, bins) if moments.finite else None}


def _histogram(moments: Moments, finite: Iterable[np.ndarray], bins: int) -> dict:
    lo, hi = histogram_range(moments.low, moments.high)
    if moments.low == moments.high:  # one value: its bin, found without reading again
        counts = np.histogram(np.array([moments.low], np.float64), bins, (lo, hi))[0] * moments.finite
    else:
        counts = sum((bin_counts(values, lo, hi, bins) for values in finite), np.zeros(bins, np.int64))
    return {"edges": np.linspace(lo, hi, bins + 1).tolist(), "counts": counts.tolist()}


def _finite(values: np.ndarray) -> np.ndarray:
    return values if values.dtype.kind != "f" else values[np.isfinite(values)]


# --- the report ------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """A tensor to measure: where its values lie, or why that is unknown."""

    info: TensorInfo
    dequantized: bool
    where: Layout | None
    error: str | None


def _task(ckpt: Checkpoint, info: TensorInfo, dequantized: bool) -> Task:
    """Made before the workers start, one tensor after another: finding a
    file fills the folders of the tree above it (a `LazyDir`), which two
    threads must not do at once."""
    try:
        return Task(info, dequantized, layout(ckpt, info), None)
    except (CkptfsError, OSError, ValueError) as e:
        return Task(info, dequantized, None, _one_line(e))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _entry(ckpt: Checkpoint, task: Task, sample: int | None, bins: int) -> dict:
    info = task.info
    head = {"name": info.name, "path": info.path, "dtype": info.dtype, "shape": list(info.shape),
            "elements": math.prod(info.shape), "dequantized": task.dequantized}
    failed = {"counted": 0, **Moments().report(), "histogram": None}
    if task.where is None:
        return {**head, **failed, "error": task.error}
    try:
        return {**head, **tensor_stats(ckpt, task.where, sample, bins), "error": None}
    except (CkptfsError, OSError, ValueError) as e:
        return {**head, **failed, "error": _one_line(e)}


def selected(ckpt: Checkpoint, paths: list[str], include: list[str], exclude: list[str],
             raw: bool) -> list[tuple[TensorInfo, bool]]:
    """(tensor, whether it is a dequantized view) of the tensors asked for,
    in the checkpoint's order: all, or those `paths` name (a dotted name,
    a `.npy` path of the tree, or a folder of it), matching the globs."""
    stored = {t.path for t in ckpt.tensors()}
    tensors = [(t, t.path not in stored) for t in ckpt.tensors(dequantized=not raw)]
    if paths:
        wanted = set()
        for asked in paths:
            found = _named(tensors, asked)
            if not found:
                raise CkptfsError(f"{ckpt.path}: {asked}: no such tensor, tensor file or folder of tensors")
            wanted |= found
        tensors = [t for t in tensors if t[0].path in wanted]
    return [t for t in tensors if _matches(t[0], include, exclude)]


def _named(tensors: list[tuple[TensorInfo, bool]], asked: str) -> set[str]:
    """The paths of the tensors one PATH argument names: a tensor by its
    name or path, or every tensor below a folder of the tree or a dotted
    prefix of names (`encoder` for `encoder.0.weight`)."""
    folder = asked.strip("/")
    return {t.path for t, _ in tensors
            if asked in (t.name, t.path) or folder in ("", ".") or t.path.startswith(folder + "/")
            or t.name.startswith(asked + ".")}


def _matches(info: TensorInfo, include: list[str], exclude: list[str]) -> bool:
    def any_of(globs):
        return any(fnmatch.fnmatchcase(form, g) for form in (info.name, info.path) for g in globs)

    return (not include or any_of(include)) and not any_of(exclude)


class Stats:
    """The statistics of a checkpoint's tensors (`ckptfs.stats`): iterable
    (each tensor's dict, in the checkpoint's order), indexable by tensor
    name; `as_dict()` is the report `ckptfs stats --json` prints."""

    def __init__(self, source: str, format: str, sample: int | None, bins: int, tensors: list[dict]):
        self.source, self.format, self.sample, self.bins = source, format, sample, bins
        self.tensors = tensors
        self._by_name = {t["name"]: t for t in tensors}

    def as_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "sample": self.sample, "bins": self.bins,
                "tensors": self.tensors}

    @property
    def errors(self) -> list[dict]:
        return [t for t in self.tensors if t["error"] is not None]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, name: str) -> dict:
        return self._by_name[name]

    def __repr__(self) -> str:
        return f"<ckptfs.Stats {self.source!r}: {plural(len(self.tensors), 'tensor')}>"


def compute(source: str | os.PathLike | Checkpoint, paths: list[str] | None = None, sample: int | None = None,
            bins: int = DEFAULT_BINS, jobs: int | None = None, include: list[str] = (), exclude: list[str] = (),
            raw: bool = False) -> Stats:
    """The statistics of the tensors of `source` (docs/api.md), `jobs`
    tensors at a time (threads: reads and NumPy release the GIL)."""
    if sample is not None and sample < 1:
        raise CkptfsError(f"--sample {sample}: give at least one element per tensor")
    if not 1 <= bins <= MAX_BINS:
        raise CkptfsError(f"--bins {bins}: give between 1 and {MAX_BINS:,} bins")
    ckpt = source if isinstance(source, Checkpoint) else open_checkpoint(source)
    tasks = [_task(ckpt, info, dequantized) for info, dequantized in
             selected(ckpt, list(paths or ()), list(include), list(exclude), raw)]
    workers = max(1, jobs or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        entries = list(pool.map(lambda task: _entry(ckpt, task, sample, bins), tasks))
    return Stats(ckpt.path, ckpt.format, sample, bins, entries)


# --- the text report -------------------------------------------------------

COLUMNS = ("name", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf", "zeros")


def _number(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.6g}"


def _row(entry: dict) -> list[str]:
    """The cells of a tensor's row; a tensor not measured: its first three and the error."""
    shape = "x".join(map(str, entry["shape"])) or "scalar"
    if entry["error"] is not None:
        return [entry["name"], entry["dtype"], shape, f"error: {entry['error']}"]
    dtype = entry["dtype"] + (" (dequantized)" if entry["dequantized"] else "")
    measures = [_number(entry[key]) for key in ("min", "max", "mean", "std")]
    counts = [f"{entry['nan']:,}", f"{entry['posinf'] + entry['neginf']:,}", f"{entry['zeros']:,}"]
    return [entry["name"], dtype, shape, *measures, *counts]


def text(stats: Stats) -> str:
    """One row per tensor, aligned (names left, numbers right); a `!` marks
    a tensor holding NaN or inf, and the lines after the table name them,
    the tensors not measured, and a sample."""
    rows = [list(COLUMNS)] + [_row(entry) for entry in stats]
    widths = [max(len(row[i]) for row in rows if i < len(row) - (len(row) < len(COLUMNS)))
              for i in range(len(COLUMNS))]
    flags = [" "] + ["!" if e["error"] is None and _odd(e) else " " for e in stats]
    lines = [f"{flag} " + "  ".join(cell.ljust(w) if i < 3 or len(row) < len(COLUMNS) else cell.rjust(w)
                                     for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for flag, row in zip(flags, rows)]
    odd = [e["name"] for e in stats if e["error"] is None and _odd(e)]
    if odd:
        lines.append(f"! {plural(len(odd), 'tensor')} with NaN or inf: {', '.join(odd)}")
    if stats.errors:
        lines.append(f"{plural(len(stats.errors), 'tensor')} not measured (error above)")
    raw = [e["name"] for e in stats if e["error"] is None and e["counted"] == 0 and e["elements"]]
    if raw:
        lines.append(f"served as raw bytes, not measured: {', '.join(raw)}")
    if stats.sample is not None:
        lines.append(f"sampled: about {stats.sample:,} elements of each tensor, not all (--sample)")
    return "\n".join(lines)


def _odd(entry: dict) -> bool:
    return bool(entry["nan"] or entry["posinf"] or entry["neginf"])
