"""GGUF files written by the `gguf` package's GGUFWriter: metadata.yaml
holds every value with its type, plain tensors read as GGUFReader reads
them, quantized ones as their raw blocks; bad headers refused in one line."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import yaml
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter, quants

from ckptfs.formats.gguf import GGML_TYPES

from .conftest import run_ckptfs

rng = np.random.default_rng(0)
PLAIN = {
    "token_embd.weight": rng.standard_normal((8, 32)).astype(np.float32),
    "blk.0.attn_q.weight": rng.standard_normal((4, 32)).astype(np.float16),
    "blk.0.norm.bias": rng.standard_normal(32).astype(np.float64),
    "blk.0.ids": np.arange(-3, 13, dtype=np.int32),
    "blk.0.small": np.arange(8, dtype=np.int8),
    "blk.0.long": np.arange(4, dtype=np.int64),
}
QUANTIZED = {"blk.1.ffn_up.weight": T.Q8_0, "blk.1.ffn_down.weight": T.Q4_0}
#: K-quants and the rest: blocks of random bytes with finite scales, as gguf.quants cannot make them
RAW_BLOCKS = {"blk.2.q4_1.weight": T.Q4_1, "blk.2.q5_0.weight": T.Q5_0, "blk.2.q5_1.weight": T.Q5_1,
              "blk.2.q4_k.weight": T.Q4_K, "blk.2.q6_k.weight": T.Q6_K}
#: where each type keeps its float16 scales
SCALE_BYTES = {T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q4_K: (0, 2), T.Q6_K: (208,)}


def _random_blocks(kind, rows: int, columns: int) -> np.ndarray:
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (rows * columns // block, size), dtype=np.uint8)
    for at in SCALE_BYTES[kind]:
        raw[:, at:at + 2] = rng.uniform(-0.1, 0.1, (len(raw), 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, columns // block * size)


class TypedLoader(yaml.SafeLoader):
    """metadata.yaml's tags: a number with its GGUF type."""


for _tag in ("u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"):
    def _construct(loader, node, tag=_tag):
        convert = float if tag.startswith("f") else int
        if isinstance(node, yaml.SequenceNode):
            return (tag, [convert(loader.construct_scalar(n)) for n in node.value])
        return (tag, convert(loader.construct_scalar(node)))
    TypedLoader.add_constructor(f"!{_tag}", _construct)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.context_length", 4096)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_int64("big", -(2 ** 40))
    w.add_float64("ratio", 1 / 3)
    w.add_bool("flag", True)
    w.add_string("general.name", 'tiny "model" ü')
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a b", "ü", ""])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.25])
    for name, array in PLAIN.items():
        w.add_tensor(name, array)
    for name, kind in QUANTIZED.items():
        q = quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), kind)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
    for name, kind in RAW_BLOCKS.items():
        q = _random_blocks(kind, 3, 512)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tensors_read_as_gguf_reader_reads_them(model, mount):
    mnt = mount(model, "-o", "ro")
    reader = GGUFReader(str(model))
    seen = dequantized_seen = 0
    for tensor in reader.tensors:
        folder = mnt.joinpath(*tensor.name.split("."))
        raw = (folder / "raw.bin").read_bytes()
        assert raw == tensor.data.tobytes()  # the bytes as stored, quantized or not
        assert os.getxattr(folder / "raw.bin", "user.ckptfs.ggml_type").decode() == tensor.tensor_type.name
        if tensor.name in PLAIN:
            served = np.load(folder / "tensor.npy")
            assert served.shape == tensor.data.shape and served.dtype == tensor.data.dtype
            assert np.array_equal(served, tensor.data) and np.array_equal(served, PLAIN[tensor.name])
            seen += 1
        else:
            assert not (folder / "tensor.npy").exists()
            expected = quants.dequantize(tensor.data, tensor.tensor_type)
            dequantized = np.load(folder / "dequantized.npy")
            assert dequantized.dtype == np.float32 and dequantized.shape == expected.shape
            assert dequantized.tobytes() == expected.astype(np.float32).tobytes(), tensor.name
            whole = (folder / "dequantized.npy").read_bytes()
            with open(folder / "dequantized.npy", "rb") as f:  # reads that start and end inside blocks
                for offset in range(0, len(whole), 97):
                    assert os.pread(f.fileno(), 211, offset) == whole[offset:offset + 211]
            dequantized_seen += 1
    assert seen == len(PLAIN) and dequantized_seen == len(QUANTIZED) + len(RAW_BLOCKS)
    info = json.loads(run_ckptfs("info", "--json", str(model)).stdout)
    assert info["format"] == "gguf" and info["tensors"] == len(PLAIN)


def test_metadata_keeps_every_value_and_its_type(model, mount):
    mnt = mount(model, "-o", "ro")
    shown = yaml.load((mnt / "metadata.yaml").read_text(), Loader=TypedLoader)
    reader = GGUFReader(str(model))
    tags = {GGUFValueType.UINT32: "u32", GGUFValueType.FLOAT32: "f32", GGUFValueType.INT64: "i64",
            GGUFValueType.FLOAT64: "f64", GGUFValueType.UINT64: "u64", GGUFValueType.INT32: "i32"}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        value = shown[field.name]
        kind = field.types[0]
        if kind == GGUFValueType.STRING:
            assert value == field.contents()
        elif kind == GGUFValueType.BOOL:
            assert value is field.contents()
        elif kind == GGUFValueType.ARRAY and field.types[1] == GGUFValueType.STRING:
            assert value == field.contents()
        elif kind == GGUFValueType.ARRAY:
            assert value == (tags[field.types[1]], pytest.approx(field.contents(), rel=0, abs=0))
        else:
            tag, number = value
            assert tag == tags[kind]
            assert np.float32(number) == np.float32(field.contents()) if tag == "f32" else number == field.contents()


def test_the_type_table_matches_ggml(model):
    from gguf.constants import GGML_QUANT_SIZES

    for kind, (name, block, size, _) in GGML_TYPES.items():
        assert (T(kind).name, GGML_QUANT_SIZES[T(kind)]) == (name, (block, size))


def test_a_gguf_mount_is_read_only_and_says_so(model, mnt):
    done = run_ckptfs("mount", str(model), str(mnt))
    assert done.returncode == 0
    assert "ckptfs cannot write gguf checkpoints; mounted read-only" in done.stderr
    assert run_ckptfs("umount", str(mnt)).returncode == 0


def _header(version=3, tensors=0, keys=0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, keys)


@pytest.mark.parametrize("data, problem", [
    (_header(version=1), "GGUF version 1: only versions 2 and 3 are read"),
    (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian GGUF: not supported"),
    (_header(tensors=2 ** 60), "cannot fit the file"),
    (_header(keys=1) + struct.pack("<Q", 2 ** 62) + b"k", "runs past the file"),
    (_header(keys=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2 ** 61), "cannot fit the file"),
    (_header(keys=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77), "unknown value type 77"),
])
def test_bad_headers_are_refused_in_one_line(tmp_path, data, problem):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    done = run_ckptfs("info", str(path))
    assert done.returncode == 1 and problem in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_tensor_past_the_end_is_left_out_with_a_note(model, tmp_path):
    cut = tmp_path / "cut.gguf"
    data = model.read_bytes()
    cut.write_bytes(data[: len(data) - 300])  # the last tensor loses its end
    info = json.loads(run_ckptfs("info", "--json", str(cut)).stdout)
    assert any("run past the end of the file" in note for note in info["notes"])
    assert info["tensors"] >= len(PLAIN) - 1
