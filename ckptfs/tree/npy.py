"""NPY 1.0 headers for tensors served as `.npy` files.

The header is written by hand (no NumPy import at mount time) exactly as
`numpy.lib.format` would parse it, padded with spaces so that the data starts
at a multiple of 64 bytes, which keeps `np.load(mmap_mode="r")` aligned.
"""

from __future__ import annotations

import functools

from ..humanize import plural
from .dtypes import DTYPES, DType

MAGIC = b"\x93NUMPY\x01\x00"
#: no file can be larger (a stat's size is a signed 64-bit number)
MAX_FILE_SIZE = 1 << 62
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


def parse_header(head: bytes, name: str) -> tuple[str, tuple[int, ...], int]:
    """(descr, shape, data offset) of an NPY file starting with `head` (its
    first few KiB). ValueError, with the reason, if it is not NPY or is
    Fortran-ordered (tensors are stored in C order)."""
    descr, shape, fortran_order, start = read_header(head, name)
    if fortran_order and len([n for n in shape if n != 1]) > 1:
        raise ValueError(f"{name}: Fortran-ordered array; save it in C order (np.ascontiguousarray)")
    return descr, shape, start


def read_header(head: bytes, name: str) -> tuple[str, tuple[int, ...], bool, int]:
    """(descr, shape, fortran_order, data offset) of an NPY file starting
    with `head`; ValueError, with the reason, if it is not NPY."""
    import ast

    if not head.startswith(b"\x93NUMPY") or len(head) < 10:
        raise ValueError(f"{name}: not an NPY file")
    major = head[6]
    if major == 1:
        size, start = int.from_bytes(head[8:10], "little"), 10
    elif major in (2, 3):
        size, start = int.from_bytes(head[8:12], "little"), 12
    else:
        raise ValueError(f"{name}: NPY version {major} is not known")
    if start + size > len(head):
        raise ValueError(f"{name}: NPY header is cut short")
    try:
        fields = ast.literal_eval(head[start : start + size].decode("latin-1" if major < 3 else "utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, TypeError, RecursionError, MemoryError) as e:
        # a header is at most 64 KiB here, but deep nesting still overflows the parser
        raise ValueError(f"{name}: NPY header is not readable ({type(e).__name__}: {e})") from None
    if not (isinstance(fields, dict) and {"descr", "fortran_order", "shape"} <= fields.keys()):
        raise ValueError(f"{name}: NPY header lacks descr, fortran_order or shape")
    descr, shape = fields["descr"], fields["shape"]
    if not isinstance(descr, str):
        raise ValueError(f"{name}: NPY descr {descr!r} is not a plain dtype (structured arrays cannot be tensors)")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"{name}: NPY shape {shape!r} is not a tuple of sizes")
    return descr, shape, bool(fields["fortran_order"]), start + size


def dtype_of(descr: str, like: DType | None):
    """The tensor type an NPY descr stands for. A void or raw-byte descr of the
    item size of `like` (the type the tensor had) keeps that type: np.save of
    bfloat16 and float8 arrays writes '<V2' or '|V1'."""
    descr = descr.replace("=", "<")
    for dtype in DTYPES:
        if dtype.npy_descr == descr:
            return dtype
    if like is not None and descr[1:2] == "V" and int(descr[2:] or 0) * 8 == like.bits:
        return like
    if like is not None and like.npy_descr is None and descr == "|u1":
        return like
    return None


def edited_layout(content, name: str, like: DType | None, storable, target: str) -> tuple[DType, tuple[int, ...], int, int]:
    """(dtype, shape, data start, data length) of an edited `.npy` (`content`
    has `size` and `read`); ValueError naming `name` and the problem when it
    is not NPY, `storable(dtype)` says `target` cannot hold its dtype, or its
    size does not match its shape. `like` is the tensor's type before."""
    import math

    descr, shape, start = parse_header(content.read(0, 65536), name)
    dtype = dtype_of(descr, like)
    if dtype is None or not storable(dtype):
        raise ValueError(f"{name}: NPY dtype {descr!r} cannot be stored in {target}")
    length = dtype.nbytes(math.prod(shape))
    if length is None or content.size - start != length:
        raise ValueError(f"{name}: {plural(content.size - start, 'byte')} of data, but shape {list(shape)} of {dtype.name}"
                         f" needs {length}")
    return dtype, shape, start, length
