"""Quantized weights of Hugging Face checkpoints, dequantized on read.

A scheme (one module each, listed in SCHEMES) finds the weights stored in
its layout among a checkpoint's tensors, from config.json's
`quantization_config` or, where there is none, from the tensors' names,
dtypes and shapes, and says how to make each weight's values a block of
rows at a time (base.py). `dequantized_files` turns what the schemes found
into the read-only `<weight>/dequantized.npy` files a mount shows beside
the stored tensors, and the records `ckptfs export` writes the plain model
from (docs/layout.md, "Quantized Hugging Face weights").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

from ...errors import CkptfsError
from ...limits import LIMITS
from ...sources.directory import Directory
from ...tree import names, xattrs
from ...tree.nodes import Dir, Extent, PathConflict
from ...tree.tensors import ComputedTensor, QuantizedTensor, Tensor, TensorFile
from . import awq, bnb, compressed, fp8, gptq, mlx
from .base import DequantizedRows, QuantizationError, QuantizedWeight, Stored, numpy_dtype

#: the model's configuration, which `quantization_config` and the compute dtype are read from
CONFIG = "config.json"
#: the largest row of values made at once (a weight's values are made a block of whole rows at a time)
MAX_ROW_BYTES = 64 << 20
#: (scheme name, find: Stored -> the weights it stores, notes) in the order they are tried;
#: a tensor one scheme claims is not offered to the next
SCHEMES: tuple[tuple[str, Callable[[Stored], tuple[list[QuantizedWeight], list[str]]]], ...] = (
    ("fp8", fp8.find),
    ("gptq", gptq.find),
    ("awq", awq.find),
    ("compressed-tensors", compressed.find),
    ("bitsandbytes", bnb.find),
    ("mlx", mlx.find),
)


def model_config(directory: Directory, notes: list[str]) -> dict | None:
    """config.json, which names the model's quantization and compute dtype;
    None where there is none or it cannot be read (a note says so)."""
    if CONFIG not in directory.names():
        return None
    try:
        source = directory.open(CONFIG)
        if source.size > LIMITS.header_bytes:
            raise ValueError(f"{source.size} bytes, above the header limit")
        config = json.loads(source.read_exact(0, source.size))
    except (OSError, ValueError, RecursionError, CkptfsError) as e:  # RecursionError: JSON nested too deep
        notes.append(f"{CONFIG}: not read ({e}); quantized weights are found from their tensors alone")
        return None
    return config if isinstance(config, dict) else None


@dataclass
class Found:
    """The quantized weights of a checkpoint, and a note on each left stored (not dequantized) and why."""

    weights: list[QuantizedWeight] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def shown(root: Dir, tensors: dict[str, Tensor], config: dict | None) -> tuple[list[QuantizedTensor], list[str]]:
    """Find the quantized weights among `tensors` (the tree's, by name) and
    add their `dequantized.npy` files to `root`: (their records, a note on
    each weight left stored)."""
    found = find(tensors, config)
    return dequantized_files(root, found, tensors), found.notes


def find(tensors: dict[str, Tensor], config: dict | None) -> Found:
    """Every quantized weight among `tensors` (the merged tree's, by name)."""
    found = Found()
    claimed: set[str] = set()
    unmade: dict[str, list[str]] = {}  # weights by why this machine cannot make them: one note each
    for _, find_weights in SCHEMES:
        stored = Stored({n: t for n, t in tensors.items() if n not in claimed} if claimed else tensors, config)
        weights, notes = find_weights(stored)
        found.notes += notes
        for weight in weights:
            claimed.update(weight.members)
            problem = _unmade(weight, stored)
            if problem:
                unmade.setdefault(problem, []).append(weight.name)
            else:
                found.weights.append(weight)
    for problem, weight_names in unmade.items():
        which = weight_names[0] if len(weight_names) == 1 else \
            f"{weight_names[0]} and {len(weight_names) - 1:,} more weights"
        found.notes.append(f"{which}: not dequantized: {problem}")
    return found


def _unmade(weight: QuantizedWeight, stored: Stored) -> str | None:
    """Why this machine cannot make the weight's values, if it cannot."""
    row_bytes = weight.dtype.nbytes(math.prod(weight.shape[1:]))
    if row_bytes > MAX_ROW_BYTES:  # made a row at least at a time: memory is bounded by one row
        return f"a row of its values would take {row_bytes} bytes, more than {MAX_ROW_BYTES}"
    try:
        for dtype in (weight.dtype, *(stored.tensors[m].dtype for m in weight.members)):
            numpy_dtype(dtype)
    except QuantizationError as e:
        return str(e)
    return None


def dequantized_files(root: Dir, found: Found, tensors: dict[str, Tensor]) -> list[QuantizedTensor]:
    """Add each weight's `dequantized.npy` to `root`, beside the tensors it
    is made of (`<weight path>/dequantized.npy`); the records of those added."""
    records = []
    for weight in found.weights:
        parts = names.tensor_path(weight.name + ".dequantized")
        first = tensors[weight.members[0]]
        values = ComputedTensor(weight.name, weight.dtype, weight.shape, Extent(first.data.source, first.data.offset, 0),
                                (DequantizedRows(weight, first.data.source),),
                                ((xattrs.DEQUANTIZED_FROM, weight.scheme),))
        file = TensorFile(values)
        file.read_only = True
        try:
            root.subdir(parts[:-1]).add(parts[-1], file)
        except PathConflict:
            found.notes.append(f"{weight.name}: another tensor or file needs the path of its dequantized.npy")
            continue
        records.append(QuantizedTensor(weight.name, weight.scheme, weight.shape, None, None, "/".join(parts),
                                       weight.dtype, weight.members))
    return records


__all__ = ["Found", "QuantizationError", "QuantizedWeight", "dequantized_files", "find", "model_config", "shown"]
