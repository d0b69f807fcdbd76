"""Seed inputs for each fuzz target, taken from the samples: the fuzzers
start from real files and mutate them, which reaches far deeper into a
parser than random bytes do."""

from __future__ import annotations

import functools
import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ckptfs.formats import gguf, gguf_values

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _safetensors() -> list[bytes]:
    shard = (SAMPLES / "hf" / "bert_tiny_sharded" / "model-00004-of-00004.safetensors").read_bytes()
    header = json.dumps({"__metadata__": {"format": "pt"}, "a.b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                         "c": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]}}).encode()
    return [shard, len(header).to_bytes(8, "little") + header + bytes(range(16))]


def _pickles() -> list[bytes]:
    found = []
    for path in (SAMPLES / "lightning" / "tiny.ckpt", SAMPLES / "dcp" / "fsdp2_2rank.ref.pt"):
        with zipfile.ZipFile(path) as archive:
            found += [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
    return found + [(SAMPLES / "dcp" / "fsdp2_2rank" / ".metadata").read_bytes()]


def _npy_headers() -> list[bytes]:
    found = []
    for array in (np.zeros((2, 3), np.float32), np.arange(5, dtype=">i8"), np.zeros((), np.float16)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        found.append(buffer.getvalue())
    return found


def _yaml() -> list[bytes]:
    import tarfile

    with tarfile.open(SAMPLES / "nemo" / "tiny.nemo") as archive:
        config = next(m for m in archive.getmembers() if m.name.endswith("model_config.yaml"))
        text = archive.extractfile(config).read()
    return [text, b"model: {hidden: 32, layers: [1, 2]}\nname: other\n", b"a: &x [1, 2]\nb: *x\n"]


def _npz() -> list[bytes]:
    """Archives as numpy.savez and savez_compressed write them."""
    import numpy as np

    out = []
    for save in (np.savez, np.savez_compressed):
        buffer = io.BytesIO()
        save(buffer, w=np.arange(12, dtype=np.float32).reshape(3, 4), ids=np.arange(5), names=np.array(["a"]))
        out.append(buffer.getvalue())
    return out


def _pt2() -> list[bytes]:
    """An archive as torch.export.save writes it, and one whose payloads
    share a record, are strided or pickled, or are wrong (tests/hostile/pt2.py)."""
    import tempfile

    from ..hostile.pt2 import _pt2_of_bad_payloads

    with tempfile.TemporaryDirectory() as folder:
        return [(SAMPLES / "pt2" / "tiny.pt2").read_bytes(), _pt2_of_bad_payloads(Path(folder)).read_bytes()]


def _keras() -> list[bytes]:
    """A .keras zip as model.save lays it out (h5py and zipfile, tests/hostile/keras.py)."""
    import tempfile

    from ..hostile.keras import keras_zip

    with tempfile.TemporaryDirectory() as folder:
        return [keras_zip(Path(folder) / "m.keras").read_bytes()]


def _keras_configs() -> list[bytes]:
    """Configs naming code: a Keras 3 Lambda, a tf.keras 2 Lambda, a custom object, a TFOpLambda."""
    from ..hostile.keras import CONFIG

    lambda3 = {"class_name": "Lambda", "config": {"function": {"class_name": "__lambda__", "config": {"code": "4wE="}}}}
    lambda2 = {"class_name": "Lambda", "config": {"function": ["4wE=", None, None], "function_type": "lambda",
                                                  "output_shape": "f", "output_shape_type": "function",
                                                  "output_shape_module": "__main__", "module": "__main__"}}
    custom = {"module": "my_package", "class_name": "Layer", "config": {}}
    op = {"class_name": "TFOpLambda", "config": {"function": "math.add"}}
    return [json.dumps(c).encode() for c in (CONFIG, lambda3, lambda2, custom, op)]


def _gguf() -> list[bytes]:
    """A file as the gguf package's GGUFWriter writes one: every value type, a plain and a quantized tensor."""
    import tempfile

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "seed.gguf"
        w = GGUFWriter(str(path), "llama")
        w.add_uint32("n", 7)
        w.add_float32("eps", 1e-5)
        w.add_string("name", "seed")
        w.add_bool("flag", False)
        w.add_array("tokens", ["a", "b"])
        w.add_array("scores", [1.5, 2.5])
        w.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32))
        q = quants.quantize(np.ones((1, 32), np.float32), GGMLQuantizationType.Q8_0)
        w.add_tensor("q", q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return [path.read_bytes()]


def _gguf_metadata() -> list[bytes]:
    """metadata.yaml of the GGUF seed, as a mount shows it."""
    from .targets import MemorySource

    return [gguf_values.metadata_yaml(gguf.read_header(MemorySource(data), "seed")[0]).encode() for data in _gguf()]


def _quantization_configs() -> list[bytes]:
    """config.json as GPTQModel, AutoAWQ and compressed-tensors write its quantization_config."""
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 32}
    configs = [
        {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False, "checkpoint_format": "gptq"},
        {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm", "zero_point": True},
        {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head", "re:.*k_proj$"],
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "format": "pack-quantized"},
                           "group_1": {"targets": ["re:^n$"], "format": "naive-quantized",
                                       "weights": {**weights, "num_bits": 8, "strategy": "channel"}}}},
    ]
    return [json.dumps({"torch_dtype": "float16", "quantization_config": c}).encode() for c in configs]
def _bnb_quant_states() -> list[bytes]:
    """The JSON bitsandbytes packs into a 4-bit weight's quant state, with and without double quantization."""
    import bitsandbytes.functional as F
    import torch

    found = []
    for quant_type, nested in (("nf4", True), ("fp4", False)):
        _, state = F.quantize_4bit(torch.ones(4, 64), quant_type=quant_type, compress_statistics=nested)
        packed = state.as_dict(packed=True)
        found.append(bytes(packed["quant_state.bitsandbytes__" + quant_type].numpy()))
    return found


def _adapter_configs() -> list[bytes]:
    """adapter_config.json as PEFT's LoraConfig.save_pretrained writes it (the keys a merge reads)."""
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": False, "use_dora": False,
              "fan_in_fan_out": False, "rank_pattern": {"model.layers.1.self_attn.q_proj": 4},
              "alpha_pattern": {"v_proj": 32}, "base_model_name_or_path": "org/name", "modules_to_save": ["lm_head"],
              "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    return [json.dumps(config, indent=2, sort_keys=True).encode()]


def _model_index() -> list[bytes]:
    """model_index.json as DiffusionPipeline.save_pretrained writes it:
    components as [library, class], left-out ones as [null, null]."""
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "requires_safety_checker": False, "safety_checker": [None, None],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    return [json.dumps(index, indent=2).encode(), json.dumps({**index, "../x": ["diffusers", "X"]}).encode()]


def _safetensors_file(tensors: dict[str, np.ndarray]) -> bytes:
    """A safetensors file as the reference writer lays it out."""
    codes = {"float32": "F32", "float8_e4m3fn": "F8_E4M3", "int32": "I32", "float16": "F16", "uint8": "U8",
             "int8": "I8"}
    header, data, position = {}, b"", 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": codes[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [position, position + len(raw)]}
        data, position = data + raw, position + len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _quantized_safetensors() -> list[bytes]:
    """Quantized weights with no config.json beside them, found from their names, dtypes and shapes (FP8, GPTQ, AWQ)."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    fp8 = rng.standard_normal((40, 24)).astype(ml_dtypes.float8_e4m3fn)
    words = rng.integers(-2**31, 2**31, 512).astype(np.int32)
    return [_safetensors_file({"a.weight": fp8, "a.weight_scale_inv": rng.random((2, 3), np.float32)}),
            _safetensors_file({"b.weight": fp8, "b.weight_scale_inv": rng.random((1,), np.float32)}),
            _safetensors_file({"g.qweight": words.reshape(8, 64), "g.qzeros": words[:16].reshape(2, 8),  # GPTQ
                               "g.scales": rng.random((2, 64)).astype(np.float16), "g.g_idx": np.arange(64, dtype=np.int32) % 2}),
            _safetensors_file({"a.qweight": words.reshape(64, 8), "a.qzeros": words[:16].reshape(2, 8),  # AWQ
                               "a.scales": rng.random((2, 64)).astype(np.float16)})]


def _bnb_safetensors() -> list[bytes]:
    """A bitsandbytes nf4 weight (double quantized) and an int8 one, found from their names alone."""
    import bitsandbytes.functional as F
    import torch

    packed, state = F.quantize_4bit(torch.randn(8, 64), quant_type="nf4", compress_statistics=True)
    parts = {f"a.weight.{k}": v.numpy() for k, v in state.as_dict(packed=True).items()}
    rows = torch.randn(4, 32)
    scb = rows.abs().amax(1)
    int8 = (rows * 127 / scb[:, None]).round().to(torch.int8)
    return [_safetensors_file({"a.weight": packed.numpy(), **parts, "b.weight": int8.numpy(), "b.SCB": scb.numpy()})]


@functools.cache
def _protobuf_messages() -> list[bytes]:
    """A small ONNX model as the onnx package serializes it: nested messages,
    packed and unpacked repeated fields, floats, raw tensor bytes."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    node = helper.make_node("Gemm", ["x", "w"], ["y"], alpha=0.5, transB=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    model = helper.make_model(graph, producer_name="seed")
    return [model.SerializeToString(), weight.SerializeToString()]


def _orbax_metadata() -> list[bytes]:
    """What orbax-checkpoint 0.12 writes: `_METADATA` of nested dicts and a
    list, `_sharding` (keys in base64), a `.zarray` and a sharded `zarr.json`."""
    leaf = {"key_metadata": [{"key": "layers", "key_type": 2}, {"key": "1", "key_type": 1}, {"key": "w", "key_type": 2}],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False, "write_shape": [700, 300]}}
    scalar = {"key_metadata": [{"key": "step", "key_type": 2}],
              "value_metadata": {"value_type": "scalar", "skip_deserialize": False}}
    tree = {"tree_metadata": {"('layers', '1', 'w')": leaf, "('step',)": scalar}, "use_ocdbt": True,
            "use_zarr3": False, "store_array_data_equal_to_fill_value": True, "custom_metadata": None}
    sharding = {"bGF5ZXJzLjEudw==": json.dumps({"sharding_type": "SingleDeviceSharding", "device_str": "cpu:0"})}
    zarray = {"chunks": [140, 100], "compressor": {"id": "zstd", "level": 1}, "dimension_separator": ".",
              "dtype": "<f4", "fill_value": None, "filters": None, "order": "C", "shape": [700, 300], "zarr_format": 2}
    inner = {"chunk_shape": [140, 100], "codecs": [{"configuration": {"endian": "little"}, "name": "bytes"}],
             "index_codecs": [{"name": "crc32c"}]}
    zarr3 = {"chunk_grid": {"configuration": {"chunk_shape": [140, 100]}, "name": "regular"},
             "codecs": [{"configuration": inner, "name": "sharding_indexed"}], "data_type": "bfloat16",
             "fill_value": 0.0, "node_type": "array", "shape": [700, 300], "zarr_format": 3}
    return [json.dumps(doc).encode() for doc in (tree, sharding, zarray, zarr3)]


