"""safetensors: one file, a JSON header, then the tensors' bytes.

Validation follows the reference implementation (safetensors' `tensor.rs`):
header size cap, UTF-8 JSON object, known dtypes, bytes = elements x bits / 8,
offsets sorted and contiguous from 0, and the data area ending exactly at the
end of the file. Nothing is trusted before it is checked.
"""

from __future__ import annotations

import errno
import json
import math
from operator import itemgetter

from ..errors import EditRefused, FormatError, MoveRefused, RepackError
from ..humanize import plural
from ..limits import LIMITS
from ..pack.changes import is_edited
from ..sources.base import Source
from ..tree import npy, yamltext
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_SAFETENSORS, DType
from ..tree.nodes import Content, Dir, Extent, File
from ..tree.rawfiles import raw_mirror
from ..tree.table import TensorTable
from ..tree.tensors import Tensor, dtype_before, tensor_key
from . import quantized
from .base import FileFormat, FileWriter, Moved, Opening, Pickles, WriterKind
from .yamlmap import string_mapping

MAGIC_LENGTH = 9


def sniff(head: bytes) -> bool:
    """A little-endian header length followed by the start of a JSON object."""
    return len(head) >= MAGIC_LENGTH and head[8:9] == b"{"


def read(source: Source) -> tuple[dict[str, str] | None, list[Tensor]]:
    """The `__metadata__` and the tensors of a safetensors source, validated,
    in the order of their bytes."""
    metadata, table = read_table(source)
    return metadata, table.records()


