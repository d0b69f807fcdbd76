"""MLX affine quantization dequantized on read (formats/quantized/mlx.py).
The weights are quantized by `mlx.core.quantize` (mlx[cpu]) and written by
`mlx.core.save_safetensors`, with config.json's `quantization` as mlx-lm's
`quantize_model` writes it (the model's bits and group size, a module's
own where it has them, `false` for one left plain, and the same again as
`quantization_config`); the reference is `mlx.core.dequantize`, compared
bit for bit."""

from __future__ import annotations

import json
import os

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest
import torch
import yaml

from .conftest import run_ckptfs
from .quantized_models import dequantized_path, logits, tiny_llama

#: the model's bits and group size, and the modules quantized otherwise (mlx-lm's per-layer entries)
DEFAULT = {"group_size": 32, "bits": 4}
OWN = {
    "model.embed_tokens": {"group_size": 64, "bits": 5},
    "model.layers.0.self_attn.q_proj": {"group_size": 64, "bits": 8},
    "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 6},
    "model.layers.1.self_attn.k_proj": {"group_size": 64, "bits": 2},
    "model.layers.1.mlp.up_proj": {"group_size": 32, "bits": 3},
    "model.layers.1.mlp.gate_proj": {"group_size": 32, "bits": 1},
    "model.layers.1.mlp.down_proj": False,
}
QUANTIZED = ("proj.weight", "embed_tokens.weight", "lm_head.weight")


def _quantize(arrays: dict, quantization: dict, suffixes: tuple[str, ...] = (".weight",)) -> dict:
    """The weights of `arrays` (those whose names end in `suffixes`) quantized
    as `quantization` says, as mlx.nn.quantize stores them."""
    out = {}
    for name, value in arrays.items():
        module = name[: -len(".weight")]
        params = quantization.get(module, quantization)
        if not name.endswith(suffixes) or params is False:
            out[name] = value
            continue
        out[name], out[module + ".scales"], out[module + ".biases"] = mx.quantize(
            value, group_size=params["group_size"], bits=params["bits"])
    return out


def _config(folder, quantization: dict | None) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if quantization is not None:
        config["quantization"] = config["quantization_config"] = quantization
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def mlx_model(tmp_path_factory):
    """A tiny Llama in bfloat16 quantized by MLX, with a module's own bits and group size here and there."""
    folder = tiny_llama(tmp_path_factory.mktemp("mlx") / "model")
    quantization = {**DEFAULT, **OWN}
    mx.save_safetensors(str(folder / "model.safetensors"),
                        _quantize(mx.load(str(folder / "model.safetensors")), quantization, QUANTIZED), metadata={"format": "mlx"})
    _config(folder, quantization)
    return folder


def reference(folder) -> dict[str, mx.array]:
    """Each quantized weight as mlx.core.dequantize makes it."""
    stored = mx.load(str(folder / "model.safetensors"))
    quantization = json.loads((folder / "config.json").read_text())["quantization"]
    values = {}
    for name in [n for n in stored if n.endswith(".scales")]:
        module = name[: -len(".scales")]
        params = quantization.get(module, quantization)
        values[module + ".weight"] = mx.dequantize(stored[module + ".weight"], stored[name], stored[module + ".biases"],
                                                   group_size=params["group_size"], bits=params["bits"])
    return values


def _bits(value: mx.array) -> bytes:
    return np.array(value.view(mx.uint16 if value.dtype != mx.float32 else mx.uint32)).tobytes()


def test_every_weight_reads_as_mlx_dequantizes_it(mlx_model, mount):
    want = reference(mlx_model)
    assert len(want) == 15  # the 14 linear weights less the one left plain, the embedding and lm_head
    mnt = mount(mlx_model, "-o", "ro")
    for name, values in want.items():
        path = dequantized_path(mnt, name)
        got = np.load(path)
        assert got.shape == tuple(values.shape) and got.dtype == ml_dtypes.bfloat16, name
        assert got.tobytes() == _bits(values), name  # bit for bit
        params = OWN.get(name[: -len(".weight")], DEFAULT)
        assert os.getxattr(path, "user.ckptfs.dequantized_from").decode() == (
            f"MLX affine {params['bits']}-bit, groups of {params['group_size']}")
    assert not dequantized_path(mnt, "model.layers.1.mlp.down_proj.weight").exists()
    info = json.loads(run_ckptfs("info", mlx_model, "--json").stdout)
    assert info["dequantized_on_read"]["MLX affine 4-bit, groups of 32"]["weights"] == 9
    assert sum(s["weights"] for s in info["dequantized_on_read"].values()) == 15


