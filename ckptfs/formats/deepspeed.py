"""DeepSpeed ZeRO checkpoints, stages 1, 2 and 3: a save folder holding
`latest` and a folder per tag (`global_step100/`), or one tag folder, each
with the ranks' `*_model_states.pt` and `*_optim_states.pt`.

The folder is shown as it is, every `.pt` file expanded as its pickled
tree, and each tag folder gets `fp32/`: every parameter whole, in float32,
as DeepSpeed's `zero_to_fp32.py` assembles it (`get_fp32_state_dict_from_
zero_checkpoint`), with the model's buffers and frozen parameters, and tied
parameters under each of their names. Nothing is loaded to get there: the
layout comes from the pickles (`param_shapes`, `partition_count`, the
paddings) read by the inert interpreter, and each parameter's `.npy` is
the byte ranges of the ranks' flat fp32 partitions that hold it:

- stages 1 and 2: a parameter group's partitions, rank after rank, are one
  flat vector; the group's parameters lie in it in `param_shapes` order,
  each followed by its `param_alignment_paddings` entry where there is one.
- stage 3: every parameter is cut into `ceil(numel / ranks)` elements per
  rank; rank r's piece lies at the same offset of rank r's flat groups
  (its groups laid end to end), and the pieces, rank after rank, cut back
  to `numel`, are the parameter.

The checkpoint's tensors (what `info`, `export` and `diff` see) are the
parameters of the tag `latest` names, as zero_to_fp32 picks it, or of
every tag when there is no `latest`; the ranks' own tensors (optimizer
states, bf16 copies) stay in their files' trees.

Read-only. A tag that is tensor or pipeline parallel (files of a second
`mp_rank`, `layer_*` files), or whose pickles do not add up, is shown
without `fp32/`, with a note saying why.
"""

from __future__ import annotations

import bisect
import math
import os
import re

import numpy as np

from ..errors import FormatError
from ..humanize import plural
from ..sources.directory import Directory
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME, DType
from ..tree.nodes import Access, Dir, Extent, PathConflict
from ..tree.rawfiles import LINKS_OUTSIDE
from ..tree.tensors import PiecedTensor, PlacedTensor, TensorFile
from .base import DirectoryFormat
from .nested import Grafts, show_directory
from .torchzip import TorchZip

MODEL_STATES, OPTIM_STATES = "_model_states.pt", "_optim_states.pt"
FP32 = "fp32"
FLOAT32 = BY_NAME["float32"]
_RANK = re.compile(r"(?:^|_)mp_rank_(\d+)_")


def is_tag(directory: Directory, folder: str = "") -> bool:
    """A folder one `save_checkpoint` filled: model states and optimizer states."""
    entries = directory.names(folder)
    return any(e.endswith(MODEL_STATES) for e in entries) and any(e.endswith(OPTIM_STATES) for e in entries)


def sniff(directory: Directory) -> bool:
    return is_tag(directory) or any(directory.is_dir(e) and is_tag(directory, e) for e in directory.names())


def open_dir(directory: Directory) -> Checkpoint:
    files, tags = Grafts(), {}  # the files as saved; each tag's fp32/ apart

    def each_folder(rel: str, folder: Dir, path: str) -> None:
        if is_tag(directory, rel):
            tags[rel] = Grafts()
            _add_fp32(directory, rel, folder, path, tags[rel])

    shown = show_directory(directory, files, each_folder)
    root, raw, outside = shown.root, shown.raw, shown.outside
    latest = _latest(directory)
    chosen = [tags[latest]] if latest in tags else list(tags.values())
    ckpt = Checkpoint("deepspeed zero", directory.path, directory.stat(), root, raw,
                      [p for views in chosen for p in views.placed],
                      files.notes + [n for views in tags.values() for n in views.notes], files.pickle_globals)
    if outside:
        root.xattrs[xattrs.READ_ONLY] = LINKS_OUTSIDE.format(", ".join(outside))
    return ckpt  # no writer: read-only


def _latest(directory: Directory) -> str | None:
    """The tag `latest` names, as zero_to_fp32 picks it."""
    if "latest" not in directory.names() or not directory.is_file("latest"):
        return None
    source = directory.open("latest")
    return source.pread(0, min(source.size, 4096)).decode("utf-8", "replace").strip()


