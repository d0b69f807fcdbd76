"""Keras 3 `.keras` files (`model.save("m.keras")`, `keras.saving.save_model`).

A `.keras` file is a zip, written by Python's zipfile with every record
stored: `metadata.json` (first), `config.json` (the model's
serialized config), `model.weights.h5` (an HDF5 file: one group per
layer, `layers/<layer>/vars/<n>` each variable, the optimizer's under
`optimizer/vars/`) and sometimes `assets/`. Records are read as
`keras.saving.load_model` reads them, through zipfile (of two records of
one name, the last).

The tree: `config.yaml` and `metadata.yaml` (the JSON records as YAML),
the datasets of `model.weights.h5` at their paths (`layers/dense/vars/0.npy`,
formats/hdf5.py: zero-copy from the archive where the record is stored,
as Keras writes it; a deflated record is inflated as reads go), the HDF5
attributes in `attributes.yaml` (each `vars` group's `name` is the layer's
name in the config), `assets/` and any other record as files.
`.ckptfs/raw/` holds the archive and each of its records.

Writable: edits of `config.yaml` and `metadata.yaml`, written back as JSON,
and of the datasets served zero-copy (same dtype and shape: their bytes
replaced where they lie in `model.weights.h5`, the rest of it copied), into
a new archive whose other records are copied byte for byte (their CRCs
kept); any other edit is refused when the file is closed.
"""

from __future__ import annotations

import json
import zipfile

import yaml

from ..errors import EditRefused, FormatError, RepackError
from ..limits import LIMITS
from ..pack.changes import is_edited
from ..pickle.pyobjects import to_yaml
from ..sources.base import Source
from ..tree import names, npy
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Content, Dir, Extent, File, Node, PathConflict
from ..tree.rawfiles import raw_file, raw_mirror
from ..tree.tensors import PlacedTensor, Tensor
from . import hdf5
from .base import FileFormat, FileWriter, Opening, WriterKind
from .jsontext import json_object
from .npz import records_of
from .torchzip import LOCAL_HEADER, ZIP_MAGIC, record_extent, record_source
from .zipout import Record, ZipStream

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
#: the JSON records shown as YAML (and written back from it), by the file that shows them
JSON_RECORDS = {"config.yaml": CONFIG, "metadata.yaml": METADATA}
#: what the first record of a `.keras` zip may be: Keras writes metadata.json first
FIRST_RECORDS = (METADATA.encode(), CONFIG.encode())


def sniff(head: bytes) -> bool:
    """A zip whose first record is `metadata.json` or `config.json`."""
    if head[:4] != ZIP_MAGIC or len(head) < LOCAL_HEADER.size:
        return False
    name_length = LOCAL_HEADER.unpack_from(head)[9]
    return head[LOCAL_HEADER.size : LOCAL_HEADER.size + name_length] in FIRST_RECORDS


def zip_config(source: Source, name: str) -> dict | None:
    """The `config.json` of any zip, parsed, as `keras.saving.load_model`
    finds it (zipfile, by name, wherever the record lies; the last of that
    name); None where the zip has none, or zipfile cannot read it (nor can
    Keras). FormatError where the config is no JSON object or the zip is
    past the budgets."""
    try:
        archive = KerasArchive(source, name)
    except FormatError as e:
        if e.problem.startswith(("not a readable zip archive", f"a zip whose first record is Keras's, but it holds "
                                                                f"no {CONFIG}")):
            return None
        raise
    return archive.json(CONFIG)


class KerasArchive:
    """The records of one `.keras` file, by name (the last of a name, as zipfile takes it)."""

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        self.records = records_of(source, name)
        self.by_name = {info.filename: info for info in self.records}
        if CONFIG not in self.by_name:
            raise FormatError(name, f"a zip whose first record is Keras's, but it holds no {CONFIG}")

    def contents(self, record: str) -> Source:
        return record_source(self.source, self.by_name[record], self.name)

    def json(self, record: str) -> dict:
        """A JSON record, parsed (formats/jsontext.py); FormatError naming it
        if it is not a JSON object or is larger than max_header_bytes."""
        info = self.by_name[record]
        label = f"{self.name}: {record}"
        if info.file_size > LIMITS.header_bytes:
            raise FormatError(label, f"{info.file_size} bytes of JSON, above max_header_bytes "
                                     "(-o max_header_bytes raises the limit)")
        return json_object(self.contents(record).read_exact(0, info.file_size), label, LIMITS.header_bytes,
                           f"Keras's {record}")

    def raw(self) -> Dir:
        """The archive itself, and each of its records at its path."""
        raw = raw_mirror(self.source)
        for info in self.by_name.values():
            if not info.filename.endswith("/"):
                try:
                    _place(raw, names.file_parts(info.filename), self._file(info.filename))
                except (PathConflict, FormatError):
                    continue  # a record no path holds beside the others: the archive still has it
        return raw

    def _file(self, record: str) -> File:
        contents = self.contents(record)
        return raw_file(contents, 0, contents.size)


def _place(root: Dir, parts: list[str], node: Node) -> None:
    root.subdir(parts[:-1]).add(parts[-1], node)


def read(source: Source, name: str) -> tuple[KerasArchive, Dir, list[PlacedTensor], list[str]]:
    """The archive, its tree, its tensors and notes."""
    archive = KerasArchive(source, name)
    root, placed, notes = Dir(), [], []
    if WEIGHTS in archive.by_name:
        shown = hdf5.expand(archive.contents(WEIGHTS), f"{name}:{WEIGHTS}")
        root, placed, notes = shown.root, shown.placed, shown.notes
        if archive.by_name[WEIGHTS].compress_type != zipfile.ZIP_STORED:
            notes.append(f"{WEIGHTS} is compressed in the archive: its datasets are inflated as they are read")
    else:
        notes.append(f"no {WEIGHTS}: the model's weights are not shown (a model.weights.npz is shown as a file)")
    for shown_as, record in JSON_RECORDS.items():
        if record in archive.by_name:
            _add(root, [shown_as], File(Content([to_yaml(archive.json(record)).encode()])), notes)
    for record in archive.by_name:
        if record not in (CONFIG, METADATA, WEIGHTS) and not record.endswith("/"):
            _add(root, names.file_parts(record), archive._file(record), notes)
    return archive, root, placed, notes