def test_export_dequantize_is_a_plain_model_with_the_logits_of_mlx_dequantized_weights(mlx_model, tmp_path):
    out = tmp_path / "plain"
    done = run_ckptfs("export", mlx_model, out, "--to", "hf", "--dequantize")
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    exported = load_file(out / "model.safetensors")
    assert not [n for n in exported if n.endswith((".scales", ".biases"))]
    want = {n: torch.from_numpy(np.array(v.view(mx.uint16))).view(torch.bfloat16) for n, v in reference(mlx_model).items()}
    assert all(torch.equal(exported[n].view(torch.int16), want[n].view(torch.int16)) for n in want)
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain model, weights as MLX dequantizes them
    assert getattr(model, "hf_quantizer", None) is None
    plain = {n: torch.from_numpy(np.array(v.view(mx.uint16))).view(torch.bfloat16)
             for n, v in mx.load(str(mlx_model / "model.safetensors")).items() if not n.endswith((".scales", ".biases"))}
    model.load_state_dict({**plain, **want}, strict=True)
    with torch.no_grad():
        expected = model(torch.arange(12).reshape(1, 12) % 128).logits
    assert torch.equal(logits(out), expected)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_scales_of_any_float_experts_in_three_dimensions_and_partial_reads(dtype, tmp_path, mount):
    rng = np.random.default_rng(3)
    kind = getattr(mx, dtype)
    arrays, quantization = {}, {"group_size": 64, "bits": 4}
    for i, (bits, group_size) in enumerate([(3, 32), (5, 128), (6, 64), (8, 32)]):
        arrays[f"l{i}.weight"] = mx.array(rng.standard_normal((300, 384)).astype(np.float32)).astype(kind)
        quantization[f"l{i}"] = {"group_size": group_size, "bits": bits}
    arrays["experts.weight"] = mx.array(rng.standard_normal((3, 40, 128)).astype(np.float32)).astype(kind)
    folder = tmp_path / "m"
    folder.mkdir()
    stored = _quantize(arrays, {**quantization, "experts": {"group_size": 32, "bits": 4}})
    mx.save_safetensors(str(folder / "w.safetensors"), stored)
    (folder / "config.json").write_text(json.dumps({"quantization": {**quantization, "experts": {"group_size": 32, "bits": 4}}}))
    mnt = mount(folder / "w.safetensors", "-o", "ro")
    for name in arrays:
        module = name[: -len(".weight")]
        params = {**quantization, "experts": {"group_size": 32, "bits": 4}}[module]
        want = _bits(mx.dequantize(stored[name], stored[module + ".scales"], stored[module + ".biases"], **params))
        path = mnt.joinpath(*module.split(".")) / "weight/dequantized.npy"
        assert np.load(path).tobytes() == want, name
        data = path.read_bytes()
        with open(path, "rb") as f:
            for offset in (0, 129, len(data) // 3, len(data) - 700):
                assert os.pread(f.fileno(), 4099, offset) == data[offset:offset + 4099], (name, offset)
    assert np.load(mnt / "experts/weight/dequantized.npy").shape == (3, 40, 128)


def test_bits_or_scales_that_do_not_fit_leave_only_their_weight_undequantized(tmp_path, mount):
    rng = np.random.default_rng(4)
    arrays = {f"l{i}.weight": mx.array(rng.standard_normal((8, 128)).astype(np.float32)) for i in range(5)}
    stored = _quantize(arrays, {"group_size": 64, "bits": 4})
    stored["l1.scales"] = stored["l1.scales"][:, :1]  # a group short
    folder = tmp_path / "bad"
    folder.mkdir()
    mx.save_safetensors(str(folder / "w.safetensors"), stored)
    quantization = {"group_size": 64, "bits": 4, "l2": {"group_size": 64, "bits": 7},
                    "l3": {"group_size": 48, "bits": 4}, "l4": {"group_size": 64, "bits": 4, "mode": "mxfp4"}}
    (folder / "config.json").write_text(json.dumps({"quantization": quantization}))
    mnt = mount(folder / "w.safetensors", "-o", "ro")
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    assert sorted(notes) == [
        "l1.weight: not dequantized: scales of [8, 1] do not cover rows of 128 4-bit codes in groups of 64",
        "l2.weight: not dequantized: bits 7, not one of 1, 2, 3, 4, 5, 6, 8",
        "l3.weight: not dequantized: group_size 48, not one of 32, 64, 128",
        "l4.weight: not dequantized: mode 'mxfp4': ckptfs dequantizes MLX's affine mode",
    ]
    assert [p.parent.parent.name for p in mnt.rglob("dequantized.npy")] == ["l0"]
    assert np.load(mnt / "l1/scales.npy").shape == (8, 1)  # its stored tensors read as ever
    # with no config.json to name the bits and group size, one note for them all
    (folder / "config.json").unlink()
    mnt = mount(folder / "w.safetensors", "-o", "ro")
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    assert notes == ["5 weights stored as MLX affine quantization (uint32 with scales and biases): no config.json "
                     "names their bits and group size"]
