"""torch.export archives (`.pt2`: `torch.export.save`, `package_pt2`).

A PT2 archive is a zip written by torch's `PyTorchFileWriter`, every record
in one folder, read as `torch.export.load` reads it: through miniz's rules
(`torchzip_records`), the folder's `archive_format` holding `pt2`. Each
program `<name>` is `models/<name>.json` (the serialized ExportedProgram),
its weights and constants are records `data/weights/weight_N` and
`data/constants/tensor_N` described by their payload configs (`pt2_payloads`),
its example inputs `data/sample_inputs/<name>.pt` (a torch.save zip). An
archive of torch 2.5 to 2.7 holds each program's state dict and constants
as torch.save zips instead (`data/weights/<name>.pt`); the zip of torch 2.1
to 2.6 (`serialized_exported_program.json`, `serialized_state_dict.pt`...,
no folder) one program in the same way. Their tensors are shown where a
newer archive's are, read as `torch.load` would read them (inertly).

Read-only: the tree shows what `torch.export.load` loads, the JSON records
as YAML; `.ckptfs/raw/` holds the archive and each of its records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..pickle.inert import InertUnpickler, PickleError
from ..pickle.pyobjects import yaml_file
from ..sources.base import Source
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Dir, File, Node, PathConflict
from ..tree.rawfiles import raw_file, raw_mirror
from ..tree.tensors import PlacedTensor, Tensor, tensor_tree
from .base import FileFormat, Opening, Pickles
from .pt2_payloads import Payload, PayloadError, payloads, raw_tensor
from .torchzip import LOCAL_HEADER, ZIP_MAGIC, archive_folder, expand_nested
from .torchzip_records import Entry, read_records

#: what the first record of a PT2 archive may be, below the archive's folder
#: (torch writes the weights first, older versions `archive_format` or a model)
FIRST_RECORDS = (b"archive_format", b"archive_version", b"models/", b"data/weights/", b"data/constants/",
                 b"data/sample_inputs/", b"data/aotinductor/", b"data/executorch/", b"data/mtia", b"extra/",
                 b"xl_model_weights/")
#: the first record of the zip torch.export.save wrote before the PT2 archive (torch 2.1 to 2.6)
OLD_FIRST_RECORD = b"serialized_exported_program.json"
#: the short text records shown together in `archive.yaml`
ARCHIVE_FACTS = (b"archive_format", b"archive_version", b"byteorder", b".data/version", b".data/serialization_id",
                 b"version")
MODELS, WEIGHTS, CONSTANTS = b"models/", b"data/weights/", b"data/constants/"
KINDS = ("weights", "constants")
#: the most JSON values a payload config may hold for each record the
#: archive may have (one payload is 25)
VALUES_PER_PAYLOAD = 32
#: the records of constants Python's pickle wrote (opaque objects), as torch names them
OPAQUE_PREFIX = "opaque_obj_"


@dataclass(frozen=True)
class Program:
    """Where one exported program's records are, below the archive's folder."""

    name: str
    #: its serialized ExportedProgram (JSON)
    model: bytes
    #: its example inputs (a torch.save zip)
    inputs: bytes
    #: weights, constants -> (the payload config, the folder of its records), for a PT2 archive
    configs: dict[str, tuple[bytes, bytes]]
    #: weights, constants -> the torch.save zip of them all (torch 2.1 to 2.7)
    pickled: dict[str, bytes]

    @classmethod
    def in_pt2(cls, name: str) -> Program:
        n = name.encode()
        configs = {"weights": (WEIGHTS + n + b"_weights_config.json", WEIGHTS),
                   "constants": (CONSTANTS + n + b"_constants_config.json", CONSTANTS)}
        return cls(name, MODELS + n + b".json", b"data/sample_inputs/" + n + b".pt", configs,
                   {"weights": WEIGHTS + n + b".pt", "constants": CONSTANTS + n + b".pt"})


#: the one program of the zip torch 2.1 to 2.6 wrote
OLD_PROGRAM = Program("model", OLD_FIRST_RECORD, b"serialized_example_inputs.pt", {},
                      {"weights": b"serialized_state_dict.pt", "constants": b"serialized_constants.pt"})


class TooManyValues(FormatError):
    """A JSON record that may hold more values than it is worth parsing."""


def sniff(head: bytes) -> bool:
    """A zip whose first record is one of a PT2 archive's, in a folder, or
    the ExportedProgram of the zip torch.export.save wrote before."""
    if head[:4] != ZIP_MAGIC or len(head) < LOCAL_HEADER.size:
        return False
    name_length = LOCAL_HEADER.unpack_from(head)[9]
    first = head[LOCAL_HEADER.size : LOCAL_HEADER.size + name_length]
    folder, slash, rest = first.partition(b"/")
    return (bool(folder and slash) and rest.startswith(FIRST_RECORDS)) or first == OLD_FIRST_RECORD


@dataclass
class _Tree:
    """What the mount shows, gathered program by program."""

    tensors: list[Tensor] = field(default_factory=list)
    #: files that are not tensors, by their path parts
    files: list[tuple[list[str], Node]] = field(default_factory=list)
    placed: list[PlacedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    #: `.ckptfs/raw/`: the archive, and each of its records
    raw: Dir = field(default_factory=Dir)
    #: the globals the pickles name (older archives' state dicts, opaque objects)
    pickle_globals: list[str] = field(default_factory=list)


class Pt2Archive:
    """The records of one archive and what they hold."""

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        self.archive = read_records(source, name)
        self.archive.require_agreement()
        first = self.archive.entries[0].name_bytes if self.archive.entries else b""
        self.folder = b"" if first == OLD_FIRST_RECORD else archive_folder(self.archive, name)
        marker = self.text(b"archive_format")
        if self.folder and marker != "pt2":
            raise FormatError(name, "a zip archive whose archive_format record " + (
                f"holds {marker!r}" if marker is not None else "is missing") + ", not a PT2 archive")
        order = self.text(b"byteorder")
        if order not in (None, "little"):
            raise FormatError(name, f"byteorder record holds {order!r}: only little-endian archives are read")

    def entry(self, path: bytes) -> Entry | None:
        return self.archive.find(self.folder + path)

    def text(self, path: bytes) -> str | None:
        """A short text record (at most 1 KiB), stripped, or None if absent."""
        entry = self.entry(path)
        if entry is None:
            return None
        return self.archive.read(entry, 1024).decode("utf-8", "replace").strip()

    def json(self, entry: Entry, most_values: int) -> object:
        """A JSON record, parsed; FormatError naming it if it is not JSON
        or is larger than max_header_bytes; TooManyValues, before it is
        parsed, if it may hold more than `most_values` values (a value
        takes ten times its bytes once parsed, `{}` seventy)."""
        label = f"{self.name}: {entry.filename}"
        if entry.file_size > LIMITS.header_bytes:
            raise FormatError(label, f"{plural(entry.file_size, 'byte')} of JSON, above max_header_bytes "
                                     "(-o max_header_bytes raises the limit)")
        data = self.archive.read(entry, LIMITS.header_bytes)
        values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1  # at least as many as it holds
        if values > most_values:
            raise TooManyValues(label, f"up to {values} JSON values, more than {most_values}")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            raise FormatError(label, f"not readable JSON ({type(e).__name__}: {e})") from None

    def programs(self) -> list[Program]:
        """The programs, from `models/<name>.json`, in the archive's order."""
        if not self.folder:
            return [OLD_PROGRAM]
        prefix = self.folder + MODELS
        return [Program.in_pt2(e.name_bytes[len(prefix) : -5].decode("utf-8", "replace")) for e in self.archive.entries
                if e.name_bytes.startswith(prefix) and e.name_bytes.endswith(b".json") and len(e.name_bytes) > len(prefix) + 5]

    def tree(self) -> _Tree:
        tree = _Tree(raw=self.raw())
        programs = self.programs()
        for program in programs:
            self._program(tree, program, "" if len(programs) == 1 else program.name)
        facts = {p.decode(): self.text(p) for p in ARCHIVE_FACTS if self.entry(p) is not None}
        tree.files.append((["archive.yaml"], yaml_file(facts)))
        self._extra_files(tree, b"extra/" if self.folder else b"extra_files/")
        if not programs:
            tree.notes.append("holds no exported program (models/*.json): an AOTInductor package? Its records "
                              "are in .ckptfs/raw/")
        return tree

    def _program(self, tree: _Tree, program: Program, prefix: str) -> None:
        """One program's files: its ExportedProgram, payload configs and
        sample inputs, and its tensors, under `prefix` (its name when the
        archive holds several)."""
        where = names.tensor_path(prefix, "") if prefix else []  # the folder of its tensors
        model = self.entry(program.model)
        if model is None:
            raise FormatError(self.name, f"{program.model.decode()} is missing")
        try:
            tree.files.append((where + ["exported_program.yaml"], yaml_file(self.json(model, LIMITS.yaml_values))))
        except TooManyValues as e:
            tree.files.append((where + ["exported_program.json"], self._record_file(model)))
            tree.notes.append(f"{model.filename} is shown as the JSON it is: {e.problem}, the max_yaml_values a "
                              "YAML view shows")
        inputs = self.entry(program.inputs)
        if inputs is not None:
            tree.files.append((where + ["sample_inputs.pt"], self._record_file(inputs)))
        for kind in KINDS:
            config_path, folder = program.configs.get(kind, (None, b""))
            config = self.entry(config_path) if config_path else None
            pickled = self.entry(program.pickled[kind])
            if config is not None:
                try:
                    parsed = self.json(config, LIMITS.members * VALUES_PER_PAYLOAD)
                except TooManyValues as e:
                    raise FormatError(self.name, f"{config.filename}: {e.problem}, which {plural(LIMITS.members, 'payload')} "
                                                 "take (-o max_members raises the limit)") from None
                tree.files.append((where + [f"{kind}_config.yaml"], yaml_file(parsed)))
                self._payloads(tree, parsed, folder, prefix, config.filename)
            elif pickled is not None:
                self._legacy(tree, pickled, where, kind)
            else:
                tree.notes.append(f"program {program.name!r} has no {kind} config: it holds no {kind}")

    def _payloads(self, tree: _Tree, config: object, folder: bytes, prefix: str, label: str) -> None:
        """The tensor (or the file) of each payload of a config."""
        try:
            entries, notes = payloads(config, label)
        except PayloadError as e:
            raise FormatError(self.name, str(e)) from None
        tree.notes += notes
        for payload in entries:
            key = f"{prefix}.{payload.fqn}" if prefix else payload.fqn
            if key in tree.keys:
                tree.notes.append(f"{label}: {payload.fqn!r} is left out: another payload has the same name")
                continue
            tree.keys.add(key)
            record = self.entry(folder + payload.path_name.encode())
            if record is None:
                problem = f"its record {payload.path_name!r} is not in the archive"
            elif payload.pickled:
                self._pickled(tree, payload, key, record)
                continue
            else:
                try:
                    source = self.archive.contents(record)
                    tree.tensors.append(raw_tensor(payload, key, source, 0))
                    continue
                except (PayloadError, FormatError) as e:
                    problem = getattr(e, "problem", None) or str(e)
            tree.notes.append(f"{label}: {payload.fqn!r} is left out: {problem}")

    def _pickled(self, tree: _Tree, payload: Payload, key: str, record: Entry) -> None:
        """A pickled payload, never unpickled: its bytes as a file (`.pt`
        for a tensor, torch.load reads it; `.pkl` for an object), and for
        an object pickled by Python's pickle (an opaque object), what it
        holds as YAML, read by the inert interpreter."""
        suffix = ".pt" if payload.meta is not None else ".pkl"
        tree.files.append((names.tensor_path(key, suffix), self._record_file(record)))
        tree.notes.append(f"{payload.fqn!r} is pickled ({record.filename}), shown as its bytes: ckptfs runs no "
                          "pickle")
        if payload.path_name.startswith(OPAQUE_PREFIX) and record.file_size <= LIMITS.pickle_bytes:
            try:
                unpickler = InertUnpickler(self.archive.read(record, LIMITS.pickle_bytes))
                value = unpickler.load()
            except (PickleError, FormatError) as e:
                tree.notes.append(f"{record.filename} cannot be shown as YAML: {e}")
                return
            tree.pickle_globals += [g.path for g in unpickler.globals]
            tree.files.append((names.tensor_path(key, ".yaml"), yaml_file(value)))

    def _legacy(self, tree: _Tree, entry: Entry, where: list[str], kind: str) -> None:
        """An older program's state dict or constants: a torch.save zip,
        its tensors shown where a newer archive's would be (one that cannot
        be read stays a plain file, `<kind>.pt`)."""
        expanded = expand_nested(self.archive.contents(entry), entry.filename, tree.notes)
        if expanded is None:
            tree.files.append((where + [f"{kind}.pt"], self._record_file(entry)))
            return
        folder, placed, pickle_globals = expanded
        tree.pickle_globals += pickle_globals
        tree.files += [(where + [name], node) for name, node in folder.children.items()]
        tree.placed += [PlacedTensor("/".join(where + [p.path]), p.tensor) for p in placed]

    def _extra_files(self, tree: _Tree, folder: bytes) -> None:
        """The extra files saved with the programs (`extra_files=`), as they
        are, in `extra/`."""
        prefix = self.folder + folder
        for entry in self.archive.entries:
            if entry.name_bytes.startswith(prefix) and not entry.marked_folder:
                relative = entry.name_bytes[len(prefix) :].decode("utf-8", "replace")
                tree.files.append((["extra", *names.file_parts(relative)], self._record_file(entry)))

    def _record_file(self, entry: Entry) -> File:
        contents = self.archive.contents(entry)
        return raw_file(contents, 0, contents.size)

    def raw(self) -> Dir:
        """The archive itself, and each of its records at its path."""
        raw = raw_mirror(self.source)
        for entry in self.archive.entries:
            if not entry.marked_folder:
                try:
                    _place(raw, names.file_parts(entry.filename), self._record_file(entry))
                except (PathConflict, FormatError):
                    continue  # a record no path holds beside the others: the archive still has it
        return raw


def _place(root: Dir, parts: list[str], node: Node) -> None:
    root.subdir(parts[:-1]).add(parts[-1], node)


def read(source: Source, name: str) -> tuple[Dir, list[PlacedTensor], _Tree]:
    """The tree of the archive in `source`, its tensors, and what else was
    gathered (notes, pickle globals)."""
    tree = Pt2Archive(source, name).tree()
    root, placed = tensor_tree(tree.tensors)
    for parts, node in tree.files:
        try:
            _place(root, parts, node)
        except PathConflict:
            tree.notes.append(f"{'/'.join(parts)} is left out: another file or folder takes its place")
    return root, placed + tree.placed, tree


def open_file(opening: Opening) -> Checkpoint:
    source, st = opening.source, opening.stat
    root, placed, tree = read(source, source.path)
    return Checkpoint("torch.export (pt2)", source.path, st, root, tree.raw, placed,
                      tree.notes, pickle_globals=list(dict.fromkeys(tree.pickle_globals)))


FORMAT = FileFormat("torch.export (pt2)", sniff, open_file, "torch.export archives (.pt2)", None,
                    pickles=Pickles.ZIP)
