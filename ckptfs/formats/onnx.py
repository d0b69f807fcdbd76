"""ONNX models (`.onnx`), their weights inline or in external data files
beside them (`onnx.save_model(..., save_as_external_data=True)`).

ONNX has no magic: a file is taken when its first fields are a ModelProto's
(`sniff`). The model is walked with `protowire` in bounded steps, never
parsed whole (the `onnx` package loads it all, which is what a 100 GB model
cannot afford). The tree:

- every initializer of the main graph as `.npy` at its name split at dots
  (tensor_tree): zero-copy where its values lie as NumPy lays them
  (`raw_data`, a packed `float_data`/`double_data`, or a range of an
  external data file, whose `location` must lie inside the model's
  folder); decoded on read where they are varints (`int32_data`,
  `int64_data`, `uint64_data`: float16 and bfloat16 bits, bools and small
  integers in int32s as ONNX keeps them); the initializers of subgraphs
  (If, Loop, Scan bodies) the same way under `subgraphs/NODE/ATTRIBUTE/`;
- `graph.yaml`, read-only: ir_version, opsets, producer, inputs, outputs,
  nodes with their attributes, subgraphs nested (onnx_graph);
- `metadata.yaml`: `metadata_props`, editable.

A tensor that cannot be shown (a type no NumPy dtype holds as ONNX stores
it: strings, 4-bit and 2-bit types; values that run past their file; an
external location outside the folder or naming the model itself) is
left out with a note, alone.
Writable (onnx_write): metadata.yaml, and initializers stored in the model
file (of the main graph or a subgraph) replaced with the same dtype and shape.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..sources.base import Source
from ..sources.directory import Directory
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME
from ..tree.nodes import Access, Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import raw_file, raw_mirror
from ..tree.tensors import PiecedTensor, PlacedTensor, Tensor, TensorFile, own_access, tensor_tree
from ..tree.yamltext import dump
from . import protowire
from .base import FileFormat, Opening, WriterKind
from .onnx_graph import GraphText, type_name, yaml_text
from .onnx_proto import (
    DATA_TYPES,
    DOC_STRING,
    DOMAIN,
    EXTERNAL,
    FIELD_NAMES,
    FIXED_FIELDS,
    G_INITIALIZER,
    G_SPARSE_INITIALIZER,
    GRAPH,
    IR_VERSION,
    METADATA_PROPS,
    MODEL_FIELDS,
    MODEL_VERSION,
    OPSET_IMPORT,
    PRODUCER_NAME,
    PRODUCER_VERSION,
    T_INT32_DATA,
    TYPED_FIELD,
    TensorInfo,
    VarintValues,
    counted,
    read_tensor,
    string_pair,
    text,
)
from .onnx_write import Writer
from .protowire import LEN, VARINT

#: the highest ir_version the sniff takes: far above any ONNX has defined (one more every release or two)
MAX_IR_VERSION = 100
#: ModelProto's string fields that name: its producer, their version, its domain
NAMES = (PRODUCER_NAME, PRODUCER_VERSION, DOMAIN)
#: the folder of the subgraphs' initializers
SUBGRAPHS = "subgraphs"
FACTS = {IR_VERSION: "ir_version", PRODUCER_NAME: "producer_name", PRODUCER_VERSION: "producer_version",
         DOMAIN: "domain", MODEL_VERSION: "model_version", DOC_STRING: "doc_string"}


def sniff(head: bytes) -> bool:
    """The first bytes are a ModelProto's fields: ir_version first, as
    protobuf writes fields in their numbers' order, a small number, then
    only ModelProto's fields with their wire types, up to where the head
    ends (a field may run past it). A producer_name, producer_version or
    domain is short text that ends inside the head: a TensorFlow
    saved_model.pb starts alike (`08 01 12`: schema version 1, then its
    MetaGraphDef as field 2, a long binary message)."""
    pos, first = 0, True
    while pos < len(head):
        try:
            tag, used = protowire.decode_varint(head, pos, "", pos)
            number, wire = tag >> 3, tag & 7
            if first and (number, wire) != (IR_VERSION, VARINT) or MODEL_FIELDS.get(number) != wire:
                return False
            value, more = protowire.decode_varint(head, pos + used, "", pos)
        except FormatError:  # a varint cut by the end of the head, or longer than 10 bytes
            return not first and len(head) - pos < 20
        if first and not 1 <= value <= MAX_IR_VERSION:
            return False
        if number in NAMES and not _short_text(head[pos + used + more:pos + used + more + value], value):
            return False
        pos += used + more + (value if wire == LEN else 0)
        first = False
    return not first


def _short_text(data: bytes, length: int) -> bool:
    """Whether a string field of `length` bytes, `data` as far as the head
    holds it, is a name: whole in the head, printable UTF-8."""
    if len(data) < length:
        return False
    try:
        return data.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False


@dataclass
class Model:
    """A ModelProto's top level: its small facts, and where the rest lies."""

    facts: dict = field(default_factory=dict)
    opsets: dict = field(default_factory=dict)
    graph: protowire.Field | None = None
    metadata: list[tuple[str, str]] = field(default_factory=list)
    #: each metadata_props field's (start of its tag, end)
    metadata_ranges: list[tuple[int, int]] = field(default_factory=list)
    functions: int = 0


