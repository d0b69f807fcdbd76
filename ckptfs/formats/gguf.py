"""GGUF files (llama.cpp, Ollama), versions 2 and 3, little-endian.

The key-value metadata is shown as one YAML file, `metadata.yaml`, each
value with its GGUF type (a number carries its type as a tag, `!u32 4096`;
strings and booleans are plain). Every tensor is a folder at its dotted
name holding `raw.bin`, its bytes as stored (block-quantized or not, with
`user.ckptfs.ggml_type`), and for the types NumPy knows (F32, F16, BF16,
F64, I8-I64) `tensor.npy`, served zero-copy, its shape reversed from GGUF's
dimension order as gguf-py's reader reports it; for Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0 and Q2_K to Q6_K `dequantized.npy`, float32 made on read
(`gguf_quants`), read-only.

Writable: `metadata.yaml` (each key keeps its type, `gguf_values`), a
tensor's `raw.bin` or `tensor.npy` replaced with the same type and shape,
a tensor's folder removed. The repack writes the header anew and each
tensor's data at a multiple of `general.alignment`.

Every count and offset of the header is checked against the file before it
is used; the header is read in steps, within `max_header_bytes`. A tensor
whose bytes cannot be read is left out with a note, and the file mounts
read-only (`open_file`).
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import EditRefused, FormatError, RepackError
from ..humanize import plural
from ..limits import LIMITS
from ..pack.changes import is_edited
from ..sources.base import Source
from ..tree import names, npy, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME
from ..tree.nodes import Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_mirror
from ..tree.tensors import ComputedTensor, PlacedTensor, QuantizedTensor, Tensor, TensorFile
from . import gguf_values
from .base import Before, FileFormat, Files, FileWriter, Opening, WriterKind
from .gguf_quants import DEQUANTIZE, Dequantized
from .gguf_values import ARRAY, BOOL, SCALARS, STRING, metadata_yaml

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
FLOAT32 = BY_NAME["float32"]
READ_STEP = 1 << 20

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
                raise FormatError(self.name, f"{what}: an array of {plural(count, 'value')} of type {inner} "
                                             "cannot fit the file")
            if inner in SCALARS:  # kept as an array of its bytes: no object per value
                fmt = SCALARS[inner][1]
                return (inner, np.frombuffer(self.take(count * least, what), dtype=fmt.replace("?", "b1")))
            self.values += count
            if self.values > LIMITS.yaml_values:
                most = plural(LIMITS.yaml_values, "string or array", "strings and arrays")
                raise FormatError(self.name, f"{what}: more than {most} in the "
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
        raise FormatError(name, f"{plural(kv_count, 'key')} and {plural(tensor_count, 'tensor')} cannot fit the file")
    if kv_count > LIMITS.yaml_values:  # each one a line of metadata.yaml
        raise FormatError(name, f"{plural(kv_count, 'key')}, more than max_yaml_values "
                                "(-o max_yaml_values raises the limit)")
    if tensor_count > LIMITS.members:  # each one a folder of two files
        raise FormatError(name, f"{plural(tensor_count, 'tensor')}, more than max_members "
                                "(-o max_members raises the limit)")
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
    alignment = alignment_of(metadata, name)
    return metadata, infos, header.pos + (-header.pos % alignment)


def alignment_of(metadata, name: str) -> int:
    """`general.alignment`, or GGUF's default; FormatError if it is no power of two."""
    alignment = next((v for k, t, v in metadata if k == "general.alignment" and t in SCALARS and t != BOOL),
                     DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise FormatError(name, f"general.alignment {alignment!r} is not a power of two")
    return alignment


# -- the tree
@dataclass
class Expanded:
    """What a mount shows of a GGUF file."""

    root: Dir
    #: tensors of a NumPy dtype, as `tensor.npy`
    placed: list[PlacedTensor] = field(default_factory=list)
    #: block-quantized tensors, as `raw.bin` and (where ckptfs computes it) `dequantized.npy`
    quantized: list[QuantizedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: names of the tensors whose bytes cannot be read (the file cut short)
    damaged: list[str] = field(default_factory=list)
    #: tensors the header lists
    count: int = 0


def expand(source: Source, name: str) -> Expanded:
    metadata, infos, data_start = read_header(source, name)
    shown = Expanded(Dir(), count=len(infos))
    shown.root.add("metadata.yaml", File(Content([metadata_yaml(metadata).encode("utf-8")])))
    for tensor_name, dims, kind, offset in infos:
        try:
            raw, file, tensor = _tensor(source, name, tensor_name, dims, kind, data_start + offset)
            parts = names.tensor_path(tensor_name, suffix="")
            where = shown.root.subdir(parts)
            where.add("raw.bin", raw)
            folder = "/".join(parts) + "/"
            if file is not None:
                where.add("tensor.npy", file)
                shown.placed.append(PlacedTensor(folder + "tensor.npy", tensor))
                continue
            type_name, block, block_bytes, _ = GGML_TYPES[kind]
            values = None
            if type_name in DEQUANTIZE:
                where.add("dequantized.npy", _dequantized(source, data_start + offset, tensor_name, kind, dims))
                values = folder + "dequantized.npy"
            shape = tuple(reversed(dims))
            shown.quantized.append(QuantizedTensor(tensor_name, type_name, shape, folder + "raw.bin",
                                                   shape[:-1] + (dims[0] // block * block_bytes,), values))
        except FormatError as e:
            shown.notes.append(f"{tensor_name}: {e.problem}")
            shown.damaged.append(tensor_name)
        except PathConflict:
            shown.notes.append(f"{tensor_name}: another tensor or file needs its path")
    return shown


def _tensor(source: Source, name: str, tensor: str, dims: list[int], kind: int, start: int):
    if kind not in GGML_TYPES:
        raise FormatError(name, f"unknown ggml type {kind}")
    type_name, block, _, dtype_name = GGML_TYPES[kind]
    if not dims or dims[0] % block:
        raise FormatError(name, f"its first dimension {dims[:1]} is not a whole number of {type_name} blocks of {block}")
    nbytes = byte_count(dims, kind)
    if start + nbytes > source.size:
        raise FormatError(name, f"its {plural(nbytes, 'byte')} at {start} run past the end of the file "
                                f"({plural(source.size, 'byte')})")
    data = Extent(source, start, nbytes)
    raw = File(Content([data]), xattrs={xattrs.NAME: tensor, xattrs.GGML_TYPE: type_name,
                                        xattrs.GGUF_SHAPE: json.dumps(dims)})
    if dtype_name is None:
        return raw, None, None  # the caller adds the dequantized view where there is one
    placed = Tensor(tensor, BY_NAME[dtype_name], tuple(reversed(dims)), data)
    return raw, TensorFile(placed), placed


def byte_count(dims: list[int], kind: int) -> int:
    """Bytes of a tensor of GGUF shape `dims` and ggml type `kind`."""
    _, block, block_bytes, _ = GGML_TYPES[kind]
    return math.prod(dims) // block * block_bytes


def _dequantized(source: Source, start: int, name: str, kind: int, dims: list[int]) -> File:
    """The quantized tensor `name` as float32, dequantized on read (not one
    of the checkpoint's tensors: its values are computed, not stored)."""
    type_name, stored = GGML_TYPES[kind][0], Extent(source, start, byte_count(dims, kind))
    piece = Dequantized(source, start, type_name, math.prod(dims))
    values = ComputedTensor(name, FLOAT32, tuple(reversed(dims)), stored, (piece,),
                            ((xattrs.DEQUANTIZED_FROM, type_name),))
    file = TensorFile(values)
    file.read_only = True
    return file


# -- the writer
class Writer(FileWriter):
    """Writes an edited tree back as GGUF: the metadata from `metadata.yaml`
    (each key's type kept), every tensor whose folder is left, in the
    source's order, from its edited `raw.bin` or `tensor.npy` (same type and
    shape) or copied as it is; each tensor's data at a multiple of
    `general.alignment`, as gguf-py's writer places it."""

    renames = False  # tensors are looked for where the source has them: renaming one is refused (EPERM)

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name

    @functools.cached_property
    def _header(self):
        """(the metadata, the tensors by folder path: (name, dims, ggml type, data offset))."""
        metadata, infos, data_start = read_header(self.source, self.name)
        return metadata, {"/".join(names.tensor_path(t, suffix="")): (t, dims, kind, data_start + offset)
                          for t, dims, kind, offset in infos}

    def check(self, path: str, node: File) -> None:
        folder, _, leaf = path.rpartition("/")
        metadata, tensors = self._header
        if path == "metadata.yaml":
            try:
                alignment_of(gguf_values.parse(node.content.read(0, node.content.size), metadata), path)
            except ValueError as e:
                raise EditRefused(f"metadata.yaml: {e}") from None
            except FormatError as e:
                raise EditRefused(f"metadata.yaml: {e.problem}") from None
            return
        tensor = tensors.get(folder)
        if tensor is None or leaf not in ("raw.bin", "tensor.npy"):
            raise EditRefused(f"{path}: a GGUF file holds metadata.yaml and its tensors' raw.bin and tensor.npy only")
        try:
            _edited_bytes(node, leaf, tensor)
        except ValueError as e:
            raise EditRefused(str(e)) from None

    def check_move(self, moved: list) -> None:
        """A file renamed into place (sed -i's, an editor's) only to a name
        the file holds: refused at the rename, not by the repack."""
        tensors = self._header[1]

        def held(path: str) -> bool:
            folder, _, leaf = path.rpartition("/")
            return path == "metadata.yaml" or (folder in tensors and leaf in ("raw.bin", "tensor.npy"))

        self.check_moved_files(moved, held, "a GGUF file holds metadata.yaml and its tensors' raw.bin and tensor.npy only")

    def write(self, files: Files, before: Before, output) -> None:
        metadata, tensors = self._header
        problems, placed = [], []
        meta_node = files.get("metadata.yaml")
        if not isinstance(meta_node, File):
            problems.append("metadata.yaml was removed: a GGUF file needs its metadata (an empty file clears it)")
        elif is_edited(meta_node):
            try:
                metadata = gguf_values.parse(meta_node.content.read(0, meta_node.content.size), metadata)
            except ValueError as e:
                problems.append(f"metadata.yaml: {e}")
        known = {"metadata.yaml"} | {"/".join(f.split("/")[:i]) for f in tensors for i in range(1, f.count("/") + 2)}
        for folder, tensor in tensors.items():
            known |= {f"{folder}/raw.bin", f"{folder}/tensor.npy", f"{folder}/dequantized.npy"}
            try:
                data = self._data(files, folder, tensor) if f"{folder}/raw.bin" in before else self._kept(tensor)
            except ValueError as e:
                problems.append(str(e))
                continue
            if data is not None:
                placed.append((tensor[0], tensor[1], tensor[2], data))
        for path, node in files.items():
            if path not in known:
                problems.append(f"{path}: a GGUF file holds metadata.yaml and its tensors' folders only")
        try:
            alignment = alignment_of(metadata, "metadata.yaml")
        except FormatError as e:
            problems.append(f"metadata.yaml: {e.problem}")
        if problems:
            raise RepackError(f"cannot write {self.name}: " + "; ".join(problems))
        _write_gguf(output, self.source.pread(4, 4), metadata, placed, alignment)

    def _data(self, files: Files, folder: str, tensor):
        """The tensor's bytes as a (content, start, length) or Extent, or None
        when its folder was removed."""
        raw, array = files.get(f"{folder}/raw.bin"), files.get(f"{folder}/tensor.npy")
        has_array = GGML_TYPES.get(tensor[2], (None,) * 4)[3] is not None
        if raw is None and (array is None or not has_array):
            return None
        if raw is None or (has_array and array is None):
            gone = "raw.bin" if raw is None else "tensor.npy"
            raise ValueError(f"{folder}/{gone} was removed: remove the tensor's whole folder to leave "
                             f"{tensor[0]!r} out, or put the file back")
        if is_edited(raw) and is_edited(array):
            raise ValueError(f"{folder}: both raw.bin and tensor.npy were written; keep one of the two edits")
        for leaf, node in (("raw.bin", raw), ("tensor.npy", array)):
            if is_edited(node):
                return _edited_bytes(node, leaf, tensor)
        return self._kept(tensor)

    def _kept(self, tensor) -> Extent:
        """A tensor's bytes as the source has them (also one the mount could
        not show: its path taken by another)."""
        name, dims, kind, start = tensor
        try:
            _tensor(self.source, self.name, name, dims, kind, start)
        except FormatError as e:
            raise ValueError(f"{name}: {e.problem}; ckptfs will not write the file without it") from None
        return Extent(self.source, start, byte_count(dims, kind))


def _edited_bytes(node: File, leaf: str, tensor) -> tuple:
    """(content, start, length) of an edited raw.bin or tensor.npy; ValueError
    unless it holds the tensor's type and shape."""
    name, dims, kind, _ = tensor
    type_name, _, _, dtype_name = GGML_TYPES[kind]
    nbytes = byte_count(dims, kind)
    content = node.content
    if leaf == "raw.bin":
        if content.size != nbytes:
            raise ValueError(f"{name}: raw.bin holds {content.size} bytes; {type_name} of shape {dims} takes {nbytes}")
        return content, 0, nbytes
    dtype, shape, start, length = npy.edited_layout(content, name, BY_NAME[dtype_name], lambda d: True, "GGUF")
    want = tuple(reversed(dims))
    if dtype.name != dtype_name or tuple(shape) != want:
        raise ValueError(f"{name}: tensor.npy is {dtype.name} {list(shape)}; a GGUF tensor keeps its type and shape "
                         f"({dtype_name} {list(want)})")
    return content, start, length


def _write_gguf(output, version: bytes, metadata, tensors, alignment: int) -> None:
    """A GGUF file: header, key-values, tensor infos, then each tensor's
    bytes at a multiple of `alignment` from the data start (the data start
    is aligned too)."""
    infos, offset = [], 0
    for name, dims, kind, data in tensors:
        length = data.length if isinstance(data, Extent) else data[2]
        offset += -offset % alignment
        infos.append(gguf_values.encode(STRING, name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset))
        offset += length
    head = b"".join([MAGIC, version, struct.pack("<QQ", len(tensors), len(metadata)),
                     *(gguf_values.key_value_bytes(*entry) for entry in metadata), *infos])
    output.write(head + bytes(-len(head) % alignment))
    for _, _, _, data in tensors:  # each padded after, the last too, as gguf-py and ggml write them
        if isinstance(data, Extent):
            output.copy(data.source, data.offset, data.length)
            length = data.length
        else:
            content, start, length = data
            output.copy_content(content, start, length)
        output.write(bytes(-length % alignment))


def open_file(opening: Opening) -> Checkpoint:
    """A file with tensors that cannot be read (cut short: a download that
    stopped) mounts read-only: written back, it could only lose them, and a
    download could no longer be resumed; its readable tensors export."""
    source, st = opening.source, opening.stat
    shown = expand(source, source.path)
    ckpt = Checkpoint("gguf", source.path, st, shown.root, raw_mirror(source), shown.placed, shown.notes,
                      quantized=shown.quantized)
    if shown.damaged:
        shown.root.xattrs[xattrs.READ_ONLY] = (
            f"{len(shown.damaged)} of {shown.count} tensors cannot be read, and a GGUF written back would lose "
            f"them; to keep the others: ckptfs export {source.path} NEW.safetensors")
    else:
        ckpt.writer = Writer(source, source.path)
    return ckpt


FORMAT = FileFormat("gguf", sniff, open_file, "GGUF v2/v3 files (llama.cpp, Ollama)", WriterKind.FILE)