def _add(root: Dir, parts: list[str], node: Node, notes: list[str]) -> None:
    try:
        _place(root, parts, node)
    except PathConflict:
        notes.append(f"{'/'.join(parts)} is left out: another file or folder takes its place")


#: what a `.keras` mount takes edits of
EDITABLE = "config.yaml, metadata.yaml and the datasets served zero-copy (same dtype and shape)"


class _Window:
    """`length` bytes of an edited file's content from `start`: its data
    after the NPY header."""

    def __init__(self, content, start: int, length: int):
        self.content, self.start, self.length = content, start, length

    def read(self, offset: int, length: int) -> bytes:
        return self.content.read(self.start + offset, length)


class Writer(FileWriter):
    """A new `.keras` zip: the edited JSON records written from their YAML,
    `model.weights.h5` with the edited datasets' bytes put in place of
    theirs, every other record copied as it is, in the archive's order."""

    renames = False

    def __init__(self, archive: KerasArchive, placed: list[PlacedTensor]):
        self.archive = archive
        #: the datasets whose bytes lie in one range of the weights record, by path
        self.in_place = {p.path: p.tensor for p in placed if type(p.tensor) is Tensor}

    def check(self, path: str, node: File) -> None:
        if path in JSON_RECORDS:
            _json_of(path, node)
        elif path in self.in_place:
            self._data_of(path, node)
        else:
            raise EditRefused(f"{path}: a .keras file takes edits of {EDITABLE} only")

    def _data_of(self, path: str, node: File) -> _Window:
        """The edited dataset's new bytes; EditRefused unless they are an
        NPY of its dtype and shape."""
        tensor = self.in_place[path]
        try:
            dtype, shape, start, length = npy.edited_layout(node.content, path, tensor.dtype, lambda d: True, "HDF5")
        except ValueError as e:
            raise EditRefused(str(e)) from None
        if dtype != tensor.dtype or tuple(shape) != tensor.shape:
            raise EditRefused(f"{path}: {dtype.name} {list(shape)}; a dataset keeps its dtype and shape "
                              f"({tensor.dtype.name} {list(tensor.shape)})")
        return _Window(node.content, start, length)

    def write(self, files: dict, before: dict, output) -> None:
        new: dict[str, bytes] = {}
        datasets: dict[int, _Window] = {}  # offset in the weights record -> new bytes
        problems = []
        for path, (node, _) in before.items():
            if isinstance(node, File) and path not in files:
                problems.append(f"{path}: removed, and a .keras file cannot leave it out")
        for path, node in files.items():
            if not isinstance(node, File) or not (is_edited(node) or path not in before):
                continue
            try:
                self.check(path, node)
                if path in JSON_RECORDS:
                    new[JSON_RECORDS[path]] = _json_of(path, node)
                else:
                    datasets[self.in_place[path].data.offset] = self._data_of(path, node)
            except EditRefused as e:
                problems.append(str(e))
        if problems:
            raise RepackError(f"cannot write {self.archive.name}: " + "; ".join(problems))
        ZipStream([self._record(info, new, datasets) for info in self.archive.records]).write(output)

    def _record(self, info: zipfile.ZipInfo, new: dict[str, bytes], datasets: dict[int, _Window]) -> Record:
        latest = self.archive.by_name[info.filename] is info
        if info.filename in new and latest:
            data = new[info.filename]
            return Record(info.filename, len(data), data=data)
        if info.filename == WEIGHTS and datasets and latest:
            weights = self.archive.contents(WEIGHTS)
            return Record(WEIGHTS, weights.size, piece=_patched(weights, datasets))
        extent = record_extent(self.archive.source, info, self.archive.name)
        return Record(info.filename, extent.length, piece=extent, crc=info.CRC, method=info.compress_type,
                      size=info.file_size)


def _patched(weights: Source, datasets: dict[int, _Window]) -> Content:
    """The weights file's bytes with each edited dataset's in place of its own."""
    pieces: list = []
    pos = 0
    for offset in sorted(datasets):
        if offset < pos:
            raise RepackError(f"{weights.path}: two edited datasets share bytes; edit one at a time")
        pieces += [Extent(weights, pos, offset - pos), datasets[offset]]
        pos = offset + datasets[offset].length
    return Content([*pieces, Extent(weights, pos, weights.size - pos)])


def _json_of(path: str, node: File) -> bytes:
    """An edited YAML file as the JSON Keras reads; EditRefused if it is not a mapping."""
    try:
        value = yaml.safe_load(node.content.read(0, node.content.size).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EditRefused(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise EditRefused(f"{path}: must be a mapping, as Keras's {JSON_RECORDS[path]} is")
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError) as e:
        raise EditRefused(f"{path}: cannot be written as JSON ({e})") from None


def open_file(opening: Opening) -> Checkpoint:
    source, st = opening.source, opening.stat
    archive, root, placed, notes = read(source, source.path)
    ckpt = Checkpoint("Keras (.keras)", source.path, st, root, archive.raw(), placed, notes)
    ckpt.writer = Writer(archive, placed)
    return ckpt


FORMAT = FileFormat("Keras (.keras)", sniff, open_file, "Keras 3 .keras models (config, weights in HDF5)",
                    WriterKind.FILE)
