"""GGUF files written by the `gguf` package's GGUFWriter: metadata.yaml
holds every value with its type, plain tensors read as GGUFReader reads
them, quantized ones as their raw blocks and dequantized; edits repack
into files GGUFReader reads (byte for byte what GGUFWriter writes); bad
headers and edits refused in one line."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct

import numpy as np
import pytest
import yaml
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter, quants

from ckptfs.formats import gguf_values
from ckptfs.formats.gguf import GGML_TYPES

from .conftest import run_ckptfs, umount, write_refused

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
              "blk.2.q2_k.weight": T.Q2_K, "blk.2.q3_k.weight": T.Q3_K, "blk.2.q4_k.weight": T.Q4_K,
              "blk.2.q5_k.weight": T.Q5_K, "blk.2.q6_k.weight": T.Q6_K}
#: where each type keeps its float16 scales
SCALE_BYTES = {T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2),
               T.Q5_K: (0, 2), T.Q6_K: (208,)}


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


#: the values the quantized tensors hold before they are quantized
QUANTIZED_VALUES = {name: rng.standard_normal((4, 64)).astype(np.float32) for name in QUANTIZED}
RAW_BLOCK_DATA = {name: _random_blocks(kind, 3, 512) for name, kind in RAW_BLOCKS.items()}


def write_model(path, context_length: int = 4096, name: str = 'tiny "model" ü', alignment: int | None = None):
    """The test model as GGUFWriter writes it; the same bytes for the same arguments."""
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.context_length", context_length)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_int64("big", -(2 ** 40))
    w.add_float64("ratio", 1 / 3)
    w.add_bool("flag", True)
    w.add_string("general.name", name)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a b", "ü", ""])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.25])
    for tensor, array in PLAIN.items():
        w.add_tensor(tensor, array)
    for tensor, kind in QUANTIZED.items():
        q = quants.quantize(QUANTIZED_VALUES[tensor], kind)
        w.add_tensor(tensor, q, raw_shape=q.shape, raw_dtype=kind)
    for tensor, kind in RAW_BLOCKS.items():
        q = RAW_BLOCK_DATA[tensor]
        w.add_tensor(tensor, q, raw_shape=q.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


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
    assert info["format"] == "gguf" and info["tensors"] == len(PLAIN) + len(QUANTIZED) + len(RAW_BLOCKS)
    assert info["by_dtype"]["Q4_0"]["tensors"] == 1  # a quantized tensor counts, under its GGML type
    assert info["parameters"] == sum(math.prod(t.shape) for t in reader.tensors)
    assert info["tensor_bytes"] == sum(t.n_bytes for t in reader.tensors)


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


def test_an_edit_repacks_to_the_bytes_gguf_writer_writes(tmp_path, mount):
    """Metadata edited through the mount: the file is what GGUFWriter
    writes with that value, byte for byte (header, padding, tensor order)."""
    source = write_model(tmp_path / "edited.gguf")
    expected = write_model(tmp_path / "expected.gguf", context_length=8192, name="renamed")
    mnt = mount(source)
    text = (mnt / "metadata.yaml").read_text()
    text = text.replace("llama.context_length: !u32 4096", "llama.context_length: 8192")  # untagged: stays u32
    text = text.replace('general.name: "tiny \\"model\\" ü"', 'general.name: renamed')
    assert "8192" in text and "renamed" in text
    (mnt / "metadata.yaml").write_text(text)
    assert umount(mnt).returncode == 0
    assert source.read_bytes() == expected.read_bytes()


def test_tensor_edits_and_removals_load_in_gguf_reader(tmp_path, mount):
    source = write_model(tmp_path / "edited.gguf")
    mnt = mount(source)
    text = (mnt / "metadata.yaml").read_text()
    text = text.replace("flag: true\n", "")
    text += "general.alignment: !u32 64\nadded: !u16 [1, 2, 65535]\nlabels: [x, y]\nnested: [[1, 2], [\"a\"]]\n"
    (mnt / "metadata.yaml").write_text(text)
    new_embedding = np.full((8, 32), 0.25, np.float32)
    np.save(mnt / "token_embd" / "weight" / "tensor.npy", new_embedding)
    new_q8 = quants.quantize(np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64), T.Q8_0)
    (mnt / "blk" / "1" / "ffn_up" / "weight" / "raw.bin").write_bytes(new_q8.tobytes())
    shutil.rmtree(mnt / "blk" / "0" / "small")
    shutil.rmtree(mnt / "blk" / "2" / "q4_k")  # its dequantized.npy is read-only, and goes with its tensor
    assert umount(mnt).returncode == 0

    reader = GGUFReader(str(source))
    fields = {f.name: f for f in reader.fields.values()}
    assert "flag" not in fields and fields["general.alignment"].contents() == 64
    assert fields["general.alignment"].types == [GGUFValueType.UINT32]
    assert fields["added"].types == [GGUFValueType.ARRAY, GGUFValueType.UINT16]
    assert fields["added"].contents() == [1, 2, 65535]
    assert fields["labels"].contents() == ["x", "y"]
    assert fields["nested"].types[:2] == [GGUFValueType.ARRAY, GGUFValueType.ARRAY]
    assert fields["general.name"].contents() == 'tiny "model" ü'
    assert fields["llama.context_length"].types == [GGUFValueType.UINT32]
    assert fields["ratio"].contents() == 1 / 3  # float64 kept whole
    tensors = {t.name: t for t in reader.tensors}
    expected = set(PLAIN) | set(QUANTIZED) | set(RAW_BLOCKS)
    assert set(tensors) == expected - {"blk.0.small", "blk.2.q4_k.weight"}
    assert reader.data_offset % 64 == 0
    assert all(t.data_offset % 64 == 0 for t in tensors.values())
    assert np.array_equal(tensors["token_embd.weight"].data, new_embedding)
    assert tensors["blk.1.ffn_up.weight"].data.tobytes() == new_q8.tobytes()
    for name, array in PLAIN.items():
        if name in tensors and name != "token_embd.weight":
            assert np.array_equal(tensors[name].data, array), name
    for name, data in RAW_BLOCK_DATA.items():
        if name in tensors:
            assert tensors[name].data.tobytes() == data.tobytes(), name


@pytest.mark.parametrize("path, data, problem", [
    ("metadata.yaml", b"llama.context_length: -1\n", "'llama.context_length': '-1' is not a u32 number"),
    ("metadata.yaml", b"x: !u8 [1, 300]\n", "'x': '300' is not a u8 number"),
    ("metadata.yaml", b"x: !f32 1e40\n", "'x': '1e40' is not a f32 number"),
    ("metadata.yaml", b"x: 1\nx: 2\n", "'x' is given twice"),
    ("metadata.yaml", b"x: {a: 1}\n", "GGUF has no mappings inside values"),
    ("metadata.yaml", b"general.alignment: !u32 48\n", "general.alignment 48 is not a power of two"),
    ("token_embd/weight/raw.bin", b"\0" * 12, "raw.bin holds 12 bytes; F32 of shape [32, 8] takes 1024"),
    ("token_embd/weight/tensor.npy", None, "a GGUF tensor keeps its type and shape (float32 [8, 32])"),
])
def test_edits_a_gguf_cannot_hold_are_refused_when_closed(model, tmp_path, mount, path, data, problem):
    source = tmp_path / "m.gguf"
    shutil.copy(model, source)
    mnt = mount(source, log_errors_expected=True)
    if data is None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((32, 8), np.float32))  # the shape GGUF lists, not the one the reader reports
        data = buffer.getvalue()
    write_refused(mnt / path, data)
    assert problem in os.getxattr(mnt / path, "user.ckptfs.problem").decode()
    assert umount(mnt, "--discard").returncode == 0
    assert source.read_bytes() == model.read_bytes()


def test_a_file_gguf_cannot_hold_fails_the_repack_and_keeps_the_edits(model, tmp_path, mount):
    source = tmp_path / "m.gguf"
    shutil.copy(model, source)
    mnt = mount(source, log_errors_expected=True)
    write_refused(mnt / "notes.txt", b"hello")  # refused when closed, kept for the user to move away
    os.remove(mnt / "blk" / "0" / "ids" / "tensor.npy")  # half a tensor removed
    done = umount(mnt)
    assert done.returncode == 1
    assert "notes.txt: a GGUF file holds metadata.yaml and its tensors' folders only" in done.stderr
    assert "blk/0/ids/tensor.npy was removed: remove the tensor's whole folder" in done.stderr
    assert source.read_bytes() == model.read_bytes()
    assert "ckptfs recover" in done.stderr  # the edits are kept beside the source
    assert run_ckptfs("recover", source, "--discard").returncode == 0


def test_metadata_text_reads_back_as_the_same_values():
    """metadata.yaml, parsed unedited, gives back every value and type:
    bytes that are no UTF-8, float32's shortest text, nested arrays."""
    metadata = [
        ("s", gguf_values.STRING, "ok \udcff end"), ("f", 6, float(np.float32(0.1))), ("d", 12, 0.1),
        ("inf", 6, float("inf")), ("b", 7, False), ("u64", 10, 2 ** 64 - 1), ("i8", 1, -128),
        ("empty", 9, (8, [])), ("bools", 9, (7, np.array([True, False]))),
        ("nested", 9, (9, [(4, np.array([1, 2], "<u4")), (8, ["x"])])), ("weird key: x", 8, ""),
    ]
    back = gguf_values.parse(gguf_values.metadata_yaml(metadata).encode(), metadata)
    for (key, kind, value), (key2, kind2, value2) in zip(metadata, back, strict=True):
        assert (key, kind) == (key2, kind2)
        assert gguf_values.encode(kind, value) == gguf_values.encode(kind2, value2), key


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


