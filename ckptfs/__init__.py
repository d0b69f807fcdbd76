"""ckptfs: machine learning checkpoints as a FUSE filesystem, and as data
without one: `ckptfs.open(path)` (ckptfs/api.py, docs/api.md)."""

from .version import __version__

__all__ = ["__version__", "diff", "open"]


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