def _add_fp32(directory: Directory, tag: str, folder: Dir, path: str, grafts: Grafts) -> None:
    label = f"{path}/{FP32}" if path else FP32
    if FP32 in folder.children:
        grafts.notes.append(f"{label}: the folder already holds a file of that name; parameters not assembled")
        return
    try:
        tensors = Tag(directory, tag).state_dict()
    except FormatError as e:
        where = os.path.relpath(e.path, os.path.join(directory.path, tag))  # the rank's file at fault, if one is
        grafts.notes.append(f"{label}: parameters not assembled: " + (f"{where}: " if where != "." else "") + e.problem)
        return
    fp32, placed = Dir(), []
    for name, parameter in tensors.items():
        try:
            parts = names.tensor_path(name)
            fp32.subdir(parts[:-1]).add(parts[-1], TensorFile(parameter.tensor))
        except PathConflict:
            grafts.notes.append(f"{label}: {name}: another parameter needs its path")
            continue
        placed.append(PlacedTensor("/".join(parts), parameter.tensor))
    # assembled from every rank's files: readable by whom all of them are
    files = [f"{tag}/{n}" if tag else n for n in directory.names(tag)]
    stats = [directory.open(f).origin.stat for f in files if directory.is_file(f)]
    fp32.access = Access.of_all(stats or [directory.stat()])
    grafts.graft(folder, FP32, label, fp32, placed)


class Parameter:
    """A tensor of `fp32/`, made of byte ranges of the ranks' files (`pieces`, in order)."""

    def __init__(self, name: str, dtype: DType, shape: tuple[int, ...], pieces: list[Extent], convert: bool = False):
        self.name, self.dtype, self.shape, self.pieces = name, dtype, shape, pieces
        self.convert = convert  # a float16 or bfloat16 buffer or frozen parameter, served as float32
        served = FLOAT32 if convert else dtype
        nbytes = served.nbytes(math.prod(shape))
        # where its first bytes lie, for the index (.ckptfs/tensors.tsv); the file reads every piece
        first = Extent(pieces[0].source, pieces[0].offset, nbytes)
        shown = tuple(ToFloat32(p, dtype.name) for p in pieces) if convert else tuple(pieces)
        self.tensor = PiecedTensor(name, served, shape, first, shown)


class ToFloat32:
    """A float16 or bfloat16 tensor's bytes read as float32 (what
    zero_to_fp32 makes of such a buffer): exact, every value has one."""

    def __init__(self, piece: Extent, dtype: str):
        self.piece, self.dtype, self.source = piece, dtype, piece.source
        self.length = piece.length * 2

    def read(self, offset: int, length: int) -> bytes:
        first, last = offset // 4, min(self.piece.length // 2, -(-(offset + length) // 4))
        if first >= last:
            return b""
        raw = np.frombuffer(self.piece.read(first * 2, (last - first) * 2), "<u2")
        if self.dtype == "bfloat16":
            values = (raw.astype("<u4") << 16).tobytes()
        else:
            values = raw.view("<f2").astype("<f4").tobytes()
        skip = offset - first * 4
        return values[skip: skip + length]

    def readv(self, offset: int, buffers: list) -> None:
        data, pos = self.read(offset, sum(map(len, buffers))), 0
        for buffer in buffers:
            buffer[:] = data[pos: pos + len(buffer)]
            pos += len(buffer)


