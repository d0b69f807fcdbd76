"""One fuzz target per parser: a function of the input bytes, and the error
classes it may raise. The contract every target is held to: a parser either
returns or raises its own error class (a one-line reason for the user),
never anything else, within the time and memory budget (docs/security.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ckptfs.errors import CkptfsError
from ckptfs.formats import (
    gguf,
    gguf_values,
    keras,
    lora_config,
    npz,
    onnx,
    onnx_write,
    open_checkpoint,
    orbax_metadata,
    protowire,
    pt2,
    quantized,
    safetensors,
    tar,
    tf_entries,
    tf_objects,
    tf_slices,
    tf_table,
    torchzip,
    zarr_array,
)
from ckptfs.formats.dcp.metadata import Metadata
from ckptfs.formats.gzindex import _scan as scan_gzip
from ckptfs.formats.keras_code import code_in
from ckptfs.formats.quantized import bnb
from ckptfs.formats.quantized.base import QuantizationError
from ckptfs.pickle import object_edits
from ckptfs.pickle.inert import InertUnpickler, PickleError
from ckptfs.pickle.pyobjects import to_yaml
from ckptfs.pickle.torch_classes import KNOWN, persistent_load
from ckptfs.sources import gzip_reads
from ckptfs.sources.base import FileSource, Source
from ckptfs.tree import npy
from ckptfs.tree.dtypes import BY_NAME
from ckptfs.tree.nodes import Extent, File
from ckptfs.tree.tensors import Tensor, TensorFile

CRASHES = Path(__file__).parent / "crashes"
#: how much of each file of a mounted tree the whole-file target reads
READ_BYTES = 1 << 16
#: how much of each end of a zarr array the zarr_array_meta target reads (a byte a chunk at worst)
ZARR_READ_BYTES = 1 << 12


class MemorySource(Source):
    """Bytes in memory as a source, so that no input touches the disk."""

    def __init__(self, data: bytes, path: str = "<fuzz input>"):
        self.data, self.size, self.path = data, len(data), path

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    #: what the parser may raise: its own error classes, nothing else
    allowed: tuple[type[BaseException], ...]


def _safetensors_header(data: bytes) -> None:
    safetensors.read(MemorySource(data))


def _tar_reader(data: bytes) -> None:
    tar.list_members(io.BytesIO(data), "<fuzz input>")


def _with_file(data: bytes, use: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="ckptfs-fuzz-") as folder:
        path = os.path.join(folder, "input")
        with open(path, "wb") as f:
            f.write(data)
        use(path)


def _gzip_index(data: bytes) -> None:
    def scan(path: str) -> None:
        source = FileSource(path)
        try:
            scan_gzip(source)
        finally:
            source.close()

    _with_file(data, scan)


def _gzip_read_log(data: bytes) -> None:
    """A read log kept beside a gzip seek index, as a forger writes one: a
    checksum that matches, the stream size and fingerprint asked for."""
    blob = data + hashlib.sha256(data).digest()
    head = len(gzip_reads.MAGIC)
    size, fingerprint = gzip_reads.HEAD.unpack_from(data, head)[1:3] if len(data) >= head + gzip_reads.HEAD.size else (0, 0)
    log = gzip_reads.parse(blob, size, fingerprint)
    assert log.to_bytes() == blob  # what it keeps is what the file said, nothing more
    for offset in range(0, size, max(1, size // 64)):
        log.find(offset, 16)


def _zip_reader(data: bytes) -> None:
    torchzip.TorchZip(MemorySource(data), "<fuzz input>").tree()


def _npz_reader(data: bytes) -> None:
    for _, node in npz.read(MemorySource(data), "<fuzz input>").root.walk():
        if isinstance(node, File):
            node.content.read(0, READ_BYTES)  # a deflated record inflates as a mount reads it


def _pt2_reader(data: bytes) -> None:
    """A torch.export archive's tree, and the first bytes of each of its files."""
    root, _, tree = pt2.read(MemorySource(data), "<fuzz input>")
    for folder in (root, tree.raw):
        for _, node in folder.walk():
            if isinstance(node, File):
                node.content.read(0, READ_BYTES)


