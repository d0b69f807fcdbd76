"""A checkpoint's tensors in another format: one safetensors file, a Hugging
Face sharded set, or a torch.save zip (docs/cli.md, "ckptfs export").

Each output is laid out from metadata alone, as pieces: its header, then
each tensor's bytes as the tree serves them (a range of the source, a
gathered view, chunks of a distributed checkpoint assembled on read). The
`.ckptfs/export/` view serves those pieces as files; `ckptfs export` writes
the same pieces, so the two give the same bytes, and both stream: memory
stays within a copy block whatever the checkpoint holds.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from ..errors import CkptfsError
from ..formats import safetensors, zipout
from ..humanize import plural
from ..pack.output import COPY_BLOCK, TEMP_SUFFIX, Output, created_mode, fsync_dir, umask, with_search_bits
from ..pickle import writer as pickle_writer
from ..pickle.inert import Call, Global, PickledDict
from ..pickle.torch_classes import new_tensor
from ..sources.location import location
from ..sources.pathnames import temp_prefix
from ..tree.checkpoint import Checkpoint
from ..tree.dtypes import BY_NAME, DType
from ..tree.nodes import Access, Content, Dir, Extent, File, Node, len_of
from ..tree.tensors import QuantizedTensor

#: the __metadata__ of every safetensors file written (what transformers' save_pretrained writes)
METADATA = {"format": "pt"}
#: the __metadata__ key, before a tensor's name, of the GGML type of its blocks (`--quantized raw`)
GGML_TYPE_KEY = "ggml_type."
#: the shard size `--to hf` and the view's `hf/` folder use unless told (transformers' default)
DEFAULT_SHARD_BYTES = 5 * 10**9
SINGLE = "model.safetensors"
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Item:
    """One tensor to export: its name, dtype, shape and C-order bytes."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    pieces: tuple
    length: int
    #: for a quantized tensor's blocks written as they are (uint8): their
    #: GGML type, which a safetensors file records in its metadata
    ggml_type: str | None = None


@dataclass
class Selection:
    items: list[Item]
    #: tensors left out, and why
    left_out: list[str]
    #: who may read the bytes of every item (None: whoever may read the source)
    access: Access | None = None
    #: the names of the items whose values are a quantized tensor's, dequantized
    dequantized: list[str] = field(default_factory=list)
    #: a Hugging Face folder's other files (config.json, tokenizer...), by
    #: name, that a Hugging Face export writes beside the weights
    beside: dict[str, Content] = field(default_factory=dict)


#: what `--quantized` makes of a quantized tensor: its values (GGUF's as float32, a Hub weight's in the
#: model's compute dtype), or as stored (GGUF's blocks as uint8, a Hub weight's parts as the tensors they are)
QUANTIZED = ("dequantize", "raw")


