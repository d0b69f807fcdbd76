"""Writes an edited ONNX model back: `metadata.yaml` as the model's
`metadata_props`, and initializers stored in the model file (`raw_data`,
a packed `float_data`/`double_data`) replaced with the same dtype and shape.

The new model is the source's bytes with those ranges replaced: an
initializer's new values where its old ones lay (same length, so no
enclosing message's length changes), the metadata entries where the first
one was (or at the end of the model). An untouched model repacks to its
own bytes, and the external data files are never written: a model whose
edits keep to what this writer holds still finds its external tensors at
the same offsets. An edit of a tensor stored in an external data file, or
as varints, is refused when the file is closed: a repack that rewrote an
external file in place could not be swapped with the model at once, and
one that wrote new external files would change the layout the model was
saved with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from ..errors import EditRefused, RepackError
from ..pack.changes import is_edited
from ..sources.base import Source
from ..tree import npy
from ..tree.nodes import File
from .base import Before, Files, FileWriter
from .protowire import encode_len

if TYPE_CHECKING:
    from .onnx import Shown

METADATA, GRAPH = "metadata.yaml", "graph.yaml"
HELD = "an ONNX model holds metadata.yaml and its initializers' .npy files, which keep their names"
WHY_NOT = {"external": "it is stored in an external data file, which ckptfs does not rewrite (edit the "
                       "model saved with its tensors inline, or export it)",
           "varints": "it is stored as varints (int32_data/int64_data/uint64_data), whose length an edit could "
                      "change; ckptfs replaces raw_data, float_data and double_data only"}


class Writer(FileWriter):
    renames = False  # initializers are found where the source has them

    def __init__(self, source: Source, shown: Shown):
        self.source, self.shown = source, shown

    def check(self, path: str, node: File) -> None:
        try:
            if path == METADATA:
                parse_metadata(node.content.read(0, node.content.size))
            elif path in self.shown.stored:
                self._values(path, node)
            else:
                raise ValueError(f"{path}: {HELD}" if path != GRAPH else f"{GRAPH} is read-only")
        except ValueError as e:
            raise EditRefused(str(e)) from None

    def check_move(self, moved: list) -> None:
        """A file renamed into place (sed -i's, an editor's) only to a name the model holds."""
        self.check_moved_files(moved, lambda path: path == METADATA or path in self.shown.stored, HELD)

    def _values(self, path: str, node: File) -> tuple:
        """(content, start, length) of an initializer's new values; ValueError
        unless the model can hold them where the old ones lie."""
        stored = self.shown.stored[path]
        tensor = stored.tensor
        if stored.kind != "inline":
            raise ValueError(f"{path}: {WHY_NOT[stored.kind]}")
        dtype, shape, start, length = npy.edited_layout(node.content, path, tensor.dtype, lambda d: True, "ONNX")
        if dtype != tensor.dtype or tuple(shape) != tensor.shape:
            raise ValueError(f"{path}: {dtype.name} {list(shape)}; an ONNX initializer keeps its dtype and shape "
                             f"({tensor.dtype.name} {list(tensor.shape)})")
        return node.content, start, length

    def write(self, files: Files, before: Before, output) -> None:
        problems, splices = [], []
        for path, node in files.items():
            if path not in self.shown.stored and path not in (METADATA, GRAPH) and isinstance(node, File):
                problems.append(f"{path}: {HELD}")
        for path, stored in self.shown.stored.items():
            node = files.get(path)
            if node is None:
                problems.append(f"{path} was removed: an ONNX model keeps its initializers")
            elif is_edited(node):
                try:
                    content, start, length = self._values(path, node)
                except ValueError as e:
                    problems.append(str(e))
                    continue
                splices.append((stored.tensor.data.offset, length, lambda out, c=content, s=start, n=length:
                                out.copy_content(c, s, n)))
        if is_edited(files.get(GRAPH)):
            problems.append(f"{GRAPH} is read-only")
        splices += self._metadata(files.get(METADATA), problems)
        if problems:
            raise RepackError(f"cannot write {self.source.path}: " + "; ".join(problems))
        pos = 0
        for start, length, write in sorted(splices, key=lambda s: s[0]):
            output.copy(self.source, pos, start - pos)
            write(output)
            pos = start + length
        output.copy(self.source, pos, self.source.size - pos)

    def _metadata(self, node, problems: list[str]) -> list:
        """The splices that put the edited metadata in: the entries where
        the first one lay, the others' ranges emptied."""
        if not isinstance(node, File):
            problems.append(f"{METADATA} was removed: an empty mapping ({{}}) clears the metadata")
            return []
        if not is_edited(node):
            return []
        try:
            entries = parse_metadata(node.content.read(0, node.content.size))
        except ValueError as e:
            problems.append(str(e))
            return []
        new = b"".join(entry_bytes(key, value) for key, value in entries)
        ranges = self.shown.model.metadata_ranges or [(self.source.size, self.source.size)]
        first, *rest = ranges
        return [(first[0], first[1] - first[0], lambda out: out.write(new))] + \
            [(start, end - start, lambda out: None) for start, end in rest]


def parse_metadata(data: bytes) -> list[tuple[str, str]]:
    """metadata.yaml's entries; ValueError unless it is a mapping of strings."""
    try:
        value = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{METADATA}: not readable YAML: {str(e).splitlines()[0]}") from None
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValueError(f"{METADATA}: a mapping of keys to strings is expected, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError(f"{METADATA}: {key!r}: ONNX metadata keys and values are strings (quote {item!r})")
    return list(value.items())


def entry_bytes(key: str, value: str) -> bytes:
    """A metadata_props entry (a StringStringEntryProto in ModelProto's field 14)."""
    k, v = key.encode(), value.encode()
    payload = encode_len(1, len(k)) + k + encode_len(2, len(v)) + v
    return encode_len(14, len(payload)) + payload
