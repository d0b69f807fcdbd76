"""ckptfs: machine learning checkpoints as a FUSE filesystem, and as data
without one: `ckptfs.open(path)` (ckptfs/api.py, docs/api.md)."""

from .version import __version__

__all__ = ["__version__", "open"]


def open(source, cache_dir=None, base=None):  # noqa: A001 (as tarfile.open and zipfile do)
    """Open the checkpoint at `source` (file or directory): its metadata is
    read now, tensor bytes when asked for. Returns a `ckptfs.api.Checkpoint`.
    `base`: a PEFT adapter's base model, for its `.merged`."""
    from .api import open_checkpoint

    return open_checkpoint(source, cache_dir, base)
