"""The metadata view: `.ckptfs/` at the root of every mount (read-only)."""

from __future__ import annotations

import datetime
import json
import stat
from collections import defaultdict

import yaml

from . import __version__
from .checkpoint import Checkpoint
from .tree import Content, Dir, File

NAME = ".ckptfs"
TSV_COLUMNS = ("path", "name", "dtype", "shape", "parameters", "bytes", "file", "offset")


def build(ckpt: Checkpoint) -> Dir:
    view = Dir()
    view.add("info.yaml", _text_file(info_yaml(ckpt)))
    view.add("tensors.tsv", _text_file(tensors_tsv(ckpt)))
    view.add("raw", ckpt.raw)
    if ckpt.pickle_globals:
        view.add("pickle-globals.txt", _text_file(pickle_globals_text(ckpt)))
    return view


def pickle_globals_text(ckpt: Checkpoint) -> str:
    lines = [
        "# Every global the checkpoint's pickles reference: what torch.load(weights_only=False)",
        "# would import or call. ckptfs imported and called none of them.",
    ]
    return "\n".join(lines + ckpt.pickle_globals) + "\n"


def info_yaml(ckpt: Checkpoint) -> str:
    by_dtype: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    for placed in ckpt.tensors:
        t = placed.tensor
        row = by_dtype[t.dtype.name]
        row["tensors"] += 1
        row["parameters"] += t.numel
        row["bytes"] += t.data.length
    info = {
        "format": ckpt.format,
        "source": ckpt.source_path,
        "source_bytes": _source_bytes(ckpt),
        "source_mtime": datetime.datetime.fromtimestamp(ckpt.stat.st_mtime, datetime.timezone.utc).isoformat(),
        "ckptfs_version": __version__,
        "tensors": len(ckpt.tensors),
        "parameters": sum(r["parameters"] for r in by_dtype.values()),
        "tensor_bytes": sum(r["bytes"] for r in by_dtype.values()),
        "by_dtype": dict(sorted(by_dtype.items())),
    }
    if ckpt.notes:
        info["notes"] = list(ckpt.notes)
    return yaml.safe_dump(info, sort_keys=False, allow_unicode=True)


def _source_bytes(ckpt: Checkpoint) -> int:
    """The file's size, or for a directory the sum of its files' sizes."""
    if stat.S_ISREG(ckpt.stat.st_mode):
        return ckpt.stat.st_size
    return sum(node.content.size for _, node in ckpt.raw.walk() if isinstance(node, File))


def tensors_tsv(ckpt: Checkpoint) -> str:
    lines = ["\t".join(TSV_COLUMNS)]
    for placed in sorted(ckpt.tensors, key=lambda p: p.path):
        t = placed.tensor
        file, offset = t.data.source.locate(t.data.offset)
        row = (placed.path, t.name, t.dtype.name, json.dumps(list(t.shape)), t.numel, t.data.length, file, offset)
        lines.append("\t".join(_tsv_cell(v) for v in row))
    return "\n".join(lines) + "\n"


def _tsv_cell(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _text_file(text: str) -> File:
    return File(Content([text.encode("utf-8")]))