def test_numbers_count_against_max_yaml_values_and_arrays_past_it_are_kept(tmp_path, mount):
    """metadata.yaml shows at most max_yaml_values values, numbers counted
    as strings are: an array that would pass the bound shows as `[]` and is
    written back as it was; values written in its place replace it."""
    source = tmp_path / "arrays.gguf"
    w = GGUFWriter(str(source), "llama")
    w.add_array("first", [True, False] * 3)  # 6 values
    w.add_array("second", list(range(10)))  # 10 would pass 12: elided
    w.add_uint32("scalar", 7)  # 1
    w.add_array("third", [0.5] * 5)  # 5: elided too (5 left)
    w.add_array("fourth", [1, 2])  # 2: shown
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    mnt = mount(source, "-o", "max_yaml_values=12")
    text = (mnt / "metadata.yaml").read_text()
    shown = yaml.load(text, Loader=TypedLoader)
    assert shown["first"] == [True, False] * 3 and shown["fourth"] == ("i32", [1, 2]) and shown["scalar"] == ("u32", 7)
    assert shown["second"] == ("i32", []) and shown["third"] == ("f32", [])
    assert "second: !i32 []  # ckptfs: 10 values, past the max_yaml_values" in text
    (mnt / "metadata.yaml").write_text(text.replace("scalar: !u32 7", "scalar: !u32 8")
                                       .replace("third: !f32 []", "third: !f32 [2.5]"))
    assert umount(mnt).returncode == 0
    fields = {f.name: f for f in GGUFReader(str(source)).fields.values()}
    assert fields["second"].contents() == list(range(10)) and fields["second"].types == [GGUFValueType.ARRAY,
                                                                                         GGUFValueType.INT32]
    assert fields["third"].contents() == [2.5] and fields["scalar"].contents() == 8
    assert fields["first"].contents() == [True, False] * 3


def test_more_tensors_than_max_members_or_keys_than_max_yaml_values_are_refused(model, mnt):
    tensors = len(PLAIN) + len(QUANTIZED) + len(RAW_BLOCKS)
    keys = 9  # general.architecture and the eight write_model adds
    for option, problem in ((f"max_members={tensors - 1}", f"{tensors} tensors, more than max_members"),
                            (f"max_yaml_values={keys - 1}", f"{keys} keys, more than max_yaml_values")):
        done = run_ckptfs("mount", model, mnt, "-o", f"ro,{option}")
        assert done.returncode == 1 and done.stderr.startswith(f"ckptfs: {model}: {problem} (-o "), done.stderr