class Flat:
    """1-D tensors laid end to end (a rank's flat groups, a group's
    partitions), cut by element ranges into byte ranges of their files."""

    def __init__(self, extents: list[Extent], dtype: DType, what: str):
        if not extents:
            raise FormatError(what, "no flat fp32 groups")
        self.extents, self.dtype, self.what = extents, dtype, what
        self.itemsize = dtype.bits // 8
        self.starts, count = [], 0
        for extent in extents:
            self.starts.append(count)
            count += extent.length // self.itemsize
        self.count = count

    def take(self, start: int, count: int) -> list[Extent]:
        """The byte ranges of elements [start, start + count): at least one
        (of no bytes, for an empty parameter)."""
        if start < 0 or start + count > self.count:
            raise FormatError(self.what, f"elements {start}-{start + count} lie past its {self.count}")
        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        pieces = [Extent(self.extents[i].source, self.extents[i].offset, 0)]
        while count > 0:
            extent, first = self.extents[i], start - self.starts[i]
            n = min(count, extent.length // self.itemsize - first)
            if n > 0:
                pieces.append(Extent(extent.source, extent.offset + first * self.itemsize, n * self.itemsize))
            start, count, i = start + n, count - n, i + 1
        return pieces[1:] or pieces


class Tag:
    """One tag folder's files, read for the layout of its parameters."""

    def __init__(self, directory: Directory, tag: str):
        self.directory, self.tag = directory, tag
        entries = sorted((n for n in directory.names(tag) if directory.is_file(self._rel(n))), key=names.natural_key)
        self.path = directory.path + (f"/{tag}" if tag else "")
        model = [n for n in entries if n.endswith(MODEL_STATES)]
        optim = [n for n in entries if n.endswith(OPTIM_STATES)]
        ranks = {m.group(1) for m in map(_RANK.search, model + optim) if m}
        pipeline = any(n.startswith("layer_") for n in entries)
        if ranks != {"00"} or pipeline or any(not _RANK.search(n) for n in model + optim):
            raise FormatError(self.path, "tensor or pipeline parallel files (" + ", ".join(model[:3]) + ", ...): "
                                         "zero_to_fp32 assembles data parallel checkpoints only")
        self.model = [self._load(n) for n in model]
        self.optim = [self._load(n) for n in optim]

    def _rel(self, name: str) -> str:
        return f"{self.tag}/{name}" if self.tag else name

    def _load(self, name: str) -> tuple[TorchZip, dict]:
        archive = TorchZip(self.directory.open(self._rel(name)), f"{self.path}/{name}")
        if not isinstance(archive.obj, dict):
            raise FormatError(archive.name, "does not hold a dict")
        return archive, archive.obj

    def state_dict(self) -> dict[str, Parameter]:
        archive, model = self.model[0]
        for key in ("buffer_names", "param_shapes", "module"):
            if key not in model:
                raise FormatError(archive.name, f"no {key!r}: not a DeepSpeed model states file")
        states = [_get(obj, "optimizer_state_dict", archive.name) for archive, obj in self.optim]
        first = states[0]
        world = first.get("partition_count")
        world = max(world) if isinstance(world, list) and world else world
        if not _is_count(world) or world == 0:
            raise FormatError(self.optim[0][0].name, f"partition_count {world!r} is no number of ranks")
        if world != len(self.optim):
            raise FormatError(self.path, f"{plural(len(self.optim), 'optimizer states file')} for {plural(world, 'rank')} "
                                         "(a save cut short, or two saves in one folder?)")
        out: dict[str, Parameter] = {}
        module = model["module"] if isinstance(model["module"], dict) else {}
        for name in model["buffer_names"] if isinstance(model["buffer_names"], list) else ():
            if name in module:
                out[name] = self._whole(name, module[name], archive, convert=True)
        groups = model["param_shapes"] if isinstance(model["param_shapes"], list) else []
        shapes = [_shapes(g, archive.name) for g in groups]
        if "fp32_flat_groups" in first:
            self._frozen(out, world, zero3=True)
            self._zero3(out, world, {k: v for g in shapes for k, v in g.items()})
        elif "single_partition_of_fp32_groups" in first:
            self._frozen(out, world, zero3=False)
            self._zero2(out, world, shapes, first.get("param_alignment_paddings"))
        else:
            raise FormatError(self.optim[0][0].name, "no fp32 partitions (single_partition_of_fp32_groups or "
                                                     "fp32_flat_groups): not a ZeRO optimizer state")
        shared = model.get("shared_params")
        for name, target in (shared.items() if isinstance(shared, dict) else ()):
            if isinstance(name, str) and target in out:
                out[name] = Parameter(name, out[target].dtype, out[target].shape, out[target].pieces, out[target].convert)
        return out

    def _whole(self, name: str, ref, archive: TorchZip, convert: bool = False) -> Parameter:
        """A tensor one file holds whole (a buffer, a stage 2 frozen parameter)."""
        piece, _ = archive.tensor_piece(_ref(ref, name, archive.name), name)
        return Parameter(name, ref.dtype, ref.shape, [piece], convert=convert and _narrow_float(ref.dtype))

    def _flats(self, key: str) -> list[Flat]:
        """Each rank's fp32 groups under `key`, laid end to end."""
        flats = []
        for archive, obj in self.optim:
            groups = _get(obj, "optimizer_state_dict", archive.name).get(key)
            if not isinstance(groups, list):
                raise FormatError(archive.name, f"{key} is not a list of tensors")
            refs = [_ref(g, f"{key}[{i}]", archive.name) for i, g in enumerate(groups)]
            for ref in refs:
                if len(ref.shape) != 1 or ref.dtype.bits % 8:
                    raise FormatError(archive.name, f"{key}: a flat group of shape {list(ref.shape)} {ref.dtype.name}")
            dtype = refs[0].dtype if refs else FLOAT32
            if any(r.dtype != dtype for r in refs):
                raise FormatError(archive.name, f"{key}: flat groups of different dtypes")
            flats.append(Flat([archive.tensor_piece(r, key)[0] for r in refs], dtype, archive.name))
        return flats

    def _zero2(self, out: dict, world: int, shapes: list[dict], paddings) -> None:
        flats = self._flats("single_partition_of_fp32_groups")
        if any(len(f.extents) != len(shapes) for f in flats):
            raise FormatError(self.path, f"{len(shapes)} parameter groups, but {len(flats[0].extents)} fp32 partitions")
        for g, group in enumerate(shapes):
            vector = Flat([f.extents[g] for f in flats], flats[0].dtype, f"{self.path}: parameter group {g}")
            pads = paddings[g] if isinstance(paddings, list) and g < len(paddings) else None
            if pads is not None and (not isinstance(pads, list) or len(pads) != len(group) or
                                     not all(_is_count(p) for p in pads)):
                raise FormatError(self.path, f"param_alignment_paddings of group {g} do not match its parameters")
            offset = 0
            for i, (name, shape) in enumerate(group.items()):
                numel = math.prod(shape)
                out[name] = Parameter(name, flats[0].dtype, shape, vector.take(offset, numel))
                offset += numel + (pads[i] if pads else 0)
            align = 2 * world  # as zero_to_fp32 checks: both ends rounded up to 2 x ranks
            if -(-offset // align) != -(-vector.count // align):
                raise FormatError(self.path, f"parameter group {g}: its parameters take {plural(offset, 'element')} of the "
                                             f"{vector.count} its partitions hold")

    def _zero3(self, out: dict, world: int, shapes: dict) -> None:
        flats = self._flats("fp32_flat_groups")
        offset = 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            share, pieces, left = -(-numel // world), [], numel
            for flat in flats:
                pieces += flat.take(offset, min(share, left))
                left -= min(share, left)
            out[name] = Parameter(name, flats[0].dtype, shape, pieces)
            offset += share
        if offset != flats[0].count:
            raise FormatError(self.path, f"the parameters take {plural(offset, 'element')} of each rank's {flats[0].count}")

    def _frozen(self, out: dict, world: int, zero3: bool) -> None:
        archive, model = self.model[0]
        shapes = _shapes(model.get("frozen_param_shapes") or {}, archive.name)
        if not shapes:
            return
        if not zero3:
            fragments = model.get("frozen_param_fragments")
            for name in shapes:
                if not isinstance(fragments, dict) or name not in fragments:
                    raise FormatError(archive.name, f"frozen parameter {name!r} has no fragment")
                out[name] = self._whole(name, fragments[name], archive, convert=True)
            return
        if len(self.model) != world:
            raise FormatError(self.path, f"{plural(len(self.model), 'model states file')} for {plural(world, 'rank')}")
        for name, shape in shapes.items():
            extents, dtype = [], None
            for rank_archive, obj in self.model:
                fragments = obj.get("frozen_param_fragments")
                if not isinstance(fragments, dict) or name not in fragments:
                    raise FormatError(rank_archive.name, f"frozen parameter {name!r} has no fragment")
                ref = _ref(fragments[name], name, rank_archive.name)
                dtype = ref.dtype
                extents.append(rank_archive.tensor_piece(ref, name)[0])
            flat = Flat(extents, dtype, f"{self.path}: frozen parameter {name}")
            out[name] = Parameter(name, dtype, shape, flat.take(0, math.prod(shape)), _narrow_float(dtype))


def _narrow_float(dtype: DType) -> bool:
    return dtype.name in ("float16", "bfloat16")


def _get(obj: dict, key: str, name: str) -> dict:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise FormatError(name, f"no {key!r} dict: not a DeepSpeed ZeRO optimizer states file")
    return value


def _ref(value, what: str, name: str):
    from ..pickle.torch_classes import TensorRef

    if not isinstance(value, TensorRef):
        raise FormatError(name, f"{what} is not a tensor")
    return value


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shapes(group, name: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(group, dict):
        raise FormatError(name, "param_shapes is not a list of name -> shape dicts")
    shapes = {}
    for key, shape in group.items():
        if not isinstance(key, str) or not isinstance(shape, (tuple, list)) or not all(_is_count(n) for n in shape):
            raise FormatError(name, f"parameter {key!r}: shape {shape!r} is no list of sizes")
        shapes[key] = tuple(shape)
    return shapes


FORMAT = DirectoryFormat("deepspeed zero", sniff, open_dir, "DeepSpeed ZeRO save folders", writes=None)