def _keras_reader(data: bytes) -> None:
    """A .keras zip's tree (its HDF5 weights through h5py), and the first bytes of each of its files."""
    archive, root, _, _ = keras.read(MemorySource(data), "<fuzz input>")
    for folder in (root, archive.raw()):
        for _, node in folder.walk():
            if isinstance(node, File):
                node.content.read(0, READ_BYTES)


def _keras_config(data: bytes) -> None:
    """The code a Keras config names (what `ckptfs scan` lists), from any JSON."""
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON: the format refuses it before the scan reads it
    code_in(config)


def _onnx_model(data: bytes) -> None:
    """An ONNX model's tree (its external data never found: no folder), and
    the first bytes of each file, varint-packed values decoded; an edited
    metadata.yaml read back as the writer reads it."""
    root, _, _ = onnx.read(MemorySource(data), None)
    for _, node in root.walk():
        if isinstance(node, File):
            node.content.read(0, READ_BYTES)
    try:
        onnx_write.parse_metadata(data)
    except ValueError:
        pass  # parse_metadata's contract: ValueError with the reason


def _gguf_metadata_edit(data: bytes) -> None:
    """An edited metadata.yaml, as the writer reads it back (a user's edit is input too)."""
    gguf_values.parse(data, [("n", 4, 7), ("tokens", 9, (8, ["a", "b"]))])


def _gguf_header(data: bytes) -> None:
    gguf.expand(MemorySource(data), "<fuzz input>").root.children["metadata.yaml"].content.read(0, READ_BYTES)


def _inert_pickle(data: bytes) -> None:
    value = InertUnpickler(data, persistent_load=persistent_load, known=KNOWN).load()
    to_yaml(value)  # every value a pickle can make renders, or says in one line why not


def _dcp_metadata(data: bytes) -> None:
    Metadata.read("<fuzz input>", {".metadata": MemorySource(data)})


def _bnb_quant_state(data: bytes) -> None:
    bnb.quant_state(data)


def _npy_header(data: bytes) -> None:
    npy.parse_header(data, "<fuzz input>")


#: the value an edited YAML view is merged into: a config as NeMo pickles it
_MERGED_INTO = b"""
model:
  hidden: 64
  layers: [1, 2, 3]
  optim: {name: adam, lr: 0.001, betas: [0.9, 0.98]}
  tokenizer: null
name: tiny
"""


def _yaml_merge(data: bytes) -> None:
    old = object_edits.construct(object_edits.parse(_MERGED_INTO, "seed.yaml"), "seed.yaml")
    node = object_edits.parse(data, "edited.yaml")
    object_edits.merge(old, node, "edited.yaml")


def _open_and_read(path: str) -> None:
    """The checkpoint at `path` as `ckptfs mount` opens it, then the first
    bytes of every file of its tree read as a mount reads them."""
    with tempfile.TemporaryDirectory(prefix="ckptfs-fuzz-cache-") as cache:
        checkpoint = open_checkpoint(path, cache)
        for _, node in checkpoint.root.walk():
            if isinstance(node, File):
                node.content.read(0, READ_BYTES)


def _whole_file(data: bytes) -> None:
    """Any file as `ckptfs mount` opens it, and read."""
    _with_file(data, _open_and_read)


#: a safetensors file of one tensor: a diffusers component's weights
_HEADER = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
_COMPONENT_WEIGHTS = len(_HEADER).to_bytes(8, "little") + _HEADER + bytes(8)


def _protowire(data: bytes) -> None:
    """Every field of the message, and of each LEN field read as a message
    in turn (one that is a string or bytes may fail, as a FormatError)."""
    source = MemorySource(data)
    for field in protowire.fields(source):
        if field.wire == protowire.LEN:
            try:
                list(protowire.fields(source, field.offset, field.end))
            except CkptfsError:
                pass