def read_model(source: Source) -> Model:
    model, start = Model(), 0
    for f in counted(source, 0, source.size, "the model"):
        if f.number in FACTS:
            model.facts[FACTS[f.number]] = text(source, f) if f.wire == LEN else f.signed
        elif f.number == GRAPH and f.wire == LEN:
            model.graph = f
        elif f.number == OPSET_IMPORT and f.wire == LEN:
            domain, version = "", 0
            for part in protowire.fields(source, f.offset, f.end):
                domain = text(source, part) if part.number == 1 else domain
                version = part.signed if part.number == 2 and part.wire == VARINT else version
            model.opsets[domain or "ai.onnx"] = version
        elif f.number == METADATA_PROPS and f.wire == LEN:
            model.metadata.append(string_pair(source, f))
            model.metadata_ranges.append((start, f.end))
        elif f.number == 25:
            model.functions += 1
        start = f.end
    if model.graph is None:
        raise FormatError(source.path, "an ONNX model without a graph")
    return model


@dataclass
class Stored:
    """An initializer shown as a file, and how the model stores it."""

    tensor: Tensor
    #: "inline" (raw_data or a packed float_data/double_data: bytes a repack can replace where they lie),
    #: "external" or "varints"
    kind: str
    #: for one of the main graph: its TensorProto's field in the graph (a
    #: repack of new varints rewrites its length and the graph's)
    proto: protowire.Field | None = None


@dataclass
class Shown:
    """What a mount shows of a model."""

    model: Model
    stored: dict[str, Stored] = field(default_factory=dict)  # by path in the tree
    notes: list[str] = field(default_factory=list)
    #: the external data files the initializers lie in, by their path beside the model
    externals: dict[str, Source] = field(default_factory=dict)


class Initializers:
    """Initializers read into tensors that can be shown, each with its kind
    of storage (`Stored.kind`); a note for each that cannot. Of two of one
    name in a graph the last is shown, as onnxruntime runs it (onnx.checker
    refuses such a model, onnxruntime does not); the external data files
    opened are shared."""

    def __init__(self, source: Source, neighbours: Directory | None, notes: list[str]):
        self.source, self.neighbours, self.notes = source, neighbours, notes
        self.externals: dict[str, Source] = {}
        self.count = 0

    def read(self, fields: list[protowire.Field], prefix: str = "") -> list[tuple[Tensor, str, protowire.Field]]:
        """The tensors of a graph's initializers, each named `prefix` + its
        name, with its kind of storage and its TensorProto's field."""
        found: dict[str, tuple[Tensor, str, protowire.Field]] = {}
        for f in fields:
            self.count += 1
            if self.count > LIMITS.members:
                raise FormatError(self.source.path, f"more than {plural(LIMITS.members, 'initializer')} "
                                                    "(-o max_members raises the limit)")
            try:
                info = read_tensor(self.source, f.offset, f.end)
            except FormatError as e:
                self.notes.append(f"the initializer at offset {f.offset} is left out: {e.problem}")
                continue
            info.name = prefix + info.name
            if found.pop(info.name, None) is not None:
                self.notes.append(f"{info.name!r}: an earlier initializer of this name is left out "
                                  "(onnxruntime runs the last)")
            try:
                found[info.name] = (*tensor_of(self.source, info, self.neighbours, self.externals), f)
            except FormatError as e:
                self.notes.append(f"{info.name!r} is left out: {e.problem}")
        return list(found.values())


def main_initializers(source: Source, graph: protowire.Field, notes: list[str]) -> list[protowire.Field]:
    """The fields of the main graph's initializers (a note for its sparse ones, not shown)."""
    found, sparse = [], 0
    for f in counted(source, graph.offset, graph.end, "the graph"):
        sparse += f.number == G_SPARSE_INITIALIZER
        if f.number == G_INITIALIZER and f.wire == LEN:
            found.append(f)
    if sparse:
        notes.append(f"{plural(sparse, 'sparse initializer')} not shown (graph.yaml counts them)")
    return found


