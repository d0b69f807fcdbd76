"""JAX Orbax checkpoints (orbax-checkpoint's PyTreeCheckpointHandler and
StandardCheckpointHandler): a folder with `_METADATA` (the pytree) and its
arrays, either in an OCDBT database (`manifest.ocdbt`, `d/`,
`ocdbt.process_*/`: the default) or a zarr / zarr3 folder each
(`use_ocdbt=False`: `params.dense.kernel/.zarray` and its chunks).

Every array appears whole as a read-only `.npy` at its pytree path (dict
keys and list indices as folders), read through tensorstore a few chunks at
a time (formats/tensorstore_arrays.py); a string leaf as a `.yaml` of its
value; `_METADATA`, `_CHECKPOINT_METADATA`, `_sharding` and every array's
zarr metadata (`_arrays.yaml`) as YAML. A CheckpointManager step folder
(`<step>/<item>/`) shows each item expanded in place (formats/folder.py),
and so does a CheckpointManager's folder of steps, as a folder of them.
"""

from __future__ import annotations

import os
import stat

from ..errors import FormatError
from ..limits import LIMITS
from ..pickle.pyobjects import yaml_file
from ..sources import pathnames
from ..sources.directory import Directory, LocalDirectory
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Access, Content, Dir, Extent, File, PathConflict
from ..tree.rawfiles import add_links, raw_file
from ..tree.tensors import PiecedTensor, PlacedTensor, TensorFile, shape_text
from . import folder
from . import orbax_metadata as meta
from . import tensorstore_arrays as arrays
from .base import DirectoryFormat, Nest

#: the JSON files of a checkpoint shown as YAML at the top of the tree
JSON_FILES = ("_METADATA", "_CHECKPOINT_METADATA", "_sharding")
#: why its tree takes no edits
READ_ONLY = "ckptfs reads Orbax checkpoints, and writes them to other formats only (ckptfs export)"
#: the YAML of every array's zarr metadata
ARRAYS_YAML = "_arrays.yaml"


def sniff(directory: Directory) -> bool:
    """A checkpoint (its `_METADATA` is Orbax's tree metadata), or a
    CheckpointManager step folder holding them."""
    return _is_item(directory, "") or _is_step(directory)


def _is_item(directory: Directory, folder: str) -> bool:
    name = f"{folder}/_METADATA" if folder else "_METADATA"
    return directory.is_file(name) and b'"tree_metadata"' in directory.open(name).pread(0, 4096)


