"""GGUF files (llama.cpp, Ollama), versions 2 and 3, little-endian.

The key-value metadata is shown as one YAML file, `metadata.yaml`, each
value with its GGUF type (a number carries its type as a tag, `!u32 4096`;
strings and booleans are plain). Every tensor is a folder at its dotted
name holding `raw.bin`, its bytes as stored (block-quantized or not, with
`user.ckptfs.ggml_type`), and for the types NumPy knows (F32, F16, BF16,
F64, I8-I64) `tensor.npy`, served zero-copy, its shape reversed from GGUF's
dimension order as gguf-py's reader reports it; for Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, Q4_K and Q6_K `dequantized.npy`, float32 made on read
(`gguf_quants`). Read-only for now.

Every count and offset of the header is checked against the file before it
is used; the header is read in steps, within `max_header_bytes`.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct

import numpy as np

from ..errors import FormatError
from ..limits import LIMITS
from ..sources.base import FileSource, Source
from ..tree import names, npy
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME
from ..tree.nodes import Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import PlacedTensor, Tensor, TensorFile
from .base import FileFormat
from .gguf_quants import DEQUANTIZE, Dequantized

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
READ_STEP = 1 << 20

#: GGUF value types: id -> (tag, struct format); STRING (8) and ARRAY (9) apart
SCALARS = {0: ("u8", "<B"), 1: ("i8", "<b"), 2: ("u16", "<H"), 3: ("i16", "<h"), 4: ("u32", "<I"), 5: ("i32", "<i"),
           6: ("f32", "<f"), 7: ("bool", "<?"), 10: ("u64", "<Q"), 11: ("i64", "<q"), 12: ("f64", "<d")}
STRING, ARRAY = 8, 9

#: ggml tensor types: id -> (name, elements per block, bytes per block, dtype name where NumPy knows it)
GGML_TYPES = {
    0: ("F32", 1, 4, "float32"), 1: ("F16", 1, 2, "float16"), 2: ("Q4_0", 32, 18, None), 3: ("Q4_1", 32, 20, None),
    6: ("Q5_0", 32, 22, None), 7: ("Q5_1", 32, 24, None), 8: ("Q8_0", 32, 34, None), 9: ("Q8_1", 32, 40, None),
    10: ("Q2_K", 256, 84, None), 11: ("Q3_K", 256, 110, None), 12: ("Q4_K", 256, 144, None),
    13: ("Q5_K", 256, 176, None), 14: ("Q6_K", 256, 210, None), 15: ("Q8_K", 256, 292, None),
    16: ("IQ2_XXS", 256, 66, None), 17: ("IQ2_XS", 256, 74, None), 18: ("IQ3_XXS", 256, 98, None),
    19: ("IQ1_S", 256, 50, None), 20: ("IQ4_NL", 32, 18, None), 21: ("IQ3_S", 256, 110, None),
    22: ("IQ2_S", 256, 82, None), 23: ("IQ4_XS", 256, 136, None), 24: ("I8", 1, 1, "int8"),
    25: ("I16", 1, 2, "int16"), 26: ("I32", 1, 4, "int32"), 27: ("I64", 1, 8, "int64"), 28: ("F64", 1, 8, "float64"),
    29: ("IQ1_M", 256, 56, None), 30: ("BF16", 1, 2, "bfloat16"), 34: ("TQ1_0", 256, 54, None),
    35: ("TQ2_0", 256, 66, None), 39: ("MXFP4", 32, 17, None),
}


def sniff(head: bytes) -> bool:
    return head[:4] == MAGIC


class _Header:
    """The header read forward in steps, every read checked against the file
    and the `max_header_bytes` bound."""

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        self.limit = min(source.size, LIMITS.header_bytes)
        self.buffer, self.start, self.pos = b"", 0, 0
        self.values = 0  # strings and arrays held as objects, within LIMITS.yaml_values

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.limit:
            where = "the file" if self.pos + n > self.source.size else \
                f"the {LIMITS.header_bytes}-byte header bound (-o max_header_bytes raises it)"
            raise FormatError(self.name, f"{what} at byte {self.pos} ({n} bytes) runs past {where}")
        end = self.pos + n
        if end > self.start + len(self.buffer):
            keep = self.buffer[self.pos - self.start:]
            self.buffer = keep + self.source.pread(self.start + len(self.buffer), max(READ_STEP, end - self.pos - len(keep)))
            self.start = self.pos
        data = self.buffer[self.pos - self.start: end - self.start]
        if len(data) != n:
            raise FormatError(self.name, f"{what} at byte {self.pos}: the file ends early (changed while read?)")
        self.pos = end
        return data

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("<Q", what)
        data = self.take(length, what)
        return data.decode("utf-8", "surrogateescape")

    def value(self, kind: int, what: str, depth: int = 0):
        if kind in SCALARS:
            return self.unpack(SCALARS[kind][1], what)
        if kind == STRING:
            return self.string(what)
        if kind == ARRAY and depth < 8:
            inner, count = self.unpack("<I", what), self.unpack("<Q", what)
            least = struct.calcsize(SCALARS[inner][1]) if inner in SCALARS else 8 if inner in (STRING, ARRAY) else 0
            if not least or count * least > self.limit - self.pos:
                raise FormatError(self.name, f"{what}: an array of {count} values of type {inner} cannot fit the file")
            if inner in SCALARS:  # kept as an array of its bytes: no object per value
                fmt = SCALARS[inner][1]
                return (inner, np.frombuffer(self.take(count * least, what), dtype=fmt.replace("?", "b1")))
            self.values += count
            if self.values > LIMITS.yaml_values:
                raise FormatError(self.name, f"{what}: more than {LIMITS.yaml_values} strings and arrays in the "
                                             "metadata (-o max_yaml_values raises the limit)")
            return (inner, [self.value(inner, what, depth + 1) for _ in range(count)])
        if kind == ARRAY:
            raise FormatError(self.name, f"{what}: arrays nested more than 8 deep")
        raise FormatError(self.name, f"{what}: unknown value type {kind}")


def read_header(source: Source, name: str):
    """(metadata: [(key, type, value)], tensor infos: [(name, dims, ggml type, offset)], data start)."""
    header = _Header(source, name)
    header.take(4, "magic")
    version = header.unpack("<I", "version")
    if version not in (2, 3):
        if version in (2 << 24, 3 << 24):  # 2 or 3 written big-endian
            raise FormatError(name, "big-endian GGUF: not supported")
        raise FormatError(name, f"GGUF version {version}: only versions 2 and 3 are read")
    tensor_count, kv_count = header.unpack("<Q", "tensor count"), header.unpack("<Q", "key count")
    if kv_count * 12 > header.limit or tensor_count * 24 > header.limit:  # the least one entry takes
        raise FormatError(name, f"{kv_count} keys and {tensor_count} tensors cannot fit the file")
    metadata = []
    for i in range(kv_count):
        key = header.string(f"key {i}")
        kind = header.unpack("<I", f"the type of {key!r}")
        metadata.append((key, kind, header.value(kind, repr(key))))
    infos = []
    for i in range(tensor_count):
        tensor = header.string(f"tensor {i}'s name")
        n_dims = header.unpack("<I", f"{tensor!r}'s rank")
        if n_dims > 8:
            raise FormatError(name, f"tensor {tensor!r}: {n_dims} dimensions (GGML has at most 4)")
        dims = [header.unpack("<Q", f"{tensor!r}'s shape") for _ in range(n_dims)]
        infos.append((tensor, dims, header.unpack("<I", f"{tensor!r}'s type"), header.unpack("<Q", f"{tensor!r}'s offset")))
    alignment = next((v for k, t, v in metadata if k == "general.alignment" and t in SCALARS and t != 7),
                     DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise FormatError(name, f"general.alignment {alignment!r} is not a power of two")
    return metadata, infos, header.pos + (-header.pos % alignment)


# -- metadata.yaml
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _quoted(text: str) -> str:
    """A YAML double-quoted string; bytes that were no UTF-8 (kept as
    surrogates) escaped as `\\udcXX`, so the file stays UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text)
    return json.dumps(text, ensure_ascii=False)


