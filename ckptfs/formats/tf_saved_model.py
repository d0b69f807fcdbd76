"""TensorFlow SavedModel folders (`tf.saved_model.save`, Keras `export`):
`saved_model.pb` (the graphs and the object graph, as it is), `variables/`
(a tensor bundle: `variables.index` + its data shards), `assets/` and
`fingerprint.pb`.

`variables/` is shown as the bundle's tree (formats/tf_bundle.py), every
other file as it is, read-only; the bundle's own files stay in
`.ckptfs/raw/variables/`.
"""

from __future__ import annotations

from ..sources.directory import Directory
from ..tree.checkpoint import Checkpoint
from .base import DirectoryFormat
from .tf_bundle import SUFFIX, folder_checkpoint

VARIABLES = "variables"
GRAPHS = ("saved_model.pb", "saved_model.pbtxt")


def sniff(directory: Directory) -> bool:
    """`saved_model.pb` (or `.pbtxt`) beside `variables/variables.index`."""
    return any(directory.is_file(g) for g in GRAPHS) and directory.is_file(f"{VARIABLES}/{VARIABLES}{SUFFIX}")


def open_dir(directory: Directory) -> Checkpoint:
    return folder_checkpoint(FORMAT.name, directory, [(VARIABLES, VARIABLES, [VARIABLES])])


FORMAT = DirectoryFormat("tensorflow saved model", sniff, open_dir,
                         "TensorFlow SavedModel folders (saved_model.pb + variables/)", None)