def _orbax_metadata(data: bytes) -> None:
    """The input as an Orbax checkpoint's `_METADATA`, `_sharding`, and an
    array's `.zarray` and `zarr.json`: each read, or refused as Unfit."""
    for read in (orbax_metadata.tree, orbax_metadata.sharding, lambda d: orbax_metadata.array(d, False),
                 lambda d: orbax_metadata.array(d, True)):
        try:
            read(data)
        except orbax_metadata.Unfit:
            pass


def _tf_table(data: bytes) -> None:
    """Every entry of an SSTable (a TensorFlow bundle's index)."""
    list(tf_table.Table(MemorySource(data), "<fuzz input>").items())


def _tf_bundle_entry(data: bytes) -> None:
    """A BundleEntryProto, and each slice it lists."""
    entry = tf_entries.entry(data, "<fuzz input>")
    for start, end in entry.slices:
        tf_slices.extents(data, len(entry.shape), start, end, "<fuzz input>")


#: the data shard the tf_bundle target's index finds beside it
_TF_SHARD = np.arange(64, dtype=np.uint8).tobytes()


def _tf_bundle(data: bytes) -> None:
    """A bundle whose index is the input, beside a data shard, opened and read."""
    with tempfile.TemporaryDirectory(prefix="ckptfs-fuzz-") as folder:
        Path(folder, "b.index").write_bytes(data)
        Path(folder, "b.data-00000-of-00001").write_bytes(_TF_SHARD)
        _open_and_read(str(Path(folder, "b.index")))


def _diffusers_model_index(data: bytes) -> None:
    """A diffusers pipeline whose model_index.json is the input, beside a
    component folder holding a model, opened and read."""
    with tempfile.TemporaryDirectory(prefix="ckptfs-fuzz-") as folder:
        Path(folder, "model_index.json").write_bytes(data)
        Path(folder, "unet").mkdir()
        Path(folder, "unet", "diffusion_pytorch_model.safetensors").write_bytes(_COMPONENT_WEIGHTS)
        _open_and_read(folder)


def _zarr_array_meta(data: bytes) -> None:
    """A `.zarray` as a Megatron zarr checkpoint's array reads it, no chunk
    stored (every one the fill value), the first and last bytes of its
    file read."""
    meta = zarr_array.parse_meta(data, "<fuzz input>")
    file = TensorFile(zarr_array.array_tensor("a", meta, {}, "<fuzz input>", MemorySource(data)))
    file.content.read(0, ZARR_READ_BYTES)
    file.content.read(max(0, file.content.size - ZARR_READ_BYTES), ZARR_READ_BYTES)


def stored_tensors(arrays: dict[str, np.ndarray], source_type=MemorySource) -> dict[str, Tensor]:
    """Arrays as the tensor records of one in-memory source, as a safetensors file's."""
    data, tensors, offsets = b"", {}, {}
    for name, array in arrays.items():
        offsets[name] = len(data)
        data += np.ascontiguousarray(array).tobytes()
    source = source_type(data)
    for name, array in arrays.items():
        tensors[name] = Tensor(name, BY_NAME[array.dtype.name], array.shape, Extent(source, offsets[name], array.nbytes))
    return tensors


def _quantized_layers() -> dict[str, Tensor]:
    """One small layer of each packed layout (GPTQ, AWQ, compressed-tensors), values arbitrary."""
    words = np.arange(-256, 256, dtype=np.int32) * 0x01234567
    return stored_tensors({
        "g.qweight": words.reshape(8, 64), "g.qzeros": words[:16].reshape(2, 8), "g.g_idx": np.arange(64, dtype=np.int32) % 2,
        "g.scales": np.full((2, 64), 0.01, np.float16),
        "a.qweight": words.reshape(64, 8), "a.qzeros": words[:16].reshape(2, 8), "a.scales": np.full((2, 64), 0.01, np.float16),
        "c.weight_packed": words.reshape(64, 8), "c.weight_scale": np.full((64, 2), 0.01, np.float16),
        "c.weight_zero_point": words[:16].reshape(8, 2), "c.weight_shape": np.array([64, 64]),
        "n.weight": np.resize(words.view(np.int8), (64, 64)), "n.weight_scale": np.full((64, 1), 0.5, np.float32)})