def read_table(source: Source) -> tuple[dict[str, str] | None, TensorTable]:
    """The `__metadata__` and the tensors of a safetensors source as a
    table, validated."""
    path = source.path
    header_len = _header_length(source)
    try:
        text = source.read_exact(8, header_len).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"safetensors header is not UTF-8 (byte {e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, _DuplicateKey) as e:
        raise FormatError(path, f"safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise FormatError(path, "safetensors header is not a JSON object")

    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise FormatError(path, "safetensors __metadata__ must map strings to strings")
    data_start = 8 + header_len
    rows, dtypes, shapes = _rows(path, header)
    _check_layout(path, rows, source.size - data_start)
    return metadata, TensorTable(source, rows, dtypes, shapes, data_start)


def _header_length(source: Source) -> int:
    path = source.path
    if source.size < 8:
        raise FormatError(path, f"safetensors file too short ({plural(source.size, 'byte')}) to hold a header length")
    header_len = int.from_bytes(source.read_exact(0, 8), "little")
    if header_len > LIMITS.header_bytes:
        raise FormatError(path, f"safetensors header length {header_len} is above the limit of {LIMITS.header_bytes}"
                                " (-o max_header_bytes raises it)")
    if 8 + header_len > source.size:
        raise FormatError(
            path, f"safetensors header length {header_len} runs past the end of the file ({source.size} bytes; truncated?)"
        )
    return header_len


def _rows(path: str, header: dict) -> tuple[list[tuple], list[DType], list[tuple[int, ...]]]:
    """(name, dtype index, shape index, start, end) for each entry, and the
    distinct dtypes and shapes the indexes point into. Each distinct (dtype,
    shape) is checked once by `_entry`, which says what is wrong with an
    entry; the rest of an entry (its offsets) is checked here. A checkpoint
    of 100,000 tensors has a few hundred distinct kinds."""
    kinds: dict[tuple, tuple[int, int, int]] = {}  # (dtype code, repr of shape) -> (dtype, shape index, bytes)
    dtypes: list[DType] = []
    shapes: list[tuple[int, ...]] = []
    rows = []
    for name, info in header.items():
        try:
            key = (info["dtype"], repr(info["shape"]))  # repr: [1] and [True] and "[1]" are distinct kinds
            start, end = info["data_offsets"]
            kind = kinds[key]
            if not (type(start) is int and type(end) is int and start >= 0 and end - start == kind[2]):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            _, dtype, shape, start, end = _entry(path, name, info)  # says what is wrong, or is a new kind
            kind = kinds[(info["dtype"], repr(info["shape"]))] = (_index(dtypes, dtype), len(shapes), end - start)
            shapes.append(shape)
        rows.append((name, kind[0], kind[1], start, end))
    return rows, dtypes, shapes


def _index(values: list, value) -> int:
    if value not in values:
        values.append(value)
    return values.index(value)


def _check_layout(path: str, rows: list[tuple], data_size: int) -> None:
    """Offsets sorted and contiguous from 0, the data area ending the file."""
    expected = 0
    previous = None
    for name, _, _, start, end in sorted(rows, key=itemgetter(3, 4)):
        if start != expected:
            what = "overlap" if start < expected else "leave a gap after"
            other = f"tensor {previous!r}" if previous is not None else "the start of the data"
            raise FormatError(path, f"tensor {name!r}: data_offsets [{start}, {end}] {what} {other}")
        if end > data_size:
            raise FormatError(
                path, f"tensor {name!r}: data_offsets end at {end} but the file holds {plural(data_size, 'byte')} "
                "of data (truncated?)"
            )
        expected = end
        previous = name
    if expected != data_size:
        raise FormatError(
            path, f"{plural(data_size - expected, 'byte')} after the last tensor's data; the data area must end the file"
        )


def _entry(path: str, name: str, info: object):
    if not isinstance(info, dict):
        raise FormatError(path, f"tensor {name!r}: entry is not a JSON object")
    code = info.get("dtype")
    dtype = BY_SAFETENSORS.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise FormatError(path, f"tensor {name!r}: unknown dtype {code!r}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):  # (a bool is no count)
        raise FormatError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int and n >= 0 for n in offsets)):
        raise FormatError(path, f"tensor {name!r}: data_offsets {offsets!r} is not a pair of non-negative integers")
    start, end = offsets
    if end < start:
        raise FormatError(path, f"tensor {name!r}: data_offsets [{start}, {end}] end before they start")
    numel = math.prod(shape)
    nbytes = dtype.nbytes(numel)
    if nbytes is None:
        raise FormatError(path, f"tensor {name!r}: {plural(numel, 'element')} of {code} do not fill whole bytes")
    if nbytes != end - start:
        raise FormatError(
            path, f"tensor {name!r}: shape {shape} of {code} needs {plural(nbytes, 'byte')} "
            f"but data_offsets hold {end - start}"
        )
    return name, dtype, tuple(shape), start, end


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    seen = dict(pairs)
    if len(seen) != len(pairs):
        counts: dict = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
        twice = next(key for key, n in counts.items() if n > 1)
        raise _DuplicateKey(f"key {twice!r} appears twice")
    return seen


def metadata_file(metadata: dict[str, str]) -> File:
    text = yamltext.dump(metadata)
    return File(Content([text.encode("utf-8")]))


def expand(source: Source):
    """The folder a safetensors file shows as: its tensors and `__metadata__.yaml`.

    Returns (folder, placed tensors, tensors by name, `__metadata__`): the
    folder's entries and the records are made when first used (tree/table.py).
    """
    metadata, table = read_table(source)
    folder = table.tree()
    if metadata is not None:
        folder.add("__metadata__.yaml", metadata_file(metadata))
    return folder, table.placed(), table.by_name(), metadata


# ---------------------------------------------------------------- the writer


