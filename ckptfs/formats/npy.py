"""Bare NumPy `.npy` files (`numpy.save`): one array, recognised by NPY's
magic (`\\x93NUMPY`), whatever the file is named.

The mount shows the file as an `.npz` shows each of its records (npz.py):
byte for byte at `KEY.npy`, KEY its name without `.npy`, so `np.load` of
the mounted file gives what it gives of the source, whatever the array's
order, byte order or shape. An array that is a tensor (a dtype ckptfs
knows, C order, its data filling the file) is listed as one under KEY; any
other (Fortran order, big-endian, strings) is the file alone, with a note.
A header `np.load` refuses, a file shorter than its header's shape needs,
and an array of Python objects (`np.load(allow_pickle=True)` unpickles
them) are refused when mounting. Read-only.
"""

from __future__ import annotations

import math
import re

from ..errors import FormatError
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Dir
from ..tree.npy import read_header
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import PlacedTensor
from .base import FileFormat, Opening, Pickles
from .npz import HEADER_BYTES, NPY_PREFIX, SUFFIX, record_file

#: an NPY descr of one plain type: byte order, kind, size (characters for
#: `U`), and a date or time unit
_PLAIN_DESCR = re.compile(r"[<>|=]([biufcmMSUV])(\d+)(\[\w+\])?")


def sniff(head: bytes) -> bool:
    return head.startswith(NPY_PREFIX)


def open_file(opening: Opening) -> Checkpoint:
    source = opening.source
    path = source.path
    _check_header(source.pread(0, min(source.size, HEADER_BYTES)), source.size, path)
    leaf = path.rstrip("/").rpartition("/")[2]
    key = names.file_parts(leaf.removesuffix(SUFFIX) or "array")[0]
    file, tensor, not_a_tensor = record_file(source, key + SUFFIX)
    root = Dir()
    root.add(key + SUFFIX, file)
    notes = []
    if tensor is None:
        why = not_a_tensor.removeprefix(f"{key}{SUFFIX}: ") or "its dtype is not one ckptfs lists as a tensor"
        notes.append(f"{key}{SUFFIX} is the file as it is, not listed as a tensor: {why}")
    placed = [] if tensor is None else [PlacedTensor(key + SUFFIX, tensor)]
    return Checkpoint("numpy .npy", path, opening.stat, root, raw_mirror(source), placed, notes)


def _check_header(head: bytes, size: int, path: str) -> None:
    """FormatError, in one line, for a header np.load refuses, an array of
    objects, or data cut short."""
    try:
        descr, shape, _, start = read_header(head, path)
    except ValueError as e:
        problem = str(e).removeprefix(f"{path}: ")
        if "cut short" in problem and len(head) < size:  # by the read, not by the file
            problem = f"an NPY header longer than the {len(head):,} bytes ckptfs reads"
        raise FormatError(path, problem) from None
    plain = _PLAIN_DESCR.fullmatch(descr)
    if descr.lstrip("<>|=").lower().startswith("o"):  # '|O', 'O8', 'object': np.load unpickles them all
        raise FormatError(path, "an array of Python objects, which np.load unpickles; ckptfs shows arrays of values only")
    if plain is None:
        raise FormatError(path, f"NPY descr {descr!r} is not a dtype ckptfs reads")
    item = int(plain[2]) * (4 if plain[1] == "U" else 1)
    needed = math.prod(shape) * item
    if needed > size - start:
        raise FormatError(path, f"NPY header says shape {list(shape)} of {descr!r}, {needed:,} bytes of data, but the "
                                f"file holds {size - start:,} after its header (cut short?)")


FORMAT = FileFormat("numpy .npy", sniff, open_file, "NumPy .npy files (numpy.save)", writes=None,
                    pickles=Pickles.OBJECTS)
