"""bitsandbytes weights dequantized on read (formats/quantized/bnb.py).
The models are quantized by transformers with `BitsAndBytesConfig` on CPU
and written by its `save_pretrained`; the reference is bitsandbytes
itself: `dequantize_4bit` of `QuantState.from_dict` of the stored tensors
(its CPU kernels) for 4-bit, and `int8_vectorwise_dequant` (weight x SCB /
127 in float32) cast to the model's dtype for 8-bit. Every value is
compared bit for bit."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes  # noqa: F401 (np.load of bfloat16 values)
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ckptfs.formats.quantized import bnb
from ckptfs.formats.quantized.base import QuantizationError, Stored
from ckptfs.formats.safetensors import expand
from ckptfs.sources.base import FileSource

from .conftest import run_ckptfs
from .quantized_models import dequantized_path, linear_names, logits, tiny_llama

#: (folder, BitsAndBytesConfig arguments, the dtype the model is loaded in)
VARIANTS = {
    "nf4-double": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                        bnb_4bit_compute_dtype=torch.bfloat16), torch.bfloat16),
    "nf4": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"), torch.float32),
    "fp4-double": (dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True), torch.float16),
    "fp4": (dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"), torch.bfloat16),
    "int8": (dict(load_in_8bit=True), torch.bfloat16),
}
SCHEMES = {
    "nf4-double": "bitsandbytes nf4, blocks of 64, double quantized",
    "nf4": "bitsandbytes nf4, blocks of 64",
    "fp4-double": "bitsandbytes fp4, blocks of 64, double quantized",
    "fp4": "bitsandbytes fp4, blocks of 64",
    "int8": "bitsandbytes int8, a scale per row",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each variant of a tiny Llama as transformers quantizes it with bitsandbytes on CPU and saves it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    root = tmp_path_factory.mktemp("bnb")
    plain = tiny_llama(root / "plain")
    folders = {}
    for variant, (arguments, dtype) in VARIANTS.items():
        model = AutoModelForCausalLM.from_pretrained(plain, dtype=dtype, device_map="cpu",
                                                     quantization_config=BitsAndBytesConfig(**arguments))
        model.save_pretrained(root / variant)
        folders[variant] = root / variant
    return folders


def reference(folder) -> dict[str, torch.Tensor]:
    """Each quantized weight of a saved model as bitsandbytes dequantizes it, in the dtype the model computes in."""
    import bitsandbytes.functional as F

    stored = load_file(folder / "model.safetensors")
    dtype = getattr(torch, json.loads((folder / "config.json").read_text())["dtype"])
    values = {}
    for name in linear_names(stored):
        if name[: -len("weight")] + "SCB" in stored:
            values[name] = F.int8_vectorwise_dequant(stored[name], stored[name[: -len("weight")] + "SCB"]).to(dtype)
        else:
            state = {k[len(name) + 1:]: v for k, v in stored.items() if k.startswith(name + ".")}
            values[name] = _dequantize_4bit(stored[name], F.QuantState.from_dict(state, torch.device("cpu")))
    return values


def _dequantize_4bit(packed: torch.Tensor, state) -> torch.Tensor:
    """`F.dequantize_4bit` through bitsandbytes's device-independent kernel
    (blocks over the flat tensor, as its CUDA kernel places them), not its
    CPU one: on a CPU with AVX-512, bitsandbytes 0.50's C++ CPU kernel
    places blocks row by row and gives other values where a row is not a
    whole number of blocks (its own Linear4bit forward refuses such a
    weight on that CPU: `_convert_weight_packed_for_cpu`). Its fp4 table
    writes the code 0b1000 as +0 (the integer `-0`), where the CUDA kernel
    (dDequantizeFP4Tree) and the CPU one give -0: -0 here too."""
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = state.absmax
    if state.nested:  # as F.dequantize_4bit does
        absmax = (F.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    code = _get_4bit_code(state.quant_type, packed.device).clone()
    if state.quant_type == "fp4":
        code[0b1000] = -0.0
    return _dequantize_4bit_compute(packed.view(torch.uint8).reshape(-1), absmax, code, state.blocksize, state.shape,
                                    state.dtype)


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_weight_reads_as_bitsandbytes_dequantizes_it(models, variant, mount):
    folder = models[variant]
    want = reference(folder)
    stored = load_file(folder / "model.safetensors")
    mnt = mount(folder, "-o", "ro")
    assert len(want) == 14
    for name, values in want.items():
        path = dequantized_path(mnt, name)
        got = np.load(path)
        assert got.shape == tuple(values.shape) and got.dtype.itemsize == values.element_size(), name
        assert got.tobytes() == _bits(values), name  # bit for bit
        assert os.getxattr(path, "user.ckptfs.dequantized_from").decode() == SCHEMES[variant]
        # the stored tensors stay, as they are
        assert np.load(mnt.joinpath(*name.split(".")[:-1]) / "weight.npy").tobytes() == _bits(stored[name])
    info = json.loads(run_ckptfs("info", folder, "--json").stdout)
    assert info["dequantized_on_read"] == {SCHEMES[variant]: {
        "weights": 14, "parameters": sum(v.numel() for v in want.values())}}
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text()).get("notes") or []
    assert not [n for n in notes if "dequantized" in n]


def test_export_dequantize_loads_without_bitsandbytes_with_the_logits_of_its_dequantized_weights(models, tmp_path):
    folder = models["nf4-double"]
    out = tmp_path / "plain"
    done = run_ckptfs("export", folder, out, "--to", "hf", "--dequantize")
    assert done.returncode == 0, done.stderr
    assert "(14 dequantized)" in done.stderr
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    exported = load_file(out / "model.safetensors")
    assert not [n for n in exported if ".absmax" in n or "quant_" in n or "nested_" in n]
    want = reference(folder)
    assert all(_bits(exported[n]) == _bits(want[n]) for n in want)
    # a model holding bitsandbytes' own dequantized weights, loaded from the plain model the test quantized
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder.parent / "plain")
    model.load_state_dict(want, strict=False)
    with torch.no_grad():
        expected = model(torch.arange(12).reshape(1, 12) % 128).logits
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(loaded, "hf_quantizer", None) is None and not getattr(loaded, "is_quantized", False)
    assert torch.equal(logits(out), expected)  # the same bfloat16 weights: the same logits, exactly


class Counting(Stored):
    """Stored tensors that record each part read."""

    def __init__(self, tensors, config):
        super().__init__(tensors, config)
        self.read: list[tuple[str, int, int]] = []

    def rows(self, name, first, last):
        self.read.append((name, first, last))
        return super().rows(name, first, last)


def test_a_read_of_a_few_rows_reads_only_the_blocks_that_hold_them(models):
    folder = models["nf4-double"]
    _, _, by_name, _ = expand(FileSource(str(folder / "model.safetensors")))
    stored = Counting(by_name, json.loads((folder / "config.json").read_text()))
    weights, notes = bnb.find(stored)
    assert not notes
    name = "model.layers.0.mlp.down_proj.weight"  # 64 x 160: a row is 80 bytes, 2.5 blocks of 64 codes
    weight = next(w for w in weights if w.name == name)
    stored.read.clear()
    rows = weight.rows(10, 13)
    assert stored.read == [(name, 800, 1040), (name + ".absmax", 25, 33)]
    assert rows.tobytes() == _bits(reference(folder)[name][10:13])


def _hostile(folder, tmp_path, edit) -> tuple:
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    state = load_file(out / "model.safetensors")
    edit(state)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _json(text: bytes) -> torch.Tensor:
    return torch.tensor(list(text), dtype=torch.uint8)


def test_a_quant_state_or_scales_that_do_not_fit_leave_only_their_weight_undequantized(models, tmp_path, mount):
    layer = "model.layers.0.self_attn."
    state_key = ".weight.quant_state.bitsandbytes__nf4"

    def edit(state):
        good = json.loads(bytes(state[layer + "q_proj" + state_key].numpy()))
        state[layer + "q_proj" + state_key] = _json(b"{not json")
        state[layer + "k_proj" + state_key] = _json(json.dumps({**good, "pad": "x" * 5000}).encode())
        state[layer + "v_proj" + state_key] = _json(json.dumps({**good, "blocksize": 48}).encode())
        state[layer + "o_proj.weight.absmax"] = state[layer + "o_proj.weight.absmax"][:-1].clone()
        mlp = "model.layers.0.mlp.gate_proj"
        state[mlp + state_key] = _json(b"[" * 2000 + b"]" * 2000)  # deeper than Python's JSON parser goes

    folder = _hostile(models["nf4-double"], tmp_path, edit)
    mnt = mount(folder, "-o", "ro")
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    said = {
        "q_proj": "its quant state is not JSON",
        "k_proj": "its quant state is uint8 of 5",
        "v_proj": "blocksize 48, not one of 32, 64, 128, 256, 512, 1024, 2048, 4096",
        "o_proj": "absmax is uint8[63], not a code for each of its 64 blocks",
    }
    said = {**{layer + m: why for m, why in said.items()}, "model.layers.0.mlp.gate_proj": "its quant state is not JSON"}
    for module, why in said.items():
        name = module + ".weight"
        assert not dequantized_path(mnt, name).exists()
        assert any(n.startswith(f"{name}: not dequantized: {why}") for n in notes), (name, notes)
        assert (mnt.joinpath(*name.split(".")[:-1]) / "weight.npy").exists()  # its stored tensors read as ever
    assert len(list(mnt.rglob("dequantized.npy"))) == 9  # every other weight


def test_an_8bit_weight_whose_scales_do_not_cover_its_rows_or_of_another_layout(models, tmp_path, mount):
    def edit(state):
        state["model.layers.1.mlp.up_proj.SCB"] = state["model.layers.1.mlp.up_proj.SCB"][:-3].clone()
        state["model.layers.1.mlp.down_proj.weight_format"] = torch.tensor(2, dtype=torch.uint8)

    mnt = mount(_hostile(models["int8"], tmp_path, edit), "-o", "ro")
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    assert ("model.layers.1.mlp.up_proj.weight: not dequantized: SCB is float32[157], not float32 for each of "
            "its 160 rows") in notes
    assert ("model.layers.1.mlp.down_proj.weight: not dequantized: its weight_format is not 0, the row-major "
            "layout save_pretrained writes") in notes
    assert len(list(mnt.rglob("dequantized.npy"))) == 12


@pytest.mark.parametrize("data, why", [
    (b"\xff\xfe", "its quant state is not JSON"),
    (b"[1]", "its quant state is not a JSON object"),
    (b'{"quant_type": "nf3"}', "quant_type 'nf3', not nf4 or fp4"),
    (b'{"quant_type": "nf4", "shape": [2, -1]}', "shape [2, -1]: ckptfs dequantizes 2-D weights"),
    (b'{"quant_type": "nf4", "shape": [2, 64], "blocksize": 64, "dtype": "int8"}', "dtype 'int8', not one of"),
    (b'{"quant_type": "nf4", "shape": [2, 64], "blocksize": 1e999}', "blocksize inf, not one of"),
    (b'{"quant_type": "nf4", "shape": [2, 64], "blocksize": 64, "nested_offset": NaN}', "nested_offset nan"),
    (b" " * 4097, "a quant state of 4097 bytes"),
])
def test_the_quant_state_parser_refuses_in_one_line(data, why):
    with pytest.raises(QuantizationError, match="^" + why.replace("[", r"\[").replace("(", r"\(")):
        bnb.quant_state(data)