def select(ckpt: Checkpoint, include=(), exclude=(), maps=(), quantized: str = "dequantize") -> Selection:
    """The tensors of `ckpt` that the include and exclude globs choose (by
    their names in the checkpoint), by name after `maps` ((old prefix, new
    prefix) pairs). A quantized tensor is written as its values, as its
    `dequantized.npy` shows them (in place of the stored tensors it is made
    of), or with `quantized="raw"` as it is stored."""
    items: dict[str, Item] = {}
    left_out: list[str] = []
    accesses: set = set()
    default = Access.of(ckpt.stat)
    selection = Selection([], left_out)

    def chosen(name: str) -> bool:
        return ((not include or any(fnmatch.fnmatchcase(name, g) for g in include))
                and not any(fnmatch.fnmatchcase(name, g) for g in exclude))

    if quantized == "dequantize" and ckpt.undequantized:  # its stored parts would pass for a plain model's
        selection.left_out += [f"every tensor: a plain model needs every quantized weight's values, and "
                               f"{note}; --quantized raw writes the model as stored" for note in ckpt.undequantized[:1]]
        return selection
    # a Hub weight's stored parts (GPTQ's qweight, scales...) give way to its values
    replaced = {m for q in ckpt.quantized for m in q.members} if quantized == "dequantize" else set()
    for placed in ckpt.tensors:
        tensor = placed.tensor
        if not chosen(tensor.name) or tensor.name in replaced:
            continue
        name = rename_prefix(tensor.name, maps)
        if tensor.dtype.safetensors is None:
            left_out.append(f"{name}: safetensors has no dtype {tensor.dtype.name}")
            continue
        if name in items:
            left_out.append(f"{name}: a second tensor of that name (at {placed.path}); the first is kept")
            continue
        node, access = _find(ckpt.root, placed.path)
        nbytes = tensor.dtype.nbytes(tensor.numel)
        pieces = getattr(node.content, "pieces", None) if isinstance(node, File) else None
        if pieces is None and isinstance(node, File):  # a resumed mount's edit: written only by the repack
            left_out.append(f"{name}: edited in this mount; exported as it is once the edits are written")
            continue
        if not pieces or not isinstance(pieces[0], bytes) or sum(map(len_of, pieces[1:])) != nbytes:
            left_out.append(f"{name}: its file at {placed.path} does not hold its {plural(nbytes, 'byte')}")
            continue
        items[name] = Item(name, tensor.dtype, tuple(tensor.shape), tuple(pieces[1:]), nbytes)
        accesses.add(access or default)
    for tensor in ckpt.quantized:
        if not chosen(tensor.name) or (quantized == "raw" and tensor.members):
            continue  # raw: a Hub weight's stored parts are exported as the tensors they are
        name = rename_prefix(tensor.name, maps)
        if name in items:
            left_out.append(f"{name}: a second tensor of that name (at {tensor.raw_path}); the first is kept")
            continue
        item, access = _quantized_item(ckpt.root, tensor, name, quantized, left_out)
        if item is not None:
            items[name] = item
            accesses.add(access or default)
            if item.ggml_type is None:
                selection.dequantized.append(name)
    selection.items = [items[name] for name in sorted(items)]
    selection.access = None if accesses <= {default} else Access.common(accesses)
    selection.beside = _beside(ckpt, plain=bool(replaced))  # no stored part of a quantized weight is written
    return selection


def _beside(ckpt: Checkpoint, plain: bool) -> dict[str, Content]:
    """The files `from_pretrained` reads beside a Hugging Face folder's
    weights, those at its top level; with `plain`, config.json without its
    `quantization_config`, for weights written dequantized."""
    files = {}
    for name in ckpt.pretrained_files or ():
        node = ckpt.root.children.get(name)
        if isinstance(node, File):
            files[name] = node.content
    if plain and CONFIG in files:
        files[CONFIG] = Content([plain_config(files[CONFIG].read(0, files[CONFIG].size))])
    return files


#: the keys of config.json that say how its weights are quantized (MLX's `quantization` too)
QUANTIZATION_KEYS = {"quantization_config", "quantization"}


