"""Quantized Hugging Face weights dequantized on read (formats/quantized/):
the framework every scheme shares, and FP8 with inverse scales. Each
scheme's own tests compare with its library; FP8's reference is
transformers' own dequantization (`FineGrainedFP8Config(dequantize=True)`,
which runs on CPU), and for grids transformers does not take (blocks cut
at the edges, as DeepSeek-V3 ships them) DeepSeek's `weight_dequant`:
y = x * s per 128 x 128 block, in float32."""

from __future__ import annotations

import json
import math
import os

import ml_dtypes
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ckptfs.formats.quantized.base import BLOCK_BYTES, DequantizedRows, QuantizedWeight
from ckptfs.tree.dtypes import BY_NAME

from .conftest import run_ckptfs, umount
from .fuzz.targets import MemorySource
from .quantized_models import dequantized_path, linear_names, logits, tiny_llama, with_quantization

BLOCK = 32


def _fp8_blocks(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight as float8_e4m3fn and the inverse scale of each block (the grid rounding up at the edges)."""
    rows, cols = weight.shape
    grid = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
    scale = torch.empty(grid)
    for i in range(grid[0]):
        for j in range(grid[1]):
            part = weight[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]].float()
            scale[i, j] = part.abs().max().clamp(min=1e-12) / 448
    full = scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (weight.float() / full).to(torch.float8_e4m3fn), scale


def _deepseek_dequant(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int], dtype) -> torch.Tensor:
    """DeepSeek-V3 inference/kernel.py `weight_dequant`: each block of x times its s, in float32, stored in dtype."""
    rows, cols = q.shape
    full = scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (q.float() * full.float()).to(dtype)


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    """A tiny Llama whose linear weights are FP8 in blocks of 32 x 32, as FineGrainedFP8Config saves them."""
    import shutil

    root = tmp_path_factory.mktemp("fp8")
    folder = shutil.copytree(tiny_llama(root / "plain"), root / "model")  # the plain model kept beside, for diff
    state = load_file(folder / "model.safetensors")
    for name in linear_names(state):
        state[name], state[name + "_scale_inv"] = _fp8_blocks(state[name], (BLOCK, BLOCK))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with_quantization(folder, {"quant_method": "fp8", "activation_scheme": "dynamic",
                               "weight_block_size": [BLOCK, BLOCK]})
    return folder


def _reference(folder):
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=FineGrainedFP8Config(dequantize=True))
    return model.state_dict()


def test_fp8_weights_read_as_transformers_dequantizes_them_beside_their_stored_tensors(fp8_model, mount):
    reference = _reference(fp8_model)
    stored = load_file(fp8_model / "model.safetensors")
    mnt = mount(fp8_model, "-o", "ro")
    names = linear_names(stored)
    assert len(names) == 14
    for name in names:
        values = np.load(dequantized_path(mnt, name))
        want = reference[name]
        assert values.dtype == ml_dtypes.bfloat16 and values.shape == tuple(want.shape), name
        assert values.tobytes() == want.view(torch.int16).numpy().tobytes(), name  # bit for bit
        got = os.getxattr(dequantized_path(mnt, name), "user.ckptfs.dequantized_from").decode()
        assert got == "FP8 float8_e4m3fn, blocks of 32x32"
        # the stored tensors stay, as they are
        raw = np.load(mnt.joinpath(*name.split(".")[:-1]) / "weight.npy")
        assert raw.tobytes() == stored[name].view(torch.uint8).numpy().tobytes()
    info = json.loads(run_ckptfs("info", fp8_model, "--json").stdout)
    assert info["dequantized_on_read"] == {"FP8 float8_e4m3fn, blocks of 32x32": {
        "weights": 14, "parameters": sum(stored[n].numel() for n in names)}}
    assert info["tensors"] == len(stored)  # dequantized.npy files are not among the stored tensors
    tsv = (mnt / ".ckptfs/tensors.tsv").read_text()
    assert "dequantized" not in tsv


def test_export_dequantize_is_a_plain_model_with_the_quantized_models_logits(fp8_model, tmp_path, mount):
    from transformers import FineGrainedFP8Config

    out = tmp_path / "plain"
    done = run_ckptfs("export", fp8_model, out, "--to", "hf", "--dequantize")
    assert done.returncode == 0, done.stderr
    assert ": 21 tensors (14 dequantized), " in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    exported = load_file(out / "model.safetensors")
    assert not any(n.endswith("_scale_inv") for n in exported)
    reference = _reference(fp8_model)
    assert all(torch.equal(exported[n].view(torch.int16), reference[n].view(torch.int16)) for n in linear_names(exported))
    want = logits(fp8_model, quantization_config=FineGrainedFP8Config(dequantize=True))
    assert torch.equal(logits(out), want)  # loaded with no quantization at all
    view = mount(fp8_model, "-o", "ro") / ".ckptfs/export/hf"
    assert sorted(p.name for p in view.iterdir()) == sorted(p.name for p in out.iterdir())
    for path in out.iterdir():
        assert (view / path.name).read_bytes() == path.read_bytes(), path.name
    # as stored: the parts and the config that names them
    raw = tmp_path / "raw"
    assert run_ckptfs("export", fp8_model, raw, "--to", "hf", "--quantized", "raw").returncode == 0
    assert json.loads((raw / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"
    assert load_file(raw / "model.safetensors").keys() == load_file(fp8_model / "model.safetensors").keys()


def test_a_file_without_config_edge_blocks_and_one_scale_and_partial_reads(tmp_path, mount):
    torch.manual_seed(1)
    edge = torch.randn(200, 300)  # 128 x 128 blocks, cut at both edges
    q_edge, s_edge = _fp8_blocks(edge, (128, 128))
    one = torch.randn(64, 48)
    s_one = one.abs().max() / 448
    q_one = (one / s_one).to(torch.float8_e4m3fn)
    folder = tmp_path / "bare"
    folder.mkdir()
    save_file({"a.weight": q_edge, "a.weight_scale_inv": s_edge, "b.weight": q_one,
               "b.weight_scale_inv": s_one.reshape(1), "c.weight": torch.randn(4)}, folder / "w.safetensors")
    mnt = mount(folder / "w.safetensors", "-o", "ro")
    values = (mnt / "a/weight/dequantized.npy").read_bytes()
    want = _deepseek_dequant(q_edge, s_edge, (128, 128), torch.float32).numpy()  # float32: no config names a dtype
    assert np.load(mnt / "a/weight/dequantized.npy").tobytes() == want.tobytes()
    want_one = (q_one.float() * s_one).numpy()
    assert np.load(mnt / "b/weight/dequantized.npy").tobytes() == want_one.tobytes()
    assert not (mnt / "c/weight").exists()
    with open(mnt / "a/weight/dequantized.npy", "rb") as f:
        for offset, length in ((0, 7), (129, 4097), (len(values) - 1000, 5000), (77777, 1)):
            assert os.pread(f.fileno(), length, offset) == values[offset:offset + length], offset


def test_scales_that_do_not_cover_the_weight_leave_it_undequantized_with_a_note(tmp_path, mount):
    folder = tmp_path / "bad"
    tiny_llama(folder)
    state = load_file(folder / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    state[name], scale = _fp8_blocks(state[name], (BLOCK, BLOCK))
    state[name + "_scale_inv"] = scale[:, :-1].contiguous()  # a column of blocks short
    save_file(state, folder / "model.safetensors")
    with_quantization(folder, {"quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK]})
    mnt = mount(folder)
    assert not dequantized_path(mnt, name).exists()
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    assert f"{name}: not dequantized: a grid of [2, 4] does not cover a weight of [64, 160] in blocks of [32, 32]" in notes
    assert np.load(mnt / "model/layers/0/mlp/down_proj/weight_scale_inv.npy").shape == (2, 4)
    # no plain model without that weight's values: its float8 bytes would pass for them
    done = run_ckptfs("export", folder, tmp_path / "out", "--to", "hf")
    assert done.returncode == 1 and not (tmp_path / "out").exists()
    assert (f"ckptfs: left out every tensor: a plain model needs every quantized weight's values, and {name}: "
            "not dequantized: a grid of [2, 4] does not cover") in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"ckptfs: {folder}: no tensors to export"
    assert run_ckptfs("export", folder, tmp_path / "raw", "--to", "hf", "--quantized", "raw").returncode == 0


def test_a_writable_mount_repacks_the_stored_tensors_and_never_the_dequantized_values(fp8_model, tmp_path, mount):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(fp8_model, folder)
    mnt = mount(folder)
    norm = mnt / "model/norm/weight.npy"
    edited = np.load(norm) * 2
    np.save(norm, edited)
    name = "model.layers.1.mlp.up_proj.weight"
    with pytest.raises(OSError):
        dequantized_path(mnt, name).write_bytes(b"x")
    assert umount(mnt).returncode == 0
    repacked = load_file(folder / "model.safetensors")
    assert repacked.keys() == load_file(fp8_model / "model.safetensors").keys()
    assert repacked["model.norm.weight"].view(torch.int16).numpy().tobytes() == edited.tobytes()


def test_a_read_makes_only_the_blocks_of_rows_it_covers():
    asked = []
    rows, cols = 4096, 1024  # 8 MiB of float16 values: 8 blocks of 512 rows

    def made(first: int, last: int) -> np.ndarray:
        asked.append((first, last))
        return np.full((last - first, cols), first, np.float16)

    weight = QuantizedWeight("w", "test", (rows, cols), BY_NAME["float16"], ("w",), made)
    piece = DequantizedRows(weight, MemorySource(b""))
    assert piece.block_rows * cols * 2 == BLOCK_BYTES
    row = 2 * cols
    assert piece.read(1000 * row + 6, 10) == np.full(5, 512, np.float16).tobytes()
    assert asked == [(512, 1024)]
    piece.read(1001 * row, row)  # the block made last is kept
    assert asked == [(512, 1024)]
    data = piece.read(1023 * row, 2 * row)  # across two blocks
    assert asked == [(512, 1024), (1024, 1536)] and len(data) == 2 * row


def test_a_weight_whose_rows_are_too_long_to_make_is_left_stored_with_a_note(tmp_path, monkeypatch):
    from ckptfs.formats import open_checkpoint, quantized

    monkeypatch.setattr(quantized, "MAX_ROW_BYTES", 1000)  # a row of 300 float32 values: 1,200 bytes
    weight = torch.randn(4, 300)
    q, scale = _fp8_blocks(weight, (128, 128))
    save_file({"a.weight": q, "a.weight_scale_inv": scale}, tmp_path / "w.safetensors")
    ckpt = open_checkpoint(str(tmp_path / "w.safetensors"), str(tmp_path / "cache"))
    assert ckpt.quantized == [] and "weight" not in ckpt.root.children["a"].children
    assert ckpt.notes == ["a.weight: not dequantized: a row of its values would take 1200 bytes, more than 1000"]


def test_diff_dequantize_compares_a_quantized_model_with_the_one_it_was_made_from(fp8_model, tmp_path):
    plain = fp8_model.parent / "plain"
    stored = run_ckptfs("diff", plain, fp8_model, "--tensors-only", "--json")
    report = json.loads(stored.stdout)
    assert stored.returncode == 1 and len(report["added"]) == 14  # the scales, by name
    assert all(c["b"]["dtype"] == "float8_e4m3fn" for c in report["changed"])
    done = run_ckptfs("diff", plain, fp8_model, "--tensors-only", "--json", "--dequantize")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not (report["added"] or report["removed"] or report["changed"]), report
    assert sorted(report["differing"]) == linear_names(load_file(plain / "model.safetensors"))
    assert all(0.99 < d["cosine"] <= 1 for d in report["differing"].values())  # FP8's rounding, no more
    assert report["equal"] == 7  # the norms and embeddings, not quantized
    out = tmp_path / "plain"
    assert run_ckptfs("export", fp8_model, out, "--to", "hf").returncode == 0
    report = json.loads(run_ckptfs("diff", out, fp8_model, "--dequantize", "--json").stdout)
    assert report["equal"] == 21 and not report["differing"]  # the export holds the values, bit for bit
    assert [c["path"] for c in report["files"]["changed"]] == ["config.json"]  # its quantization_config alone


def test_without_ml_dtypes_the_bfloat16_values_are_one_note_and_the_stored_tensors_read(fp8_model):
    import subprocess
    import sys

    no_ml_dtypes = "import sys; sys.modules['ml_dtypes'] = None; from ckptfs.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", no_ml_dtypes, "info", "--json", str(fp8_model)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["dequantized_on_read"] == {} and info["tensors"] == 35
    assert info["notes"] == ["model.layers.0.mlp.down_proj.weight and 13 more weights: not dequantized: its bfloat16 "
                             "values need ml_dtypes (pip install ml_dtypes)"]


def test_a_config_nested_too_deep_is_a_note_and_the_folder_mounts(fp8_model, tmp_path):
    import shutil

    folder = shutil.copytree(fp8_model, tmp_path / "deep")
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    done = run_ckptfs("info", "--json", folder)
    assert done.returncode == 0, done.stderr
    notes = json.loads(done.stdout)["notes"]
    assert any(n.startswith("config.json: not read (") for n in notes), notes
    out = tmp_path / "out"
    assert run_ckptfs("export", folder, out, "--to", "hf").returncode == 0  # the config copied as it is
    assert (out / "config.json").read_bytes() == (folder / "config.json").read_bytes()