def _scalar(kind: int, value) -> str:
    if kind == STRING:
        return _quoted(value)
    if kind == 7:
        return "true" if value else "false"
    if SCALARS[kind][0].startswith("f"):
        text = str(np.float32(value)) if kind == 6 else repr(value)  # the shortest text that reads back the same
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(text, text)
    return str(value)


def _value_text(kind: int, value, indent: str) -> str:
    if kind != ARRAY:
        tag = "" if kind in (STRING, 7) else f"!{SCALARS[kind][0]} "
        return " " + tag + _scalar(kind, value)
    inner, items = value
    if inner == STRING:  # one per line: tokenizer vocabularies read down a page
        return "".join(f"\n{indent}- {_scalar(STRING, v)}" for v in items) if items else " []"
    if inner == ARRAY:
        return "".join(f"\n{indent}-{_value_text(ARRAY, v, indent + '  ')}" for v in items) if items else " []"
    tag = "" if inner == 7 else f"!{SCALARS[inner][0]} "
    if len(items) > LIMITS.yaml_values:
        return f" {tag}[]  # ckptfs: {len(items)} values, more than max_yaml_values shows"
    return f" {tag}[" + ", ".join(_scalar(inner, v) for v in items.tolist()) + "]"


def metadata_yaml(metadata) -> str:
    """The key-value metadata as YAML, each number tagged with its GGUF type."""
    lines = ["# GGUF metadata: numbers carry their type as a tag (!u32, !f32, ...); strings and booleans are plain"]
    for key, kind, value in metadata:
        shown = key if _PLAIN_KEY.fullmatch(key) else _quoted(key)
        lines.append(f"{shown}:{_value_text(kind, value, '  ')}")
    return "\n".join(lines) + "\n"