def _quantization_config(data: bytes) -> None:
    """A config.json's quantization_config read as the schemes read it,
    over one layer of each layout, and a few rows of each weight found made."""
    try:
        config = json.loads(data)
    except ValueError:
        return  # model_config's note: not JSON
    for weight in quantized.find(_quantized_layers(), config if isinstance(config, dict) else None).weights:
        weight.rows(0, min(3, weight.shape[0]))


TARGETS = {t.name: t for t in (
    Target("safetensors_header", _safetensors_header, (CkptfsError,)),
    Target("tar_reader", _tar_reader, (CkptfsError,)),
    Target("gzip_index", _gzip_index, (CkptfsError,)),
    Target("gzip_read_log", _gzip_read_log, (ValueError,)),  # parse's contract: ValueError with the reason
    Target("zip_reader", _zip_reader, (CkptfsError,)),
    Target("npz_reader", _npz_reader, (CkptfsError,)),
    Target("pt2_reader", _pt2_reader, (CkptfsError,)),
    Target("keras_reader", _keras_reader, (CkptfsError,)),
    Target("keras_config", _keras_config, (CkptfsError,)),
    Target("gguf_header", _gguf_header, (CkptfsError,)),
    Target("gguf_metadata_edit", _gguf_metadata_edit, (ValueError,)),  # parse's contract: ValueError with the reason
    Target("inert_pickle", _inert_pickle, (PickleError,)),
    Target("dcp_metadata", _dcp_metadata, (CkptfsError,)),
    Target("npy_header", _npy_header, (ValueError,)),  # its documented contract: ValueError with the reason
    Target("yaml_merge", _yaml_merge, (object_edits.EditError,)),
    Target("adapter_config", lambda data: lora_config.parse(data, "<fuzz input>"), (CkptfsError,)),
    Target("whole_file", _whole_file, (CkptfsError,)),
    Target("quantization_config", _quantization_config, (CkptfsError,)),
    Target("bnb_quant_state", _bnb_quant_state, (QuantizationError,)),
    Target("diffusers_model_index", _diffusers_model_index, (CkptfsError,)),
    Target("protowire", _protowire, (CkptfsError,)),
    Target("orbax_metadata", _orbax_metadata, (orbax_metadata.Unfit,)),
    Target("onnx_model", _onnx_model, (CkptfsError,)),
    Target("tf_table", _tf_table, (CkptfsError,)),
    Target("tf_bundle_entry", _tf_bundle_entry, (CkptfsError,)),
    Target("tf_bundle", _tf_bundle, (CkptfsError,)),
    Target("tf_object_graph", lambda data: tf_objects.object_graph(data, "<fuzz input>"), (CkptfsError,)),
    Target("zarr_array_meta", _zarr_array_meta, (CkptfsError,)),
    # a safetensors file of quantized weights and their scales, each dequantized.npy read as a mount reads it
    Target("quantized_weights", _whole_file, (CkptfsError,)),
)}


def check(target: Target, data: bytes) -> None:
    """Run `target` on `data`; an error outside its contract is raised as
    AssertionError naming the input, for the fuzzer to report."""
    try:
        target.run(data)
    except target.allowed:
        pass
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        kept = keep(target, f"{type(e).__name__}-{Path(where.filename).stem}-{where.lineno}", data)
        raise AssertionError(f"{target.name}: {type(e).__name__}: {e} (the input is kept in {kept})") from e


def keep(target: Target, error: str, data: bytes) -> Path:
    """Keep an input that broke `target` in crashes/, where the test suite
    replays it from then on (commit it with the fix): the smallest one of
    each error and the line that raised it, as the fuzzer shrinks it."""
    path = CRASHES / f"{target.name}-{error}"
    if not path.exists() or path.stat().st_size >= len(data):
        CRASHES.mkdir(exist_ok=True)
        path.write_bytes(data)
    return path
