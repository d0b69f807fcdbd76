"""What an Orbax checkpoint's JSON says, checked before anything uses it:
the pytree leaves `_METADATA` lists, and each array's zarr (`.zarray`) or
zarr3 (`zarr.json`) metadata. Pure functions of bytes (the fuzz target
"orbax_metadata" runs them); the format (formats/orbax.py) builds the tree.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from ..limits import LIMITS
from ..tree.dtypes import BY_NAME, DType

#: what Orbax stores as a zarr array, by `value_metadata.value_type`
ARRAY_TYPES = frozenset({"jax.Array", "np.ndarray", "scalar"})
#: a string leaf, whose value is in `_strings.json`
STRING_TYPE = "string"
#: bytes of one array's zarr metadata
METADATA_BYTES = 1 << 20
#: dimensions of one array, and of one pytree path
MAX_DIMS = 32
MAX_DEPTH = 64
#: the largest dimension, and the largest array in bytes (1 PiB)
MAX_DIM = 1 << 48
MAX_BYTES = 1 << 50
#: the largest chunk a read decodes whole (tensorstore reads a chunk at a time)
MAX_CHUNK_BYTES = 4 << 30

_ZARR2_DTYPE = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")


class Unfit(ValueError):
    """What is wrong with one leaf or array: it alone is left out or broken."""


@dataclass(frozen=True)
class Leaf:
    """A leaf of the saved pytree: its path of keys (a list index as an
    int), how Orbax stored it, and its parameter name (the keys joined by
    dots: the name of its array in the checkpoint)."""

    keys: tuple[str | int, ...]
    value_type: str

    @property
    def param(self) -> str:
        return ".".join(map(str, self.keys))


@dataclass(frozen=True)
class Tree:
    """`_METADATA`: every leaf, the leaves it could not read (a note each), and all it says."""

    leaves: list[Leaf]
    problems: list[str]
    document: dict


@dataclass(frozen=True)
class ArrayInfo:
    """One array's zarr metadata: the tensorstore driver that reads it
    ("zarr" or "zarr3"), its dtype and shape, and the chunk one read decodes."""

    driver: str
    dtype: DType
    shape: tuple[int, ...]
    chunk: tuple[int, ...]
    document: dict

    @property
    def chunk_bytes(self) -> int:
        return math.prod(self.chunk) * self.dtype.bits // 8

    @property
    def band_bytes(self) -> int:
        """The chunks across one chunk-row of the array (all but its first
        dimension whole): what reads in C order go through before they leave
        a chunk for good, so what a cache must hold for each chunk to be
        decoded once."""
        across = math.prod(-(-n // c) for n, c in zip(self.shape[1:], self.chunk[1:]))
        return self.chunk_bytes * across


def json_object(text: bytes, what: str, limit: int) -> dict:
    """The JSON object `text` holds; Unfit naming `what` if it is too large or not one."""
    if len(text) > limit:
        raise Unfit(f"{what} is {len(text)} bytes, more than {limit}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise Unfit(f"{what} is not JSON: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise Unfit(f"{what} is not a JSON object")
    return value


def tree(text: bytes) -> Tree:
    """The leaves `_METADATA` lists (Unfit if it is not Orbax's tree metadata)."""
    document = json_object(text, "_METADATA", LIMITS.header_bytes)
    entries = document.get("tree_metadata")
    if not isinstance(entries, dict):
        raise Unfit("_METADATA has no tree_metadata object")
    if len(entries) > LIMITS.members:
        raise Unfit(f"_METADATA lists {len(entries)} leaves, more than {LIMITS.members}")
    leaves, problems = [], []
    for label, entry in entries.items():
        try:
            leaves.append(_leaf(entry))
        except Unfit as e:
            problems.append(f"_METADATA leaf {label[:200]!r} is left out: {e}")
    return Tree(leaves, problems, document)


def _leaf(entry: object) -> Leaf:
    if not isinstance(entry, dict):
        raise Unfit("not an object")
    keys, value = entry.get("key_metadata"), entry.get("value_metadata")
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_DEPTH:
        raise Unfit(f"key_metadata is not a list of 1 to {MAX_DEPTH} keys")
    if not isinstance(value, dict) or not isinstance(value.get("value_type"), str):
        raise Unfit("value_metadata has no value_type")
    return Leaf(tuple(_key(k) for k in keys), value["value_type"])


def _key(item: object) -> str | int:
    """One key of a leaf's path: a list index (key_type 1) as an int, else its text."""
    if not isinstance(item, dict) or not isinstance(item.get("key"), (str, int)) or isinstance(item["key"], bool):
        raise Unfit("a key is not an object with a string key")
    key = str(item["key"])
    if not key or len(key) > 1024:
        raise Unfit("a key is empty or longer than 1024 characters")
    if item.get("key_type") == 1 and key.isdigit() and len(key) < 12:
        return int(key)
    return key


def array(text: bytes, zarr3: bool) -> ArrayInfo:
    """An array's `zarr.json` (zarr3) or `.zarray` (zarr), checked: Unfit
    for anything tensorstore should not be asked to read."""
    what = "zarr.json" if zarr3 else ".zarray"
    doc = json_object(text, what, METADATA_BYTES)
    if zarr3:
        if doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
            raise Unfit(f"{what} is not a zarr 3 array")
        dtype, shape = _zarr3_dtype(doc.get("data_type")), _dims(doc.get("shape"), "shape", 0)
        chunk = _zarr3_chunk(doc)
    else:
        if doc.get("zarr_format") != 2:
            raise Unfit(f"{what} is not a zarr 2 array")
        dtype, shape = _zarr2_dtype(doc.get("dtype")), _dims(doc.get("shape"), "shape", 0)
        chunk = _dims(doc.get("chunks"), "chunks", 1)
    if len(chunk) != len(shape):
        raise Unfit(f"{what}: {len(chunk)} chunk dimensions for {len(shape)} dimensions")
    if math.prod(shape) * dtype.bits // 8 > MAX_BYTES:
        raise Unfit(f"{what}: shape {list(shape)} is larger than {MAX_BYTES} bytes")
    info = ArrayInfo("zarr3" if zarr3 else "zarr", dtype, shape, chunk, doc)
    if info.chunk_bytes > MAX_CHUNK_BYTES:
        raise Unfit(f"{what}: a chunk of {list(chunk)} is larger than {MAX_CHUNK_BYTES} bytes")
    return info


def _dims(value: object, what: str, least: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise Unfit(f"{what} is not a list of at most {MAX_DIMS} dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and least <= d <= MAX_DIM for d in value):
        raise Unfit(f"{what} {str(value)[:200]} holds a dimension that is not an integer from {least} to {MAX_DIM}")
    return tuple(value)


def _zarr2_dtype(value: object) -> DType:
    if isinstance(value, str) and value in BY_NAME:  # Orbax writes bfloat16 by name
        dtype = BY_NAME[value]
    elif isinstance(value, str) and _ZARR2_DTYPE.fullmatch(value):
        try:
            dtype = BY_NAME.get(np.dtype(value).name)
        except TypeError:
            dtype = None
    else:
        dtype = None
    return _readable(dtype, value)


def _zarr3_dtype(value: object) -> DType:
    return _readable(BY_NAME.get(value) if isinstance(value, str) else None, value)


def _readable(dtype: DType | None, value: object) -> DType:
    if dtype is None or dtype.npy_descr is None:
        raise Unfit(f"dtype {str(value)[:100]!r} is not one ckptfs shows as .npy")
    return dtype


def _zarr3_chunk(doc: dict) -> tuple[int, ...]:
    """The chunk a read decodes: a shard's inner chunk where the array is sharded."""
    grid = doc.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    if not isinstance(config, dict) or grid.get("name") != "regular":
        raise Unfit("zarr.json has no regular chunk_grid")
    chunk = _dims(config.get("chunk_shape"), "chunk_shape", 1)
    codecs = doc.get("codecs")
    first = codecs[0] if isinstance(codecs, list) and codecs else None
    if isinstance(first, dict) and first.get("name") == "sharding_indexed":
        inner = first.get("configuration")
        chunk = _dims(inner.get("chunk_shape") if isinstance(inner, dict) else None, "inner chunk_shape", 1)
    return chunk


def sharding(text: bytes) -> dict:
    """`_sharding` as a reader wants it: keyed by parameter name (Orbax
    keys it by the name in base64), each value's JSON decoded."""
    shown = {}
    for key, value in json_object(text, "_sharding", LIMITS.header_bytes).items():
        try:
            name = base64.b64decode(key, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            name = key
        try:
            shown[name] = json.loads(value) if isinstance(value, str) else value
        except (ValueError, RecursionError):
            shown[name] = value
    return shown