class Writer(FileWriter):
    """Writes an edited tree of a safetensors file: the tensors (`*.npy`,
    names from their paths) and `__metadata__.yaml`. Tensors of the source
    keep their order and are copied byte range to byte range; new ones follow,
    sorted by name."""

    adds_tensors = True  # a new `.npy` in the tree is a new tensor

    def __init__(self, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None):
        self.tensors = tensors  # the source's, by name
        self.metadata = metadata  # kept when the tree has no __metadata__.yaml (a shard of a directory)

    def write(self, files: dict, before: dict, output) -> None:
        metadata, entries, problems = self.metadata, {}, []
        for path, node in sorted(files.items()):
            if isinstance(node, Dir):
                continue
            if path == "__metadata__.yaml":
                metadata = _edited_metadata(node, problems)
            elif path.endswith(".npy") and isinstance(node, File):
                try:
                    name = tensor_key(path, node)
                    entries[name] = self._entry(name, node)
                except ValueError as e:
                    problems.append(str(e))
            else:
                problems.append(f"{path}: a safetensors file holds only tensors (.npy) and __metadata__.yaml")
        if problems:
            raise RepackError("cannot write the safetensors file: " + "; ".join(problems))
        order = [n for n in sorted(self.tensors, key=lambda n: self.tensors[n].data.offset) if n in entries]
        order += sorted(n for n in entries if n not in self.tensors)
        Block(metadata, [(name, *entries[name]) for name in order]).write(output)

    def check(self, path: str, node: File) -> None:
        if path.endswith(".npy"):
            try:
                self._entry(tensor_key(path, node), node)
            except ValueError as e:
                raise EditRefused(str(e)) from None
        elif path == "__metadata__.yaml":
            problems: list[str] = []
            _edited_metadata(node, problems)
            if problems:
                raise EditRefused(problems[0])

    def check_move(self, moved: list[Moved]) -> None:
        for m in moved:
            if isinstance(m.node, File) and not m.path.endswith(".npy") and m.path != "__metadata__.yaml":
                raise MoveRefused(f"{m.path}: a safetensors file holds only tensors (.npy) and __metadata__.yaml",
                                  errno.EPERM)

    def _entry(self, name: str, node: File):
        """(dtype, shape, bytes: an Extent of the source or (content, offset), length)."""
        original = self.tensors.get(name)
        if original is not None and not is_edited(node):
            return original.dtype, original.shape, original.data, original.data.length
        content = node.content
        like = original.dtype if original else dtype_before(node)
        dtype, shape, start, length = npy.edited_layout(content, name, like, storable, "safetensors")
        return dtype, shape, (content, start), length


class Block:
    """A safetensors file (or block) of `tensors`, in order: (name, dtype,
    shape, bytes: an Extent of a source or (content, offset), length). The
    header is the reference layout: compact JSON padded with spaces to a
    multiple of 8. `size` is known before it is written."""

    def __init__(self, metadata: dict[str, str] | None, tensors: list[tuple]):
        header: dict = {} if metadata is None else {"__metadata__": metadata}
        position = 0
        for name, dtype, shape, _, length in tensors:
            header[name] = {"dtype": dtype.safetensors, "shape": list(shape), "data_offsets": [position, position + length]}
            position += length
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        self.header = len(text).to_bytes(8, "little") + text
        self.tensors = tensors
        self.size = len(self.header) + position

    def write(self, output) -> None:
        output.write(self.header)
        for *_, piece, length in self.tensors:
            if isinstance(piece, Extent):
                output.copy(piece.source, piece.offset, length)
            else:
                content, start = piece
                output.copy_content(content, start, length)


def storable(dtype: DType) -> bool:
    """Whether a safetensors header can name `dtype`."""
    return dtype.safetensors is not None


def _edited_metadata(node: File, problems: list[str]):
    try:
        return string_mapping(node.content.read(0, node.content.size))
    except ValueError as e:
        problems.append(f"__metadata__.yaml: {e}")
        return None


def open_file(opening: Opening) -> Checkpoint:
    """The file's tree; quantized weights dequantized beside their tensors,
    as config.json beside the file (a Hugging Face folder's) describes them."""
    source, st = opening.source, opening.stat
    root, placed, by_name, _ = expand(source)
    notes: list[str] = []
    config = quantized.model_config(opening.neighbours, notes) if opening.neighbours is not None else None
    dequantized, undequantized = quantized.shown(root, by_name, config)
    ckpt = Checkpoint("safetensors", source.path, st, root, raw_mirror(source), placed, notes + undequantized,
                      quantized=dequantized, undequantized=undequantized)
    ckpt.writer = Writer(by_name)
    return ckpt


FORMAT = FileFormat("safetensors", sniff, open_file, ".safetensors files", WriterKind.FILE, pickles=Pickles.UNMARKED)