def plain_config(text: bytes) -> bytes:
    """A config.json without its `quantization_config` (nor MLX's
    `quantization`): the model's config once its weights are dequantized
    (as transformers writes it: sorted keys, two spaces); as it is where it
    is no JSON object."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if not isinstance(config, dict) or not QUANTIZATION_KEYS & config.keys():
        return text
    for key in QUANTIZATION_KEYS & config.keys():
        del config[key]
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _quantized_item(root: Dir, tensor: QuantizedTensor, name: str, quantized: str, left_out: list[str]):
    """(the Item of a quantized tensor, who may read it), or (None, None)
    with a line in `left_out` saying why."""
    if quantized == "raw":
        node, access = _find(root, tensor.raw_path)
        pieces = tuple(getattr(node.content, "pieces", ())) if isinstance(node, File) else ()
        length = sum(map(len_of, pieces))
        if length != math.prod(tensor.raw_shape):
            left_out.append(f"{name}: its file at {tensor.raw_path} does not hold its blocks")
            return None, None
        return Item(name, BY_NAME["uint8"], tensor.raw_shape, pieces, length, tensor.kind), access
    if tensor.dequantized_path is None:
        left_out.append(f"{name}: ckptfs cannot dequantize {tensor.kind}; --quantized raw writes its blocks")
        return None, None
    node, access = _find(root, tensor.dequantized_path)
    pieces = node.content.pieces if isinstance(node, File) else []
    length = tensor.dtype.nbytes(math.prod(tensor.shape))
    if not pieces or not isinstance(pieces[0], bytes) or sum(map(len_of, pieces[1:])) != length:
        left_out.append(f"{name}: its file at {tensor.dequantized_path} does not hold its {plural(length, 'byte')}")
        return None, None
    return Item(name, tensor.dtype, tensor.shape, tuple(pieces[1:]), length), access


def rename_prefix(name: str, maps) -> str:
    """`name` with the first matching OLD prefix of `maps` ((OLD, NEW) pairs) replaced by its NEW."""
    for old, new in maps:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _find(root: Dir, path: str) -> tuple[Node | None, Access | None]:
    """The node at `path` and who may read it (inherited from its folders)."""
    node: Node | None = root
    access = root.access
    for part in path.split("/"):
        node = node.children.get(part) if isinstance(node, Dir) else None
        if node is None:
            return None, access
        access = node.access or access
    return node, access


#: what `ckptfs export --to` writes
TARGETS = ("safetensors", "hf", "torch")


def files_for(target: str, items: list[Item], out_name: str, max_bytes: int = DEFAULT_SHARD_BYTES,
              beside: dict[str, Content] | None = None) -> dict:
    """The files `target` makes of `items`, by name: one for safetensors
    and torch (named `out_name`), a folder's for hf. Each is a Content or
    a ZipBlob: its `size` known, `write(output)` writing it."""
    if target == "safetensors":
        return {out_name: safetensors_file(items)}
    if target == "torch":
        if any(i.ggml_type for i in items):
            raise CkptfsError("--quantized raw: a torch.save file has no place to say the GGML type of a tensor's "
                              "blocks; write them --to safetensors or --to hf")
        return {out_name: torch_zip(items, os.path.splitext(out_name)[0] or "archive")}
    return hf_files(items, max_bytes, beside)


def write(target: str, items: list[Item], out: str, max_bytes: int = DEFAULT_SHARD_BYTES, progress=None,
          readers: Access | None = None, beside: dict[str, Content] | None = None) -> None:
    """Write the export to `out` (a new file, or for hf a new folder) beside
    which it is first written whole and fsynced, then renamed into place:
    `out` never holds half an export. An `s3://` `out` is uploaded instead.
    `readers` say who may read the tensors' source: the export is readable
    by them at most (`output.created_mode`), by its owner alone if None.
    `beside`: the files a Hugging Face folder holds besides its weights."""
    if location(out).remote:
        return _upload(target, items, out, max_bytes, progress, beside)
    out = os.path.abspath(out)
    if os.path.lexists(out):
        raise CkptfsError(f"{out}: exists; remove it first or give a new path")
    parent = os.path.dirname(out)
    files = files_for(target, items, os.path.basename(out), max_bytes, beside)
    expected = sum(f.size for f in files.values())
    fs = os.statvfs(parent)
    if fs.f_bavail * fs.f_frsize < expected:
        raise CkptfsError(f"{parent}: {fs.f_bavail * fs.f_frsize / 1e6:.0f} MB free, the export needs "
                          f"{expected / 1e6:.0f} MB")
    written = [0]

    def mode(gid: int) -> int:
        return (created_mode(readers, gid) if readers is not None else 0o600) & ~umask()

    def fill(path: str, made, fd: int | None = None) -> None:
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, mode(os.fstat(fd).st_gid))
            output = Output(fd, progress=progress and (lambda n, _: progress(written[0] + n, expected)),
                            expected=expected)
            write_content(made, output) if isinstance(made, Content) else made.write(output)
            os.fsync(fd)
            written[0] += output.written
        finally:
            os.close(fd)

    if target != "hf":
        [made] = files.values()
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(os.path.basename(out), TEMP_SUFFIX), suffix=TEMP_SUFFIX, dir=parent)
        try:
            fill(tmp, made, fd)
            os.rename(tmp, out)
        except BaseException:
            os.unlink(tmp)  # the name mkstemp made, this export's alone
            raise
    else:
        tmp = tempfile.mkdtemp(prefix=temp_prefix(os.path.basename(out), TEMP_SUFFIX), suffix=TEMP_SUFFIX, dir=parent)
        try:
            for name, made in files.items():
                fill(os.path.join(tmp, name), made)
            os.chmod(tmp, with_search_bits(mode(os.stat(tmp).st_gid)))
            fsync_dir(tmp)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    fsync_dir(parent)


def _upload(target: str, items: list[Item], out: str, max_bytes: int, progress, beside) -> None:
    """The export as new objects (pack/upload.py), streamed: one, or for hf
    the shards and then the index, so that a reader never finds an index
    whose shards are not all there. A failed hf upload removes the shards
    it made; each object appears whole or not at all."""
    from ..pack.upload import upload

    prefix = out.rstrip("/") + "/"
    files = files_for(target, items, prefix[:-1].rpartition("/")[2], max_bytes, beside)
    expected = sum(f.size for f in files.values())
    written: list[int] = [0]

    def send(url: str, made) -> None:
        def fill(output: Output) -> None:
            write_content(made, output) if isinstance(made, Content) else made.write(output)
            written[0] += output.written

        shown = progress and (lambda n, _: progress(written[0] + n, expected))
        upload(url, fill, made.size, shown)

    if target != "hf":
        [made] = files.values()
        send(out, made)
        return
    where = location(prefix)
    if where.uploads and where.store.exists(prefix):
        raise CkptfsError(f"{prefix}: objects are there already; give a new prefix")
    made_urls: list[str] = []
    try:
        for name in sorted(files, key=lambda n: n == INDEX):  # the index last
            send(prefix + name, files[name])
            made_urls.append(prefix + name)
    except BaseException:
        for url in made_urls:
            where.store.delete(url)
        raise


# -- layouts
def safetensors_file(items: list[Item]) -> Content:
    """One safetensors file of `items`, in order: the reference header
    (compact JSON padded to 8 bytes), then their bytes end to end."""
    metadata = {**METADATA, **{GGML_TYPE_KEY + i.name: i.ggml_type for i in items if i.ggml_type}}
    block = safetensors.Block(metadata, [(i.name, i.dtype, i.shape, None, i.length) for i in items])
    return Content([block.header, *(p for i in items for p in i.pieces)])


def shards(items: list[Item], max_bytes: int) -> list[list[Item]]:
    """`items` cut in order into shards of at most `max_bytes` of tensor
    data (a larger tensor alone in its own), as transformers cuts them."""
    out: list[list[Item]] = []
    size = 0
    for item in items:
        if not out or (size + item.length > max_bytes and out[-1]):
            out.append([])
            size = 0
        out[-1].append(item)
        size += item.length
    return out or [[]]


def hf_files(items: list[Item], max_bytes: int = DEFAULT_SHARD_BYTES,
             beside: dict[str, Content] | None = None, single: Content | None = None) -> dict[str, Content]:
    """A Hugging Face checkpoint's files: `beside` (config.json...), and its
    weights: `model.safetensors`, or `model-0000K-of-0000N.safetensors`
    shards and their index. `single`, where given, is `safetensors_file(items)`,
    made already: a single shard is the same bytes (a header of 100,000
    tensors and its pieces are 25 MB)."""
    files: dict[str, Content] = dict(beside or {})
    cut = shards(items, max_bytes)
    if len(cut) == 1:
        files[SINGLE] = single if single is not None else safetensors_file(cut[0])
        return files
    weight_map = {}
    for k, shard in enumerate(cut, 1):
        name = f"model-{k:05d}-of-{len(cut):05d}.safetensors"
        files[name] = safetensors_file(shard)
        weight_map.update({i.name: name for i in shard})
    index = {"metadata": {"total_size": sum(i.length for i in items)}, "weight_map": dict(sorted(weight_map.items()))}
    files[INDEX] = Content([(json.dumps(index, indent=2) + "\n").encode()])
    return files


def torch_zip(items: list[Item], archive: str = "archive") -> zipout.ZipBlob:
    """A torch.save zip of a flat state dict (an OrderedDict of name to
    tensor, one storage each), as `torch.load(weights_only=True)` reads it."""
    state = PickledDict()
    state.pickled = Call(Global("collections", "OrderedDict"), ())
    for key, item in enumerate(items):
        state[item.name] = new_tensor(str(key), item.dtype, item.shape, None)
    pickle = pickle_writer.dumps(state)
    records = [zipout.Record(f"{archive}/data.pkl", len(pickle), data=pickle),
               zipout.Record(f"{archive}/byteorder", 6, data=b"little")]
    records += [zipout.Record(f"{archive}/data/{key}", item.length, piece=Content(list(item.pieces)))
                for key, item in enumerate(items)]
    records.append(zipout.Record(f"{archive}/version", 2, data=b"3\n"))
    return zipout.ZipBlob(records)


def write_content(content: Content, output: Output) -> None:
    """The bytes of `content`; ranges of plain files are copied by the kernel."""
    for piece in content.pieces:
        if isinstance(piece, bytes):
            output.write(piece)
        elif isinstance(piece, Extent):
            output.copy(piece.source, piece.offset, piece.length)
        else:
            for pos in range(0, piece.length, COPY_BLOCK):
                output.write(piece.read(pos, min(COPY_BLOCK, piece.length - pos)))