def _onnx_models() -> list[bytes]:
    """The tests' model (every way ONNX stores values) and one with a subgraph (an If's branches)."""
    from onnx import TensorProto, helper

    from ..onnx_models import model

    branch = helper.make_graph([helper.make_node("Identity", ["c"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
                               [helper.make_tensor("c", TensorProto.FLOAT, [1], [2.0])])
    node = helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    return [model().SerializeToString(), helper.make_model(graph).SerializeToString()]


@functools.cache
def _tf_bundles() -> list[bytes]:
    """Indexes of small bundles as tests/tf_bundle_writer.py lays them out
    (TensorFlow reads them: tests/test_tensorflow.py): plain tensors, two
    shards, blocks of several entries."""
    import tempfile

    from ..tf_bundle_writer import ARRAYS, table, write_arrays

    with tempfile.TemporaryDirectory(prefix="ckptfs-seed-") as folder:
        one = write_arrays(Path(folder) / "one", ARRAYS).read_bytes()
        two = write_arrays(Path(folder) / "two", {"w": np.arange(8, dtype=np.uint8)}).read_bytes()
    return [one, two, table([(b"a", b"1"), (b"ab", b"22"), (b"b", b"")], per_block=2)]


@functools.cache
def _tf_indexes() -> list[bytes]:
    """Indexes whose tensors lie in the data shard the tf_bundle target puts
    beside them (the bytes 0 to 63), in one tensor and in two."""
    import tempfile

    from ..tf_bundle_writer import write_arrays

    shard = np.arange(64, dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="ckptfs-seed-") as folder:
        return [write_arrays(Path(folder) / "one", {"w": shard}).read_bytes(),
                write_arrays(Path(folder) / "two", {"a": shard[:32], "b/c": shard[32:].view(np.int16)}).read_bytes()]


@functools.cache
def _tf_entries() -> list[bytes]:
    """BundleEntryProtos: a plain tensor's, a partitioned one's (two slices)."""
    from ckptfs.formats.protowire import VARINT, encode_len, encode_tag, encode_varint

    from ..tf_bundle_writer import Entry

    plain = Entry(1, (3, 4), 0, 64, 48, 0x1234).encode()
    extent = encode_tag(1, VARINT) + encode_varint(2) + encode_tag(2, VARINT) + encode_varint(1)
    spans = encode_len(1, len(extent)) + extent + encode_len(1, 0)
    sliced = Entry(1, (3, 4), 0, 0, 0).encode() + (encode_len(7, len(spans)) + spans) * 2
    return [plain, sliced]


def _tf_object_graphs() -> list[bytes]:
    """A TrackableObjectGraph of a root, its child and the child's variable."""
    from ckptfs.formats.protowire import LEN, VARINT, encode_len, encode_tag, encode_varint

    child = encode_tag(1, VARINT) + encode_varint(1) + encode_tag(2, LEN) + encode_varint(5) + b"model"
    key = b"model/.ATTRIBUTES/VARIABLE_VALUE"
    attribute = encode_tag(1, LEN) + encode_varint(14) + b"VARIABLE_VALUE" + encode_len(3, len(key)) + key
    root = encode_len(1, len(child)) + child
    leaf = encode_len(2, len(attribute)) + attribute
    return [encode_len(1, len(root)) + root + encode_len(1, len(leaf)) + leaf]


def _zarray() -> list[bytes]:
    """`.zarray` files as zarr 2 wrote them for Megatron (raw, bfloat16),
    and with the codecs, fill values and separator ckptfs reads."""
    def meta(**more) -> bytes:
        fields = {"chunks": [2, 3], "compressor": None, "dtype": "<f4", "fill_value": None, "filters": None,
                  "order": "C", "shape": [5, 7], "zarr_format": 2, **more}
        return json.dumps(fields, indent=4, sort_keys=True).encode()

    return [meta(), meta(dtype="bfloat16", shape=[4, 6], chunks=[2, 6]), meta(dtype="<i8", fill_value=3,
            compressor={"id": "zlib", "level": 1}), meta(dtype="<f2", fill_value="NaN", compressor={"id": "zstd"}),
            meta(dtype="|b1", dimension_separator="/", compressor={"id": "gzip"}), meta(shape=[], chunks=[])]


def _gzip_read_logs() -> list[bytes]:
    """Logs as gzip_reads writes them, without their checksum (the target signs them)."""
    from ckptfs.sources.gzip_reads import DIGEST, ReadLog

    log = ReadLog(1 << 20, 12345)
    for offset, data in ((0, b"ustar" * 20), (4096, b"PK\3\4" + bytes(40)), (1 << 19, b"\x80\x02}q\x00.")):
        log.add(offset, data)
    return [ReadLog(100, 1).to_bytes()[:-DIGEST], log.to_bytes()[:-DIGEST]]


def seeds(target: str) -> list[bytes]:
    nemo = (SAMPLES / "nemo" / "tiny.nemo").read_bytes()
    torch_zip = (SAMPLES / "lightning" / "tiny.ckpt").read_bytes()
    by_target = {
        "safetensors_header": _safetensors,
        "tar_reader": lambda: [nemo],
        "gzip_index": lambda: [gzip.compress(nemo, mtime=0)],
        "gzip_read_log": _gzip_read_logs,
        "zip_reader": lambda: [torch_zip, (SAMPLES / "dcp" / "fsdp2_2rank.ref.pt").read_bytes()],
        "npz_reader": _npz,
        "pt2_reader": _pt2,
        "keras_reader": _keras,
        "keras_config": _keras_configs,
        "gguf_header": _gguf,
        "gguf_metadata_edit": _gguf_metadata,
        "inert_pickle": _pickles,
        "dcp_metadata": lambda: [(SAMPLES / "dcp" / "fsdp2_2rank" / ".metadata").read_bytes()],
        "npy_header": _npy_headers,
        "yaml_merge": _yaml,
        "adapter_config": _adapter_configs,
        "whole_file": lambda: [nemo, torch_zip, _safetensors()[0]],
        "quantization_config": _quantization_configs,
        "bnb_quant_state": _bnb_quant_states,
        "quantized_weights": lambda: _quantized_safetensors() + _bnb_safetensors(),
        "diffusers_model_index": _model_index,
        "protowire": _protobuf_messages,
        "orbax_metadata": _orbax_metadata,
        "onnx_model": _onnx_models,
        "tf_table": _tf_bundles,
        "tf_bundle_entry": _tf_entries,
        "tf_bundle": _tf_indexes,
        "tf_object_graph": _tf_object_graphs,
        "zarr_array_meta": _zarray,
    }
    return by_target[target]()