# -- the tree
def expand(source: Source, name: str) -> tuple[Dir, list[PlacedTensor], list[str]]:
    metadata, infos, data_start = read_header(source, name)
    root, placed, notes = Dir(), [], []
    root.add("metadata.yaml", File(Content([metadata_yaml(metadata).encode("utf-8")])))
    for tensor_name, dims, kind, offset in infos:
        try:
            raw, file, tensor = _tensor(source, name, tensor_name, dims, kind, data_start + offset)
            parts = names.tensor_path(tensor_name, suffix="")
            where = root.subdir(parts)
            where.add("raw.bin", raw)
            if file is not None:
                where.add("tensor.npy", file)
                placed.append(PlacedTensor("/".join(parts + ["tensor.npy"]), tensor))
            elif GGML_TYPES[kind][0] in DEQUANTIZE:
                where.add("dequantized.npy", _dequantized(source, data_start + offset, GGML_TYPES[kind][0], dims))
        except FormatError as e:
            notes.append(f"{tensor_name}: {e.problem}")
        except PathConflict:
            notes.append(f"{tensor_name}: another tensor or file needs its path")
    return root, placed, notes


def _tensor(source: Source, name: str, tensor: str, dims: list[int], kind: int, start: int):
    if kind not in GGML_TYPES:
        raise FormatError(name, f"unknown ggml type {kind}")
    type_name, block, block_bytes, dtype_name = GGML_TYPES[kind]
    count = math.prod(dims)
    if not dims or dims[0] % block:
        raise FormatError(name, f"its first dimension {dims[:1]} is not a whole number of {type_name} blocks of {block}")
    nbytes = count // block * block_bytes
    if start + nbytes > source.size:
        raise FormatError(name, f"its {nbytes} bytes at {start} run past the end of the file ({source.size} bytes)")
    data = Extent(source, start, nbytes)
    raw = File(Content([data]), xattrs={"ckptfs.name": tensor, "ckptfs.ggml_type": type_name,
                                        "ckptfs.gguf_shape": json.dumps(dims)})
    if dtype_name is None:
        return raw, None, None  # the caller adds the dequantized view where there is one
    placed = Tensor(tensor, BY_NAME[dtype_name], tuple(reversed(dims)), data)
    return raw, TensorFile(placed), placed


def _dequantized(source: Source, start: int, type_name: str, dims: list[int]) -> File:
    """A quantized tensor as float32, dequantized on read (not one of the
    checkpoint's tensors: its values are computed, not stored)."""
    shape = tuple(reversed(dims))
    piece = Dequantized(source, start, type_name, math.prod(dims))
    return File(Content([npy.header("<f4", shape), piece]), read_only=True,
                xattrs={"ckptfs.dequantized_from": type_name, "ckptfs.shape": json.dumps(list(shape))})


def open_file(source: FileSource, st: os.stat_result, cache_dir: str) -> Checkpoint:
    root, placed, notes = expand(source, source.path)
    return Checkpoint("gguf", source.path, st, root, raw_mirror(source), placed, notes)  # no writer yet: read-only


FORMAT = FileFormat("gguf", sniff, open_file)
