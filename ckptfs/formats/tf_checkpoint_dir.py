"""Folders of `tf.train.Checkpoint` (or `tf.compat.v1.train.Saver`) saves:
a `checkpoint` file (the text CheckpointState naming the latest save) beside
the bundles, `ckpt-1.index` + `ckpt-1.data-00000-of-00001`, ...

Each bundle is shown as a folder named after its prefix (`ckpt-1/`: its
tree as formats/tf_bundle.py shows it), every other file as it is, the
bundles' own files only in `.ckptfs/raw/`. Read-only.
"""

from __future__ import annotations

from ..sources.directory import Directory
from ..tree import names
from ..tree.checkpoint import Checkpoint
from .base import DirectoryFormat
from .tf_bundle import SUFFIX, folder_checkpoint

STATE = "checkpoint"


def sniff(directory: Directory) -> bool:
    """A `checkpoint` file beside at least one bundle index."""
    return directory.is_file(STATE) and bool(_prefixes(directory))


def _prefixes(directory: Directory) -> list[str]:
    return [n[: -len(SUFFIX)] for n in directory.names() if n.endswith(SUFFIX) and n != SUFFIX and directory.is_file(n)]


def open_dir(directory: Directory) -> Checkpoint:
    bundles = [("", prefix, [names.file_parts(prefix)[0]]) for prefix in _prefixes(directory)]
    return folder_checkpoint(FORMAT.name, directory, bundles)


FORMAT = DirectoryFormat("tensorflow checkpoint folder", sniff, open_dir,
                         "TensorFlow checkpoint folders (a checkpoint file beside PREFIX.index bundles)", None)
