"""`ckptfs stats`: per tensor min, max, mean, std, NaN, ±inf and zero
counts and a histogram, in bounded memory, over every format ckptfs reads
(docs/cli.md, "ckptfs stats"); `ckptfs.stats` returns its `Stats`.

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
`np.histogram` gives it. Where NumPy cannot make the bins, the tensor keeps
its other measures (measure.histogram says what it gets instead).
"""

from __future__ import annotations

import fnmatch
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

from ..api import Checkpoint, TensorInfo, open_checkpoint
from ..errors import CkptfsError
from ..humanize import plural
from .measure import Moments
from .tensor import Layout, layout, measured

DEFAULT_BINS = 32
#: the largest `--bins` (each tensor's counts are kept in the report)
MAX_BINS = 10_000


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
        return {**head, **measured(ckpt, task.where, sample, bins), "error": None}
    except (CkptfsError, OSError, ValueError) as e:
        return {**head, **failed, "error": _one_line(e)}


def blocks(ckpt: Checkpoint) -> list[TensorInfo]:
    """A GGUF's block-quantized tensors as `--raw` lists them: no stored
    tensor holds them (their blocks are a `raw.bin` no NumPy dtype reads),
    so each is its blocks' path, its GGML type (Q4_K...) as its dtype, and
    the shape of its values."""
    return [TensorInfo(q.name, q.raw_path, q.kind, tuple(q.shape), math.prod(q.raw_shape))
            for q in ckpt._parsed.quantized if q.raw_path is not None and not q.members]


def unmeasured(info: TensorInfo) -> str:
    """Why `--raw` has no measures for a GGUF's block-quantized tensor."""
    return f"{info.dtype} blocks: no raw measure; leave out --raw for its values"


def selected(ckpt: Checkpoint, paths: list[str], include: list[str], exclude: list[str],
             raw: bool) -> list[tuple[TensorInfo, bool]]:
    """(tensor, whether it is a dequantized view) of the tensors asked for,
    in the checkpoint's order: all, or those `paths` name (a dotted name,
    a `.npy` path of the tree, or a folder of it), matching the globs.
    With `raw`, a GGUF's block-quantized tensors are among them (`blocks`),
    to be said unmeasured, not left out."""
    stored = {t.path for t in ckpt.tensors()}
    tensors = [(t, t.path not in stored) for t in ckpt.tensors(dequantized=not raw)]
    if raw:
        tensors += [(t, False) for t in blocks(ckpt)]
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

    def _repr_html_(self) -> str:
        """What a notebook shows: the tensors with NaN or inf called out, and
        the first rows of the table with their histograms (report/stats_page.py;
        bounded however many tensors there are)."""
        from ..report import stats_page

        return stats_page.fragment(self.as_dict())

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
    unread = {t.path for t in blocks(ckpt)} if raw else set()
    tasks = [Task(info, False, None, unmeasured(info)) if info.path in unread else _task(ckpt, info, dequantized)
             for info, dequantized in selected(ckpt, list(paths or ()), list(include), list(exclude), raw)]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))  # each holds up to ~130 MiB of work (docs/cli.md)
    with ThreadPoolExecutor(workers) as pool:
        entries = list(pool.map(lambda task: _entry(ckpt, task, sample, bins), tasks))
    return Stats(ckpt.path, ckpt.format, sample, bins, entries)
