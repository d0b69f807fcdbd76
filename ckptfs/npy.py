"""NPY 1.0 headers for tensors served as `.npy` files.

The header is written by hand (no NumPy import at mount time) exactly as
`numpy.lib.format` would parse it, padded with spaces so that the data starts
at a multiple of 64 bytes, which keeps `np.load(mmap_mode="r")` aligned.
"""

from __future__ import annotations

import functools

from .dtypes import DType

MAGIC = b"\x93NUMPY\x01\x00"
ALIGN = 64
_MAX_V1_HEADER = 0xFFFF


def served_layout(dtype: DType, shape: tuple[int, ...], nbytes: int) -> tuple[str, tuple[int, ...]]:
    """The NPY descr and shape a tensor is served with.

    Types without an NPY layout become a flat `|u1` array of the stored bytes.
    """
    if dtype.npy_descr is None:
        return "|u1", (nbytes,)
    return dtype.npy_descr, shape


@functools.lru_cache(maxsize=4096)  # the shards of a checkpoint repeat a few shapes many times
def header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The NPY 1.0 header (magic through newline) for a C-order array."""
    if len(shape) == 1:
        shape_text = f"({shape[0]},)"
    else:
        shape_text = "(" + ", ".join(str(n) for n in shape) + ")"
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape_text}, }}"
    unpadded = len(MAGIC) + 2 + len(text) + 1
    padding = -unpadded % ALIGN
    body = (text + " " * padding + "\n").encode("latin-1")
    if len(body) > _MAX_V1_HEADER:
        raise ValueError(f"NPY header of {len(body)} bytes does not fit NPY 1.0 (shape {shape})")
    return MAGIC + len(body).to_bytes(2, "little") + body