def place_subgraph_initializers(root: Dir, reader: Initializers, found: list) -> list[PlacedTensor]:
    """The initializers of subgraphs (an If's branches, a Loop's body) under
    `subgraphs/`, a folder per node and attribute down to each, named there
    by those too (`If_0/then_branch/c`): names repeat across subgraphs."""
    by_place: dict[tuple[str, ...], list[protowire.Field]] = {}
    for where, f in found:
        by_place.setdefault(where, []).append(f)
    placed = []
    for where, fields in by_place.items():
        folder = [SUBGRAPHS, *(names.escape(part) for part in where)]
        for tensor, kind, _ in reader.read(fields, "/".join(where) + "/"):
            parts = folder + names.tensor_path(tensor.name[len("/".join(where)) + 1:])
            try:
                root.subdir(parts[:-1]).add(parts[-1], TensorFile(tensor))
            except PathConflict:
                reader.notes.append(f"{tensor.name!r} is left out: another file or folder takes its path")
                continue
            placed.append((PlacedTensor("/".join(parts), tensor), kind))
    return placed


def tensor_of(source: Source, info: TensorInfo, neighbours: Directory | None,
              externals: dict[str, Source]) -> tuple[Tensor, str]:
    """The tensor of an initializer, and its kind of storage (`Stored.kind`);
    FormatError for one that cannot be shown."""
    path, dtype_name = source.path, DATA_TYPES.get(info.data_type)
    if dtype_name is None:
        raise FormatError(path, f"{type_name(info.data_type)}: no NumPy dtype holds it as ONNX stores it")
    if any(d < 0 for d in info.dims):
        raise FormatError(path, f"a negative dimension in {info.dims}")
    if info.segmented:
        raise FormatError(path, "a segmented tensor (TensorProto.segment), which ckptfs does not join")
    dtype, shape = BY_NAME[dtype_name], tuple(info.dims)
    numel = math.prod(shape)
    nbytes = numel * dtype.bits // 8
    if info.data_location == EXTERNAL:  # as onnx and onnxruntime decide: external_data entries alone are ignored
        return Tensor(info.name, dtype, shape, _external(source, info, neighbours, externals, nbytes)), "external"
    if info.raw is not None:
        if info.raw.value != nbytes:
            raise FormatError(path, f"raw_data holds {plural(info.raw.value, 'byte')}; {dtype_name} "
                                    f"{list(shape)} takes {nbytes}")
        return Tensor(info.name, dtype, shape, Extent(source, info.raw.offset, nbytes)), "inline"
    number = TYPED_FIELD.get(dtype_name, T_INT32_DATA)
    fields = info.typed.get(number, [])
    if not fields:
        if numel:
            raise FormatError(path, f"holds no values ({numel} expected)")
        return Tensor(info.name, dtype, shape, Extent(source, 0, 0)), "inline"
    if number in FIXED_FIELDS:
        return _fixed(source, info, fields, nbytes), "inline"
    values = VarintValues(source, fields, dtype.bits // 8, numel)
    values.marks()  # read through once: values that are no whole varints, or too few, leave the tensor out now
    first = Extent(source, fields[0].offset, fields[0].value if fields[0].wire == LEN else 0)
    return PiecedTensor(info.name, dtype, shape, first, (values,)), "varints"


def _fixed(source: Source, info: TensorInfo, fields: list[protowire.Field], nbytes: int) -> Tensor:
    """Values in a packed float_data or double_data: little-endian, as NumPy lays them."""
    name = FIELD_NAMES[fields[0].number]
    if len(fields) > 1 or fields[0].wire != LEN:
        raise FormatError(source.path, f"{name} written unpacked or in {len(fields)} parts, which ckptfs does not join")
    if fields[0].value != nbytes:
        raise FormatError(source.path, f"{name} holds {plural(fields[0].value, 'byte')}; its shape takes {nbytes}")
    return Tensor(info.name, BY_NAME[DATA_TYPES[info.data_type]], tuple(info.dims),
                  Extent(source, fields[0].offset, nbytes))


def _external(source: Source, info: TensorInfo, neighbours: Directory | None, externals: dict[str, Source],
              nbytes: int) -> Extent:
    """The range of an external data file that holds a tensor: its
    `location` a relative path that stays inside the model's folder."""
    path, location = source.path, info.external.get("location", "")
    if not location:
        raise FormatError(path, "external data without a location")
    normal = posixpath.normpath(location)
    if location.startswith(("/", "\\")) or normal == ".." or normal.startswith("../") or "\\" in location \
            or ":" in location.split("/")[0]:
        raise FormatError(path, f"external data location {location!r} is no relative path inside the model's folder")
    if neighbours is None:
        raise FormatError(path, f"its external data {location!r} cannot be opened: the model is no local file")
    if normal == posixpath.basename(path):  # its offset would point elsewhere once a repack changes a length
        raise FormatError(path, f"its external data location {location!r} is the model file itself")
    if not neighbours.is_file(normal):
        raise FormatError(path, f"its external data file {location!r} is not a file inside the model's folder")
    try:
        offset = int(info.external.get("offset", "0"))
        length = int(info.external.get("length", str(nbytes)))
    except ValueError:
        raise FormatError(path, f"external data offset or length is no number: {info.external}") from None
    if length != nbytes or offset < 0:
        raise FormatError(path, f"external data of {plural(length, 'byte')} at {offset}; its shape takes {nbytes}")
    if normal not in externals:
        if len(externals) >= LIMITS.members:
            raise FormatError(path, f"more than {plural(LIMITS.members, 'external data file')}")
        try:
            externals[normal] = neighbours.open(normal)
        except OSError as e:  # unreadable, or no descriptor left (a file per tensor, thousands of them)
            raise FormatError(path, f"its external data file {location!r}: {e.strerror or e}") from None
    data = externals[normal]
    if offset + nbytes > data.size:
        raise FormatError(path, f"its {plural(nbytes, 'byte')} at {offset} run past the end of {location} "
                                f"({plural(data.size, 'byte')})")
    return Extent(data, offset, nbytes)


def metadata_text(metadata: list[tuple[str, str]]) -> str:
    return dump(dict(metadata)) if metadata else "{}\n"


def read(source: Source, neighbours: Directory | None):
    """(the tree, its placed tensors, what the writer needs)."""
    model = read_model(source)
    shown = Shown(model)
    reader = Initializers(source, neighbours, shown.notes)
    found = reader.read(main_initializers(source, model.graph, shown.notes))
    root, placed = tensor_tree([t for t, _, _ in found])
    kinds = {id(t): (kind, proto) for t, kind, proto in found}
    graph_text = GraphText(source)
    try:
        graph = graph_text.graph(model.graph.offset, model.graph.end)
    except FormatError as e:  # the initializers and metadata are shown all the same
        graph = f"not shown: {e.problem}"
        shown.notes.append(f"graph.yaml cannot show the graph: {e.problem}")
    inner = place_subgraph_initializers(root, reader, graph_text.subgraph_initializers)
    placed += [p for p, _ in inner]
    kinds.update((id(p.tensor), (kind, None)) for p, kind in inner)
    shown.stored = {p.path: Stored(p.tensor, *kinds[id(p.tensor)]) for p in placed}
    shown.externals = reader.externals
    head = {**model.facts, "opsets": model.opsets, "graph": graph}
    if model.functions:
        head["functions"] = model.functions
    described = File(Content([yaml_text(head).encode()]))
    described.read_only = True
    if len(dict(model.metadata)) < len(model.metadata):
        shown.notes.append("metadata_props holds a key twice: metadata.yaml shows the last value")
    # no initializer takes these names: every name splits at its dots, and a file of the tree ends in .npy
    root.add("graph.yaml", described)
    root.add("metadata.yaml", File(Content([metadata_text(model.metadata).encode()])))
    return root, placed, shown


def open_file(opening: Opening) -> Checkpoint:
    source = opening.source
    root, placed, shown = read(source, opening.neighbours)
    own_access(root, placed, Access.of(opening.stat))
    ckpt = Checkpoint("onnx", source.path, opening.stat, root, _raw(source, shown.externals), placed, shown.notes)
    ckpt.writer = Writer(source, shown)
    return ckpt


def _raw(source: Source, externals: dict[str, Source]) -> Dir:
    """`.ckptfs/raw/`: the model and the external data files it reads, as they are."""
    raw = raw_mirror(source)
    for name, data in externals.items():
        parts = names.file_parts(name)
        raw.subdir(parts[:-1]).children.setdefault(parts[-1], raw_file(data, 0, data.size))
    return raw


FORMAT = FileFormat("onnx", sniff, open_file, "ONNX models (.onnx, with external data beside them)", WriterKind.FILE)
