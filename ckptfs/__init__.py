"""ckptfs: machine learning checkpoints as a FUSE filesystem."""

__version__ = "0.1.0"
