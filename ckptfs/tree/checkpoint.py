"""What a format reader returns: the tree of one checkpoint and its facts."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from .nodes import Dir, File, Writer
from .tensors import PlacedTensor, QuantizedTensor

#: the read-only folder at the root of every mount that describes the
#: checkpoint (`info.yaml`, `tensors.tsv`, `raw/`); never part of its content
VIEW_NAME = ".ckptfs"


@dataclass
class Checkpoint:
    #: human-readable format name, e.g. "safetensors", "nemo (tar)"
    format: str
    #: absolute path of the source file or directory
    source_path: str
    #: os.stat of the source, for ownership, times and change detection
    stat: os.stat_result
    #: the main tree, with shard subfolders
    root: Dir
    #: every file of the source, byte for byte, by its relative path
    raw: Dir
    #: the tensors of the main tree
    tensors: list[PlacedTensor] = field(default_factory=list)
    #: things the user should know about this checkpoint (shown in info.yaml)
    notes: list[str] = field(default_factory=list)
    #: every global the pickles reference: what pickle.load would have imported or called
    pickle_globals: list[str] = field(default_factory=list)
    #: writes an edited tree back in this format (formats/base.py); None
    #: when it cannot (a Hugging Face cache snapshot, an ambiguous directory)
    writer: Writer | None = None
    #: tensors of quantized types no NumPy dtype holds (GGUF's), not among `tensors`
    quantized: list[QuantizedTensor] = field(default_factory=list)
    #: quantized Hub weights ckptfs found but cannot dequantize, a note each (also among `notes`):
    #: their stored parts are tensors like any other, so no plain model can be exported
    undequantized: list[str] = field(default_factory=list)
    #: for a Hugging Face folder: the top-level entries of the main tree that
    #: `from_pretrained` reads beside the weights (config.json, tokenizer
    #: files, subfolders), which `.ckptfs/pretrained/` links to; None for
    #: any other checkpoint
    pretrained_files: list[str] | None = None
    #: for a PEFT adapter given its base: the merged model (formats/adapter.py),
    #: its tree the mount's `merged/`, which `ckptfs export --merged` writes
    merged: Checkpoint | None = None
    #: its format as the registry describes it in one line (formats/__init__.py)
    description: str = ""

    def source_bytes(self) -> int:
        """The file's size, or for a directory the sum of its files' sizes."""
        if stat.S_ISREG(self.stat.st_mode):
            return self.stat.st_size
        return sum(node.content.size for _, node in self.raw.walk() if isinstance(node, File))
