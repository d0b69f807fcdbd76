"""Hostile quantized weights of bitsandbytes and MLX (formats/quantized/bnb.py,
mlx.py): a quant state that claims a weight of 2^80 values or nests its
JSON past any parser's depth, MLX bits and groups that do not fit. Each
is served: the weight's stored tensors as they are, no dequantized.npy for
it, a note saying why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from . import Case

STATE = "w.weight.quant_state.bitsandbytes__nf4"


def _bnb(tmp_path: Path, quant_state: bytes) -> Path:
    """A safetensors file of one 4-bit weight of 8 x 64 as bitsandbytes lays it out, with `quant_state` as its JSON."""
    path = tmp_path / "model.safetensors"
    save_file({"w.weight": np.zeros((256, 1), np.uint8), "w.weight.absmax": np.ones(8, np.float32),
               "w.weight.quant_map": np.linspace(-1, 1, 16, dtype=np.float32),
               STATE: np.frombuffer(quant_state, np.uint8).copy()}, str(path))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    return path


def _huge_shape(tmp_path: Path) -> Path:
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1 << 40, 1 << 40]}
    return _bnb(tmp_path, json.dumps(state).encode())


def _deep_json(tmp_path: Path) -> Path:
    return _bnb(tmp_path, b"[" * 2000 + b"]" * 2000)


def _mlx(tmp_path: Path) -> Path:
    """Three MLX weights of 8 x 128 in 4 bits: one with a group too few, one said to be 7 bits, one fine."""
    path = tmp_path / "mlx.safetensors"
    arrays = {}
    for name in ("short", "seven", "fine"):
        arrays[f"{name}.weight"] = np.zeros((8, 16), np.uint32)
        arrays[f"{name}.scales"] = np.ones((8, 2 if name != "short" else 1), np.float16)
        arrays[f"{name}.biases"] = np.zeros_like(arrays[f"{name}.scales"])
    save_file(arrays, str(path))
    quantization = {"group_size": 64, "bits": 4, "seven": {"group_size": 64, "bits": 7}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization": quantization}))
    return path


def _only_the_fine_weight_is_dequantized(mnt: Path, source: Path) -> None:
    assert [p.parent.parent.name for p in mnt.rglob("dequantized.npy")] == (["fine"] if "mlx" in source.name else [])
    assert np.load(next(mnt.rglob("weight.npy"))).size  # the stored tensors read as ever


CASES = {
    "a bitsandbytes quant state that claims a weight of 2^80 values": Case(
        _huge_shape, "served", "not dequantized", check=_only_the_fine_weight_is_dequantized),
    "a bitsandbytes quant state nested 2000 levels deep": Case(
        _deep_json, "served", "its quant state is not JSON", check=_only_the_fine_weight_is_dequantized),
    "MLX weights of 7 bits and of scales a group short": Case(
        _mlx, "served", "not dequantized", check=_only_the_fine_weight_is_dequantized),
}