def _is_step(directory: Directory) -> bool:
    """A CheckpointManager step: `_CHECKPOINT_METADATA` beside a checkpoint folder per item."""
    return directory.is_file("_CHECKPOINT_METADATA") and any(
        directory.is_dir(e) and _is_item(directory, e) for e in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    if not _is_item(directory, ""):
        step = folder.open_dir(directory)  # each item expanded in place, every other file as it is
        step.format = "orbax (CheckpointManager step)"
        return step
    path = directory.path
    if not isinstance(directory, LocalDirectory):
        raise FormatError(path, "an Orbax checkpoint is read through tensorstore, from a local folder only")
    arrays.require(path)
    try:
        pytree = meta.tree(directory.read("_METADATA"))
    except meta.Unfit as e:
        raise FormatError(f"{path}/_METADATA", str(e)) from None
    files, links = directory.walk()
    ocdbt = directory.is_file("manifest.ocdbt")
    shown = Shown(directory, ocdbt, links + _special_files(path))
    shown.notes += pytree.problems
    shown.leaves(pytree.leaves)
    shown.metadata(files)
    raw = Dir()
    stats = [directory.stat()]
    for name in files:
        source = directory.open(name)
        stats.append(source.origin.stat)
        raw.subdir(names.file_parts(name)[:-1]).add(names.file_parts(name)[-1],
                                                  raw_file(source, 0, source.size, mtime_ns=directory.mtime_ns(name)))
    add_links(directory, links, raw)
    # tensorstore reads an array from files ckptfs does not place (OCDBT's
    # d/ data files, chunk folders): readable by whom all of them are
    shared = Access.of_all(stats)
    for p in shown.placed:
        parts = p.path.split("/")
        shown.root.subdir(parts[:-1]).children[parts[-1]].access = shared
    shown.root.xattrs[xattrs.READ_ONLY] = READ_ONLY
    kind = "OCDBT" if ocdbt else "zarr"
    return Checkpoint(f"orbax ({kind})", path, directory.stat(), shown.root, raw, shown.placed, shown.notes)


class Shown:
    """The tree of one checkpoint as it is built: leaves placed, notes kept."""

    def __init__(self, directory: Directory, ocdbt: bool, links: list[str]):
        self.directory, self.ocdbt = directory, ocdbt
        self.root, self.placed, self.notes = Dir(), [], []
        self.described: dict[str, dict] = {}
        self.root_path = os.path.realpath(directory.path)
        self.links = links
        self.store: arrays.Store | None = None

    def leaves(self, leaves: list[meta.Leaf]) -> None:
        stored = [leaf for leaf in leaves if leaf.value_type in meta.ARRAY_TYPES]
        infos = self._infos([leaf.param for leaf in stored])
        readable = [i for i in infos.values() if isinstance(i, meta.ArrayInfo)]
        self.store = arrays.Store(self.root_path, self.ocdbt, arrays.cache_bytes(readable))
        for leaf in stored:
            self._array(leaf, infos[leaf.param])
        strings = [leaf for leaf in leaves if leaf.value_type == meta.STRING_TYPE]
        if strings:
            self._strings(strings)

    def _infos(self, params: list[str]) -> dict[str, meta.ArrayInfo | str]:
        """Each array's zarr metadata, or why it cannot be read."""
        if self.ocdbt:
            if self.links:  # tensorstore would follow them wherever they lead
                return dict.fromkeys(params, f"the checkpoint holds links that lead outside it, or files that "
                                             f"are not regular files ({self.links[0]})")
            found = arrays.ocdbt_metadata(self.root_path, params)
        else:
            found = {p: self._zarr_metadata(p) for p in params}
        infos: dict[str, meta.ArrayInfo | str] = {}
        for param, said in found.items():
            try:
                infos[param] = meta.array(said[1], said[0]) if isinstance(said, tuple) else said
            except meta.Unfit as e:
                infos[param] = str(e)
        return infos

    def _zarr_metadata(self, param: str) -> tuple[bool, bytes] | str:
        """The zarr metadata of the array folder `param`, or why it cannot be
        read: the name must stay inside the checkpoint, as must every file below it."""
        problem = pathnames.path_problem(param)
        if problem is not None:
            return f"its name cannot be a folder of the checkpoint: {problem}"
        where = os.path.join(self.root_path, param)
        if os.path.realpath(where) != where or not self.directory.is_dir(param):
            # a link anywhere on the way would let its chunks be any folder's (walk lists the links
            # below a linked folder under the folder it leads to)
            return ("its folder is missing, or reached through a link (one that leads outside the checkpoint "
                    "or to another folder of it)")
        if any(link == param or link.startswith(param + "/") for link in self.links):
            return "its folder holds links that lead outside the checkpoint, or files that are not regular files"
        for name, zarr3 in (("zarr.json", True), (".zarray", False)):
            if self.directory.is_file(f"{param}/{name}"):
                source = self.directory.open(f"{param}/{name}")
                if source.size > meta.METADATA_BYTES:
                    return f"its {name} is {source.size} bytes, more than {meta.METADATA_BYTES}"
                return zarr3, source.read_exact(0, source.size)
        return "its folder has no .zarray or zarr.json"

    def _array(self, leaf: meta.Leaf, info: meta.ArrayInfo | str) -> None:
        parts = _parts(leaf, ".npy")
        shown_path = "/".join(parts)
        if isinstance(info, str):
            self.notes.append(f"{shown_path}: array {leaf.param!r} cannot be read: {info}")
            file = File(Content([arrays.Broken(f"{self.directory.path}: {shown_path}", info)]),
                        xattrs={xattrs.PROBLEM: info, xattrs.NAME: leaf.param})
            file.read_only = True
            self._place(parts, file)
            return
        self.described[leaf.param] = info.document
        source = arrays.ArraySource(self.store, leaf.param, info, self._location(leaf.param))
        data = Extent(source, 0, source.size)
        tensor = PiecedTensor(leaf.param, info.dtype, info.shape, data, (data,),
                              ((xattrs.SOURCE, self._location(leaf.param)), (xattrs.ARRAY_CHUNK, shape_text(info.chunk))))
        file = TensorFile(tensor)
        file.read_only = True
        if self._place(parts, file):
            self.placed.append(PlacedTensor(shown_path, tensor))

    def _location(self, param: str) -> str:
        """Where an array's chunks lie: its folder, or the OCDBT database's key."""
        path = self.directory.path
        return f"{path}/manifest.ocdbt: {param}/" if self.ocdbt else f"{path}/{param}/"

    def _strings(self, leaves: list[meta.Leaf]) -> None:
        """String leaves, each a `.yaml` of its value from `_strings.json`."""
        try:
            values = meta.json_object(self.directory.read("_strings.json"), "_strings.json", LIMITS.header_bytes) \
                if self.directory.is_file("_strings.json") else {}
        except meta.Unfit as e:
            self.notes.append(f"string leaves are left out: {e}")
            return
        for leaf in leaves:
            if leaf.param in values:
                self._place(_parts(leaf, ".yaml"), _read_only(yaml_file(values[leaf.param])))

    def metadata(self, files: list[str]) -> None:
        """The checkpoint's JSON files as YAML, and every array's zarr metadata."""
        for name in JSON_FILES:
            if name in files:
                try:
                    text = self.directory.read(name)
                    value = meta.sharding(text) if name == "_sharding" else meta.json_object(text, name,
                                                                                           LIMITS.header_bytes)
                except meta.Unfit as e:
                    self.notes.append(f"{name} is shown as it is only in .ckptfs/raw/: {e}")
                    continue
                self._place([f"{name}.yaml"], _read_only(yaml_file(value)))
        if self.described:
            self._place([ARRAYS_YAML], _read_only(yaml_file(self.described)))

    def _place(self, parts: list[str], file: File) -> bool:
        try:
            self.root.subdir(parts[:-1]).add(parts[-1], file)
        except PathConflict:
            self.notes.append(f"{'/'.join(parts)} is left out: another file or folder takes its place")
            return False
        return True


def _special_files(root: str) -> list[str]:
    """The files below `root` that are neither regular files, folders nor
    links (FIFOs, sockets, devices), relative to it: tensorstore would
    open one and wait for it forever, so they count as links not followed."""
    found = []
    for below, _, files in os.walk(root):
        for name in files:
            path = os.path.join(below, name)
            mode = os.lstat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                found.append(os.path.relpath(path, root))
    return sorted(found)


def _read_only(file: File) -> File:
    file.read_only = True
    return file


def _parts(leaf: meta.Leaf, suffix: str) -> list[str]:
    """A leaf's path in the tree: a folder per key, the last one a file."""
    *folders, last = leaf.keys
    return [names.key_name(k) for k in folders] + [names.key_name(last, suffix=suffix)]


def _in_archive(members: Directory) -> Checkpoint:
    raise FormatError(members.path, "an Orbax checkpoint inside an archive is not read (tensorstore needs a folder)")


FORMAT = DirectoryFormat("orbax", sniff, open_dir, "JAX Orbax checkpoints (OCDBT or zarr arrays)", None,
                         nest=Nest(_in_archive, lambda name: False))
