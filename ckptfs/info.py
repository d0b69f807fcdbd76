"""`ckptfs info`: what a checkpoint holds, from its metadata alone (headers,
member lists, pickles read by the inert interpreter; no tensor bytes).
The keys of `summary` are the documented schema of `ckptfs info --json`
(docs/cli.md)."""

from __future__ import annotations

import math
from collections import defaultdict

from .tree import xattrs
from .tree.checkpoint import Checkpoint
from .version import __version__


def _totals() -> dict[str, int]:
    return {"tensors": 0, "parameters": 0, "bytes": 0}


def _allowed(path: str) -> bool:
    from .pickle.allowlist import classify
    from .pickle.inert import Global

    module, _, name = path.rpartition(".")
    return classify(Global(module, name)).safe


def summary(ckpt: Checkpoint) -> dict:
    by_dtype: dict[str, dict[str, int]] = defaultdict(_totals)
    by_prefix: dict[str, dict[str, int]] = defaultdict(_totals)
    for placed in ckpt.tensors:
        t = placed.tensor
        for row in (by_dtype[t.dtype.name], by_prefix[placed.path.split("/", 1)[0]]):
            row["tensors"] += 1
            row["parameters"] += t.numel
            row["bytes"] += t.data.length
    dequantized: dict[str, dict[str, int]] = defaultdict(lambda: {"weights": 0, "parameters": 0})
    for q in ckpt.quantized:  # a GGUF's block-quantized tensors, under their GGML type
        if q.members:  # a Hub weight: its stored parts are among the tensors
            dequantized[q.kind]["weights"] += 1
            dequantized[q.kind]["parameters"] += math.prod(q.shape)
            continue
        for row in (by_dtype[q.kind], by_prefix[q.raw_path.split("/", 1)[0]]):
            row["tensors"] += 1
            row["parameters"] += math.prod(q.shape)
            row["bytes"] += math.prod(q.raw_shape)
    return {
        "source": ckpt.source_path,
        "format": ckpt.format,
        "format_description": ckpt.description,
        "source_bytes": ckpt.source_bytes(),
        "writable": ckpt.writer is not None,
        "read_only_because": None if ckpt.writer is not None else ckpt.root.xattrs.get(xattrs.READ_ONLY),
        "tensors": len(ckpt.tensors) + sum(not q.members for q in ckpt.quantized),
        "parameters": sum(r["parameters"] for r in by_dtype.values()),
        "tensor_bytes": sum(r["bytes"] for r in by_dtype.values()),
        "by_dtype": dict(sorted(by_dtype.items())),
        "by_prefix": dict(sorted(by_prefix.items())),
        "dequantized_on_read": dict(sorted(dequantized.items())),
        "pickle_globals": list(ckpt.pickle_globals),
        "unsafe_globals": [g for g in ckpt.pickle_globals if not _allowed(g)],
        "notes": list(ckpt.notes),
        "ckptfs_version": __version__,
    }


def _described(info: dict) -> str:
    return f": {info['format_description']}" if info["format_description"] else ""


def text(info: dict) -> str:
    """What `ckptfs info` prints: a few lines a person reads."""
    from .humanize import human_size, plural

    lines = [
        f"source      {info['source']}",
        f"format      {info['format']}{_described(info)}{'' if info['writable'] else ' (read-only: ' + (info['read_only_because'] or 'ckptfs cannot write it back') + ')'}",
        f"size        {human_size(info['source_bytes'])}",
        f"tensors     {info['tensors']:,}, {plural(info['parameters'], 'parameter', spec=',')}, "
        f"{human_size(info['tensor_bytes'])}",
    ]
    for title, key in (("dtypes", "by_dtype"), ("prefixes", "by_prefix")):
        rows = info[key]
        for i, (name, row) in enumerate(rows.items()):
            lines.append(f"{title if i == 0 else '':<11} {name:<24} {plural(row['tensors'], 'tensor', spec='>8,'):<17}"
                         f"{plural(row['parameters'], 'parameter', spec='>16,')}")
    for i, (scheme, row) in enumerate(info["dequantized_on_read"].items()):
        lines.append(f"{'quantized' if i == 0 else '':<11} {scheme}: {plural(row['weights'], 'weight', spec=',')} "
                     f"({plural(row['parameters'], 'parameter', spec=',')}), dequantized on read")
    if info["pickle_globals"]:
        unsafe = info["unsafe_globals"]
        verdict = f"{len(unsafe)} outside the allowlist: see ckptfs scan" if unsafe else "all on the allowlist"
        lines.append(f"globals     {len(info['pickle_globals'])} named by its pickles, {verdict} "
                     "(none imported or run):")
        lines += [f"  {name}{'  (outside the allowlist)' if name in unsafe else ''}" for name in info["pickle_globals"]]
    lines += [f"note        {note}" for note in info["notes"]]
    return "\n".join(lines)
