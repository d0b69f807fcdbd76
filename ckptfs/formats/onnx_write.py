"""Writes an edited ONNX model back: `metadata.yaml` as the model's
`metadata_props`, and initializers stored in the model file replaced with
the same dtype and shape.

The new model is the source's bytes with ranges replaced: an initializer
kept as raw_data or a packed float_data/double_data gets its new values
where its old ones lay (same length: no enclosing message's length
changes); one of the main graph kept as varints gets a new packed field
(onnx_varints), and its TensorProto's and the graph's lengths are written
anew; the metadata entries go where the first one was (or at the end of
the model). An untouched model repacks to its own bytes, and the external
data files are never written: the new model finds its external tensors at
the same offsets. An edit of a tensor stored in an external data file (or
kept as varints in a subgraph) is refused when the file is closed: a
repack that rewrote an external file in place could not be swapped with
the model at once, and one that wrote new external files would change the
layout the model was saved with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import EditRefused, RepackError
from ..pack.changes import is_edited
from ..sources.base import Source
from ..tree import npy
from ..tree.nodes import File
from . import protowire
from .base import Before, Files, FileWriter
from .onnx_proto import T_INT32_DATA, TYPED_FIELD, read_tensor
from .onnx_varints import VarintField
from .protowire import encode_len
from .yamlmap import string_mapping

if TYPE_CHECKING:
    from .onnx import Shown, Stored

METADATA, GRAPH = "metadata.yaml", "graph.yaml"
HELD = "an ONNX model holds metadata.yaml and its initializers' .npy files, which keep their names"
WHY_NOT = {"external": "it is stored in an external data file, which ckptfs does not rewrite (edit the "
                       "model saved with its tensors inline, or export it)",
           "varints": "it lies in a subgraph, stored as varints (int32_data/int64_data/uint64_data), whose "
                      "length an edit could change; ckptfs rewrites the lengths of the main graph's only"}


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
        if stored.kind == "external" or (stored.kind == "varints" and stored.proto is None):
            raise ValueError(f"{path}: {WHY_NOT[stored.kind]}")
        if stored.kind == "varints":
            self._varint_fields(stored, path)
        dtype, shape, start, length = npy.edited_layout(node.content, path, tensor.dtype, lambda d: True, "ONNX")
        if dtype != tensor.dtype or tuple(shape) != tensor.shape:
            raise ValueError(f"{path}: {dtype.name} {list(shape)}; an ONNX initializer keeps its dtype and shape "
                             f"({tensor.dtype.name} {list(tensor.shape)})")
        return node.content, start, length

    def write(self, files: Files, before: Before, output) -> None:
        problems, splices, grown, varints = [], [], 0, False
        for path, node in files.items():
            if path not in self.shown.stored and path not in (METADATA, GRAPH) and isinstance(node, File):
                problems.append(f"{path}: {HELD}")
        for path, stored in self.shown.stored.items():
            node = files.get(path)
            if node is None:
                problems.append(f"{path} was removed: an ONNX model keeps its initializers")
            elif is_edited(node):
                try:
                    more, delta = self._edit(path, stored, node)
                except ValueError as e:
                    problems.append(str(e))
                    continue
                splices += more
                if stored.kind == "varints":
                    grown, varints = grown + delta, True
        if is_edited(files.get(GRAPH)):
            problems.append(f"{GRAPH} is read-only")
        splices += self._metadata(files.get(METADATA), problems)
        if varints:
            graph = self.shown.model.graph
            try:
                splices.append(self._length_splice(graph, graph.value + grown, "the graph"))
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise RepackError(f"cannot write {self.source.path}: " + "; ".join(problems))
        pos = 0
        for start, length, write in sorted(splices, key=lambda s: s[0]):
            output.copy(self.source, pos, start - pos)
            write(output)
            pos = start + length
        output.copy(self.source, pos, self.source.size - pos)

    def _edit(self, path: str, stored: Stored, node: File) -> tuple[list, int]:
        """The splices that put an edited initializer's values in, and by
        how many bytes its graph grows."""
        content, start, length = self._values(path, node)
        if stored.kind == "varints":
            number = TYPED_FIELD.get(stored.tensor.dtype.name, T_INT32_DATA)
            return self._varint_splices(stored, path, VarintField(number, stored.tensor.dtype, content, start, length))
        return [(stored.tensor.data.offset, length, lambda out: out.copy_content(content, start, length))], 0

    def _varint_fields(self, stored: Stored, path: str) -> list[protowire.Field]:
        """The fields that hold an initializer's varints, each checked to lie
        as protobuf writes them (packed, lengths in their fewest bytes), as
        its TensorProto's and the graph's: where the repack rewrites them."""
        proto, graph = stored.proto, self.shown.model.graph
        info = read_tensor(self.source, proto.offset, proto.end)
        fields = info.typed[TYPED_FIELD.get(stored.tensor.dtype.name, T_INT32_DATA)]
        for f in (*fields, proto, graph):
            self._header_start(f, path)
        return fields

    def _varint_splices(self, stored: Stored, path: str, new: VarintField) -> tuple[list, int]:
        """The splices that write an initializer kept as varints anew: its
        fields replaced by one packed field of the new values, its
        TensorProto's length rewritten; and by how many bytes it grew."""
        splices, old = [], 0
        for i, f in enumerate(self._varint_fields(stored, path)):
            begin = self._header_start(f, path)
            old += f.end - begin
            splices.append((begin, f.end - begin, new.write if i == 0 else lambda out: None))
        delta = new.size - old
        return splices + [self._length_splice(stored.proto, stored.proto.value + delta, path)], delta

    def _length_splice(self, f: protowire.Field, length: int, what: str) -> tuple:
        begin = self._header_start(f, what)
        header = encode_len(f.number, length)
        return begin, f.offset - begin, lambda out: out.write(header)

    def _header_start(self, f: protowire.Field, what: str) -> int:
        """Where a LEN field's tag starts; ValueError unless its tag and
        length lie as protobuf writes them, in their fewest bytes."""
        header = encode_len(f.number, f.value)
        begin = f.offset - len(header)
        if f.wire != protowire.LEN or begin < 0 or self.source.read_exact(begin, len(header)) != header:
            raise ValueError(f"{what}: its varints lie unpacked or behind lengths written long, which ckptfs "
                             "does not rewrite")
        return begin

    def _metadata(self, node, problems: list[str]) -> list:
        """The splices that put the edited metadata in: the entries where
        the first one lay, the others' ranges emptied. An entry left as
        metadata.yaml shows it is copied as it lies (a value shown as
        `<N bytes>`, or not UTF-8 and shown with U+FFFD, stays byte for
        byte); a new or changed one is written anew."""
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
        model = self.shown.model
        kept = dict(zip(model.metadata, model.metadata_ranges))
        parts = [kept.get(entry) or entry_bytes(*entry) for entry in entries]

        def write(out) -> None:
            for part in parts:
                if isinstance(part, bytes):
                    out.write(part)
                else:
                    out.copy(self.source, part[0], part[1] - part[0])

        first, *rest = model.metadata_ranges or [(self.source.size, self.source.size)]
        return [(first[0], first[1] - first[0], write)] + [(start, end - start, lambda out: None) for start, end in rest]


def parse_metadata(data: bytes) -> list[tuple[str, str]]:
    """metadata.yaml's entries (none for an empty file); ValueError unless it is a mapping of strings."""
    try:
        return list((string_mapping(data) or {}).items())
    except ValueError as e:
        raise ValueError(f"{METADATA}: {e}") from None


def entry_bytes(key: str, value: str) -> bytes:
    """A metadata_props entry (a StringStringEntryProto in ModelProto's field 14)."""
    k, v = key.encode(), value.encode()
    payload = encode_len(1, len(k)) + k + encode_len(2, len(v)) + v
    return encode_len(14, len(payload)) + payload
