"""ckptfs: machine learning checkpoints as a FUSE filesystem, and as data
without one: `ckptfs.open(path)` (ckptfs/api.py, docs/api.md)."""

from .version import __version__

__all__ = ["__version__", "diff", "open", "stats"]


def open(source, cache_dir=None, base=None):  # noqa: A001 (as tarfile.open and zipfile do)
    """Open the checkpoint at `source` (file or directory): its metadata is
    read now, tensor bytes when asked for. Returns a `ckptfs.api.Checkpoint`.
    `base`: a PEFT adapter's base model, for its `.merged`."""
    from .api import open_checkpoint

    return open_checkpoint(source, cache_dir, base)


def diff(a, b, **options):
    """Compare the checkpoints `a` and `b` (paths, or Checkpoints opened by
    `ckptfs.open`) as `ckptfs diff` does. Returns a `ckptfs.compare.Diff`:
    the dict `ckptfs diff --json` prints, that a notebook shows as its
    summary and heatmap, and whose `.html()` is the page of `--html`.
    Options as the command's: `maps` ([(old, new)] prefixes of A's names),
    `include`, `exclude` (globs), `tensors_only`, `dequantized`."""
    from .api import Checkpoint, open_checkpoint
    from .compare import compare

    opened = [side if isinstance(side, Checkpoint) else open_checkpoint(side) for side in (a, b)]
    return compare(*opened, **options)


def stats(source, paths=None, sample=None, bins=None, jobs=None, include=(), exclude=(), raw=False):
    """Per tensor min, max, mean, std, NaN/inf/zero counts and histogram of
    the checkpoint `source` (a path, or a `Checkpoint` from `open`), as
    `ckptfs stats` measures them (docs/api.md). Returns a
    `ckptfs.tensor_stats.Stats`: iterable, indexable by tensor name, its
    `as_dict()` the report `ckptfs stats --json` prints. `bins`: the
    histogram's, `ckptfs stats`'s default where None."""
    from .tensor_stats import DEFAULT_BINS, compute

    return compute(source, paths, sample, DEFAULT_BINS if bins is None else bins, jobs, include, exclude, raw)
