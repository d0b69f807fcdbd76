"""GPTQ, AWQ and compressed-tensors weights dequantized on read
(formats/quantized/gptq.py, awq.py, compressed.py, packed.py).

compressed-tensors runs on CPU: its own quantization writes the samples
(apply_quantization_config, calculate_qparams, ModelCompressor's
compress_model and update_config) and its own compressors'
`decompress` is the reference. GPTQModel and AutoAWQ need CUDA to
build, so the samples are packed here as their `pack` functions do,
and the reference is the dequantization formula as they write it, in
torch, on the integers packed:

- GPTQ: GPTQModel gptqmodel/nn_modules/qlinear/__init__.py
  `BaseQuantLinear.dequantize_weight` (AutoGPTQ's
  nn_modules/qlinear/qlinear_cuda_old.py `forward` alike):
  weights = scales[g_idx] * (weight - zeros[g_idx]) in float16, the zeros
  of a v1 ("gptq") checkpoint being the stored ones masked to their
  bits, + 1; the packing is GPTQModel's `pack` (and AutoGPTQ's 3-bit
  loop in qlinear_cuda_old.py `pack`, which spans words).
- AWQ: AutoAWQ awq/utils/packing_utils.py `dequantize_gemm`:
  (iweight - izeros) * scales, each repeated over its group, in float16;
  packed as awq/modules/linear/gemm.py `WQLinear_GEMM.from_linear`
  (order_map [0, 2, 4, 6, 1, 3, 5, 7]).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import ml_dtypes  # noqa: F401  (np.load then knows bfloat16)
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ckptfs.formats.quantized import awq, compressed, gptq
from ckptfs.formats.quantized.base import Stored
from ckptfs.formats.quantized.packed import unpack

from .conftest import run_ckptfs
from .fuzz.targets import MemorySource, stored_tensors
from .quantized_models import dequantized_path, linear_names, logits, tiny_llama, with_quantization

GROUP = 32
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _quantized(weight: torch.Tensor, bits: int, groups_of: torch.Tensor, groups: int, seed: int):
    """Integers, zero points and float16 scales for a (out, in) weight,
    the inputs grouped by `groups_of` (min-max asymmetric, as GPTQ's
    quantizer with sym=False)."""
    maxq = 2 ** bits - 1
    w = weight.float().T  # (in, out), as GPTQ and AWQ hold it
    scales = torch.empty(groups, w.shape[1])
    zeros = torch.empty(groups, w.shape[1], dtype=torch.int32)
    for g in range(groups):
        part = w[groups_of == g]
        low, high = part.amin(0).clamp(max=0), part.amax(0).clamp(min=0)
        scales[g] = ((high - low) / maxq).clamp(min=1e-5)
        zeros[g] = torch.round(-low / scales[g]).int()
    scales = scales.half()
    generator = torch.Generator().manual_seed(seed)
    zeros = torch.where(torch.rand(zeros.shape, generator=generator) < 0.1, 0, zeros)  # some zero points of 0
    q = torch.clamp(torch.round(w / scales[groups_of].float()) + zeros[groups_of], 0, maxq).int()
    return q, zeros, scales


def _pack_columns_gptq(values: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQModel `pack`: each column's values along dim 0, 32 / bits a word, the
    k-th at shift k * bits; 3-bit as AutoGPTQ's loop, values crossing words."""
    v = values.to(torch.int64) & (2 ** bits - 1)
    if bits != 3:
        per = 32 // bits
        packed = torch.zeros(v.shape[0] // per, v.shape[1], dtype=torch.int64)
        for j in range(per):
            packed |= v[j::per] << (bits * j)
        return packed.to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else packed.int()
    packed = torch.zeros(v.shape[0] * 3 // 32, v.shape[1], dtype=torch.int64)
    for row in range(0, packed.shape[0], 3):  # 32 values in 3 words: 10, 1 across, 10, 1 across, 10
        i = row * 32 // 3
        for word, (first, shift) in enumerate(((0, 0), (11, 1), (22, 2))):
            for j in range(10):
                packed[row + word] |= v[i + first + j] << (3 * j + shift)
        packed[row] |= (v[i + 10] << 30) & 0xFFFFFFFF
        packed[row + 1] |= ((v[i + 10] >> 2) & 1) | ((v[i + 21] << 31) & 0xFFFFFFFF)
        packed[row + 2] |= (v[i + 21] >> 1) & 0x3
    return _int32(packed)


def _int32(words: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(words.numpy().astype(np.uint32).view(np.int32))


def gptq_layer(weight: torch.Tensor, bits: int, desc_act: bool, v1: bool, seed: int) -> tuple[dict, torch.Tensor]:
    """A linear layer's GPTQ tensors, and GPTQModel's dequantization of them ((out, in), float16)."""
    inputs = weight.shape[1]
    groups = inputs // GROUP
    order = torch.randperm(inputs, generator=torch.Generator().manual_seed(seed)) if desc_act else torch.arange(inputs)
    g_idx = torch.empty(inputs, dtype=torch.int32)
    g_idx[order] = torch.arange(inputs, dtype=torch.int32) // GROUP
    q, zeros, scales = _quantized(weight, bits, g_idx.long(), groups, seed)
    qzeros = _v1_zeros(zeros, bits) if v1 else _pack_columns_gptq(zeros.T, bits).T.contiguous()
    tensors = {"qweight": _pack_columns_gptq(q, bits), "qzeros": qzeros, "scales": scales, "g_idx": g_idx}
    reference = scales[g_idx.long()] * (q - zeros[g_idx.long()]).half()  # v1 read back exactly, as GPTQModel reads it
    return tensors, reference.T.contiguous()


def _v1_zeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points as GPTQModel writes a v1 ("gptq") checkpoint,
    `convert_gptq_v2_to_v1_format_module`: packed, then one taken from every
    field of each whole int32 word (a zero of 0 borrows from the next field);
    3-bit fields, which cross words, each shifted on its own modulo 8."""
    if bits == 3:
        return _pack_columns_gptq(((zeros - 1) & 7).T, bits).T.contiguous()
    words = _pack_columns_gptq(zeros.T, bits).T.contiguous().numpy().view(np.uint32)
    one_per_field = sum(1 << shift for shift in range(0, 32, bits))
    return torch.from_numpy((words - np.uint32(one_per_field)).view(np.int32))


def awq_layer(weight: torch.Tensor, seed: int) -> tuple[dict, torch.Tensor]:
    """A linear layer's AWQ GEMM tensors, and `dequantize_gemm` of them ((out, in), float16)."""
    inputs = weight.shape[1]
    groups_of = torch.arange(inputs) // GROUP
    q, zeros, scales = _quantized(weight, 4, groups_of, inputs // GROUP, seed)

    def pack(values):
        v = values.to(torch.int64)
        packed = torch.zeros(v.shape[0], v.shape[1] // 8, dtype=torch.int64)
        for col in range(v.shape[1] // 8):
            for i in range(8):
                packed[:, col] |= v[:, col * 8 + AWQ_ORDER[i]] << (i * 4)
        return _int32(packed)

    reference = (q - zeros.repeat_interleave(GROUP, 0)).half() * scales.repeat_interleave(GROUP, 0)
    return {"qweight": pack(q), "qzeros": pack(zeros), "scales": scales}, reference.T.contiguous()


def _packed_model(folder, make, quantization: dict | None) -> dict:
    """A float16 tiny Llama whose linear weights `make` quantizes; the references by weight name."""
    tiny_llama(folder, dtype="float16")
    state = load_file(folder / "model.safetensors")
    references = {}
    for seed, name in enumerate(linear_names(state)):
        if name.startswith("lm_head"):
            continue
        parts, references[name] = make(state.pop(name), seed)
        state.update({name[: -len("weight")] + k: v for k, v in parts.items()})
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    if quantization is not None:
        with_quantization(folder, quantization)
    return references


def _check_reads(mnt, references: dict, scheme: str) -> None:
    for name, want in references.items():
        path = dequantized_path(mnt, name)
        values = np.load(path)
        assert values.dtype == np.float16 and values.shape == tuple(want.shape), name
        assert values.tobytes() == want.numpy().tobytes(), name  # bit for bit
        assert os.getxattr(path, "user.ckptfs.dequantized_from").decode() == scheme


GPTQ_CASES = [(4, True, True), (4, False, False), (8, True, False), (2, False, True), (3, True, True)]


@pytest.mark.parametrize("bits,desc_act,v1", GPTQ_CASES, ids=[f"{b}bit-{'act' if d else 'noact'}-{'v1' if v else 'v2'}"
                                                             for b, d, v in GPTQ_CASES])
def test_gptq_weights_read_as_gptqmodel_dequantizes_them(tmp_path, mount, bits, desc_act, v1):
    config = {"quant_method": "gptq", "bits": bits, "group_size": GROUP, "desc_act": desc_act, "sym": False,
              "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    references = _packed_model(tmp_path / "m", lambda w, s: gptq_layer(w, bits, desc_act, v1, s), config)
    mnt = mount(tmp_path / "m", "-o", "ro")
    _check_reads(mnt, references, f"GPTQ {bits}-bit, group {GROUP}{', act order' if desc_act else ''}")
    assert (mnt / "model/layers/0/mlp/down_proj/qweight.npy").exists()  # the stored tensors stay


def test_gptq_and_awq_without_a_config_are_told_apart_by_their_shapes(tmp_path, mount):
    folder = tmp_path / "bare"
    folder.mkdir()
    torch.manual_seed(3)
    gptq, gptq_want = gptq_layer(torch.randn(64, 96), 4, False, True, 1)
    awq, awq_want = awq_layer(torch.randn(64, 96), 2)
    del gptq["g_idx"]  # groups in order: GPTQ may leave g_idx out
    save_file({**{"a." + k: v for k, v in gptq.items()}, **{"b." + k: v for k, v in awq.items()}}, folder / "w.safetensors")
    mnt = mount(folder / "w.safetensors", "-o", "ro")
    # float32: no config names a dtype; the product rounds to float16 (the scales') first, as the libraries compute it
    assert np.load(mnt / "a/weight/dequantized.npy").tobytes() == gptq_want.float().numpy().tobytes()
    assert np.load(mnt / "b/weight/dequantized.npy").tobytes() == awq_want.float().numpy().tobytes()
    assert os.getxattr(mnt / "b/weight/dequantized.npy", "user.ckptfs.dequantized_from") == b"AWQ 4-bit GEMM, group 32"


def test_awq_gemm_weights_read_as_autoawq_dequantizes_them(tmp_path, mount):
    config = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm", "zero_point": True}
    references = _packed_model(tmp_path / "m", awq_layer, config)
    _check_reads(mount(tmp_path / "m", "-o", "ro"), references, f"AWQ 4-bit GEMM, group {GROUP}")


def _reference_model(folder, references: dict, out):
    """The tiny Llama of `folder` with each quantized weight replaced by its reference values."""
    shutil.copytree(folder, out)
    state = load_file(out / "model.safetensors")
    for name, values in references.items():
        prefix = name[: -len("weight")]
        for key in [k for k in state if k.startswith(prefix) and k[len(prefix):] in ("qweight", "qzeros", "scales", "g_idx")]:
            del state[key]
        state[name] = values
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("scheme", ["gptq", "awq"])
def test_export_dequantize_loads_without_the_library_with_the_references_logits(tmp_path, scheme):
    if scheme == "gptq":
        config = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": True, "sym": True}
        references = _packed_model(tmp_path / "m", lambda w, s: gptq_layer(w, 4, True, True, s), config)
    else:
        config = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm"}
        references = _packed_model(tmp_path / "m", awq_layer, config)
    out = tmp_path / "plain"
    done = run_ckptfs("export", tmp_path / "m", out, "--to", "hf", "--dequantize")
    assert done.returncode == 0, done.stderr
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    exported = load_file(out / "model.safetensors")
    assert not any(n.endswith(("qweight", "qzeros", "scales", "g_idx")) for n in exported)
    for name, want in references.items():
        assert torch.equal(exported[name], want), name
    # the same weights in the same dtype: the same logits, bit for bit
    assert torch.equal(logits(out), logits(_reference_model(tmp_path / "m", references, tmp_path / "ref")))


def test_the_bit_stream_reads_any_run_of_3_bit_values():
    values = np.random.default_rng(0).integers(0, 8, (96, 5))
    packed = _pack_columns_gptq(torch.from_numpy(values), 3).numpy()  # AutoGPTQ's loop
    assert (unpack(packed, 3, 0, 96, 0) == values).all()
    for first, last in ((1, 40), (21, 22), (10, 11), (63, 96)):
        w0, w1 = first * 3 // 32, -(-last * 3 // 32)
        got = unpack(packed[w0:w1], 3, first * 3 - w0 * 32, last - first, 0)
        assert (got == values[first:last]).all(), (first, last)


def _observed(weight: torch.Tensor, args, shape: torch.Size):
    """Min and max of each part a scale covers (llm-compressor's min-max observer's reduction)."""
    w = weight.float()
    if args.strategy == "group":
        w = w.unflatten(-1, (-1, args.group_size))
        return w.amin(-1), w.amax(-1)
    if args.strategy == "channel":
        return w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    if args.strategy == "block":
        r, c = args.block_structure
        w = w.reshape(w.shape[0] // r, r, w.shape[1] // c, c)
        return w.amin((1, 3)), w.amax((1, 3))
    return w.amin().reshape(shape), w.amax().reshape(shape)


def compressed_model(folder, format_name: str, arguments: dict) -> dict:
    """A tiny Llama quantized and saved by compressed-tensors; its own
    decompression of each weight, in the model's dtype, by weight name."""
    from compressed_tensors.compressors import BaseCompressor, ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    tiny_llama(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    args = QuantizationArgs(**arguments)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for _, module in model.named_modules():
        if hasattr(module, "weight_scale"):
            scale, zero = calculate_qparams(*_observed(module.weight.data, args, module.weight_scale.shape), args)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=format_name)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)
    state = load_file(folder / "model.safetensors")
    decompressor = BaseCompressor.load_from_registry(format_name)
    references = {}
    for prefix in sorted({n[: -len("weight_scale")] for n in state if n.endswith(".weight_scale")}):
        parts = {n[len(prefix):]: v for n, v in state.items() if n.startswith(prefix) and "." not in n[len(prefix):]}
        references[prefix + "weight"] = decompressor.decompress(parts, scheme)["weight"].to(torch.bfloat16)
    return references


def _case(format_name: str, kind: str, symmetric: bool, strategy: str, detail: str, **extra) -> tuple:
    """(format, the weights' QuantizationArgs, the scheme a mount names) of one sample."""
    arguments = {"num_bits": 8 if kind != "int4" else 4, "type": "float" if kind.startswith("float") else "int",
                 "symmetric": symmetric, "strategy": strategy, **extra}
    return format_name, arguments, f"compressed-tensors {format_name} {kind}, {detail}"


COMPRESSED_CASES = {
    "int4-group-asym": _case("pack-quantized", "int4", False, "group", "group 32", group_size=GROUP),
    "int4-channel-sym": _case("pack-quantized", "int4", True, "channel", "channel"),
    "int8-channel-asym": _case("pack-quantized", "int8", False, "channel", "channel"),
    "naive-int8-group-asym": _case("naive-quantized", "int8", False, "group", "group 32", group_size=GROUP),
    "fp8-channel": _case("float-quantized", "float8_e4m3fn", True, "channel", "channel"),
    "fp8-tensor": _case("float-quantized", "float8_e4m3fn", True, "tensor", "tensor"),
    "fp8-block": _case("float-quantized", "float8_e4m3fn", True, "block", "blocks of 32x32", block_structure=[32, 32]),
}


@pytest.mark.parametrize("case", list(COMPRESSED_CASES))
def test_compressed_tensors_weights_read_as_its_decompressor_makes_them(tmp_path, mount, case):
    format_name, arguments, scheme = COMPRESSED_CASES[case]
    references = compressed_model(tmp_path / "m", format_name, arguments)
    assert len(references) == 14
    mnt = mount(tmp_path / "m", "-o", "ro")
    for name, want in references.items():
        path = dequantized_path(mnt, name)
        values = np.load(path)
        assert values.shape == tuple(want.shape) and values.tobytes() == want.view(torch.int16).numpy().tobytes(), name
        assert os.getxattr(path, "user.ckptfs.dequantized_from").decode() == scheme
    assert not dequantized_path(mnt, "lm_head.weight").exists()


def test_compressed_tensors_export_has_transformers_own_logits_and_ignore_is_respected(tmp_path, mount):
    from transformers import CompressedTensorsConfig

    format_name, arguments, _ = COMPRESSED_CASES["int4-group-asym"]
    references = compressed_model(tmp_path / "m", format_name, arguments)
    out = tmp_path / "plain"
    done = run_ckptfs("export", tmp_path / "m", out, "--to", "hf", "--dequantize")
    assert done.returncode == 0, done.stderr
    exported = load_file(out / "model.safetensors")
    assert all(torch.equal(exported[n].view(torch.int16), w.view(torch.int16)) for n, w in references.items())
    assert not any("weight_packed" in n or "weight_scale" in n for n in exported)
    with warnings.catch_warnings():  # transformers warns that the folder's own config is used, as it should be
        warnings.simplefilter("ignore")
        want = logits(tmp_path / "m", quantization_config=CompressedTensorsConfig(dequantize=True))
    assert torch.equal(logits(out), want)
    # a module the config's ignore names (by a pattern) stays as stored
    config = json.loads((tmp_path / "m/config.json").read_text())
    config["quantization_config"]["ignore"] += [r"re:.*\.0\.mlp\.down_proj$", "re:(a+)+$"]
    (tmp_path / "m/config.json").write_text(json.dumps(config))
    mnt = mount(tmp_path / "m", "-o", "ro")
    assert not dequantized_path(mnt, "model.layers.0.mlp.down_proj.weight").exists()
    assert dequantized_path(mnt, "model.layers.1.mlp.down_proj.weight").exists()
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    assert any(n.startswith("module pattern 're:(a+)+$' not used: a repeat of a repeat") for n in notes)


class CountingSource(MemorySource):
    """Bytes in memory that count what is read of them."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.read_bytes = 0

    def pread(self, offset: int, length: int) -> bytes:
        self.read_bytes += length
        return super().pread(offset, length)


def _stored(tensors: dict[str, torch.Tensor], config: dict | None) -> tuple[Stored, CountingSource]:
    """The tensors as one counting source, as a mount's Stored holds them."""
    records = stored_tensors({n: t.numpy() for n, t in tensors.items()}, CountingSource)
    source = next(iter(records.values())).data.source
    return Stored(records, {"dtype": "float16", "quantization_config": config} if config else None), source


def _few_rows_read_little(find, stored: Stored, source: CountingSource, want: torch.Tensor, stored_bytes: int) -> None:
    (weight,), notes = find(stored)
    assert notes == []
    source.read_bytes = 0
    rows = weight.rows(1000, 1004)
    assert rows.tobytes() == want[1000:1004].numpy().tobytes()
    # the columns or rows that hold them (and g_idx, 4 bytes a column, read again for each block), never the whole
    assert source.read_bytes < stored_bytes // 100, source.read_bytes


def test_a_read_of_a_few_rows_of_a_big_weight_reads_only_their_parts():
    torch.manual_seed(0)
    weight = torch.randn(2048, 1024)  # 4-bit: a qweight of 1 MiB
    parts, want = gptq_layer(weight, 4, True, True, 0)
    stored, source = _stored({"l." + k: v for k, v in parts.items()}, {"quant_method": "gptq", "bits": 4, "group_size": GROUP})
    _few_rows_read_little(gptq.find, stored, source, want, source.size)
    parts, want = awq_layer(weight, 0)
    stored, source = _stored({"l." + k: v for k, v in parts.items()}, {"quant_method": "awq", "group_size": GROUP})
    _few_rows_read_little(awq.find, stored, source, want, source.size)
    q = torch.randint(-128, 128, (2048, 1024), dtype=torch.int8)
    scale = torch.rand(2048, 1024 // GROUP).half()
    packed = {"l.weight_packed": q.view(torch.int32), "l.weight_scale": scale, "l.weight_shape": torch.tensor([2048, 1024])}
    config = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {
        "targets": ["Linear"], "weights": {"num_bits": 8, "strategy": "group", "group_size": GROUP}}}}
    stored, source = _stored(packed, config)
    # pack-quantized 8-bit: four values a word, each stored + 128; q x scale in float16
    values = (q.view(torch.uint8).int() - 128).half() * scale.repeat_interleave(GROUP, 1)
    _few_rows_read_little(compressed.find, stored, source, values, source.size)


def _hostile_gptq(folder, bits_in_config: int = 4) -> None:
    """A GPTQ model whose layers are each wrong in their own way."""
    _packed_model(folder, lambda w, s: gptq_layer(w, 4, False, True, s),
                  {"quant_method": "gptq", "bits": bits_in_config, "group_size": GROUP})
    state = load_file(folder / "model.safetensors")
    layer = "model.layers.0."
    state[layer + "mlp.down_proj.scales"] = state[layer + "mlp.down_proj.scales"][:2].contiguous()  # 5 groups served
    state[layer + "mlp.down_proj.qzeros"] = state[layer + "mlp.down_proj.qzeros"][:2].contiguous()
    del state[layer + "mlp.down_proj.g_idx"]  # groups in order, by the config's group size
    state[layer + "mlp.up_proj.g_idx"][7] = 99  # out of range
    state[layer + "self_attn.q_proj.qweight"] = state[layer + "self_attn.q_proj.qweight"][:, :-1].contiguous()
    state[layer + "self_attn.k_proj.g_idx"][0] = -1
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


HOSTILE_NOTES = {
    "model.layers.0.mlp.down_proj.weight": "a group size of 32 puts a column in group 4, and the scales hold 2 groups",
    "model.layers.0.mlp.up_proj.weight": "model.layers.0.mlp.up_proj.g_idx puts a column in group 99, and the scales hold 2 groups",
    "model.layers.0.self_attn.q_proj.weight": "model.layers.0.self_attn.q_proj.qweight of shape [8, 63] does not pack "
                                              "4-bit values of 64 outputs (its scales' width)",
    "model.layers.0.self_attn.k_proj.weight": "model.layers.0.self_attn.k_proj.g_idx puts a column in group -1, and "
                                              "the scales hold 2 groups",
}


def test_hostile_layers_are_each_a_note_and_the_rest_of_the_model_reads(tmp_path, mount):
    _hostile_gptq(tmp_path / "m")
    mnt = mount(tmp_path / "m", "-o", "ro")
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    for name, why in HOSTILE_NOTES.items():
        assert f"{name}: not dequantized: {why}" in notes
        assert not dequantized_path(mnt, name).exists()
    assert np.load(dequantized_path(mnt, "model.layers.1.mlp.down_proj.weight")).shape == (64, 160)
    assert np.load(mnt / "model/layers/0/mlp/up_proj/g_idx.npy")[7] == 99  # stored tensors read as stored
    done = run_ckptfs("export", tmp_path / "m", tmp_path / "out", "--to", "hf", "--dequantize")
    assert done.returncode == 1 and not (tmp_path / "out").exists()  # no plain model with layers left packed
    assert "a plain model needs every quantized weight's values" in done.stderr
    done = run_ckptfs("export", tmp_path / "m", tmp_path / "out", "--to", "hf", "--quantized", "raw")
    assert done.returncode == 0, done.stderr  # as stored, the bad layers too
    assert "model.layers.0.mlp.up_proj.qweight" in load_file(tmp_path / "out/model.safetensors")


@pytest.mark.parametrize("config,why", [
    ({"quant_method": "gptq", "bits": 5, "group_size": GROUP}, "5 bits: values of 2, 3, 4, 8 bits are dequantized"),
    ({"quant_method": "gptq", "bits": 4, "group_size": GROUP, "checkpoint_format": "marlin"},
     "checkpoint format 'marlin': ckptfs dequantizes 'gptq' and 'gptq_v2'"),
    ({"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemv"},
     "AWQ version 'gemv': ckptfs dequantizes the GEMM layout only"),
    ({"quant_method": "gptq", "bits": "4", "group_size": GROUP}, "'4' bits: values of 2, 3, 4, 8 bits are dequantized"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "group_size 0"),
])
def test_a_config_that_cannot_be_dequantized_is_a_note_per_weight(tmp_path, mount, config, why):
    make = awq_layer if config["quant_method"] == "awq" else (lambda w, s: gptq_layer(w, 4, False, True, s))
    _packed_model(tmp_path / "m", make, config)
    mnt = mount(tmp_path / "m", "-o", "ro")
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    assert f"model.layers.0.mlp.down_proj.weight: not dequantized: {why}" in notes
    assert not list(mnt.rglob("dequantized.npy"))


def test_compressed_tensors_parts_that_do_not_fit_are_each_a_note(tmp_path, mount):
    format_name, arguments, _ = COMPRESSED_CASES["int4-group-asym"]
    compressed_model(tmp_path / "m", format_name, arguments)
    state = load_file(tmp_path / "m/model.safetensors")
    layer = "model.layers.1.mlp."
    state[layer + "gate_proj.weight_scale"] = state[layer + "gate_proj.weight_scale"][:, :1].contiguous()
    state[layer + "up_proj.weight_shape"] = torch.tensor([160, 1 << 40])  # believed, an index of 8 TiB
    state[layer + "down_proj.weight_shape"] = torch.tensor([64, 160, 1])
    save_file(state, tmp_path / "m/model.safetensors", metadata={"format": "pt"})
    notes = yaml.safe_load((mount(tmp_path / "m", "-o", "ro") / ".ckptfs/info.yaml").read_text())["notes"]
    assert {n for n in notes if n.startswith(layer)} == {
        f"{layer}gate_proj.weight: not dequantized: {layer}gate_proj.weight_scale of shape [160, 1] does not cover "
        "a weight of [160, 64] in blocks of [1, 32]",
        f"{layer}up_proj.weight: not dequantized: {layer}up_proj.weight_packed of shape [160, 8] does not pack "
        "[160, 1099511627776] values of 4 bits",
        f"{layer}down_proj.weight: not dequantized: no weight_shape of two numbers beside its weight_packed"}


def test_a_pattern_of_many_open_repeats_is_refused_before_it_can_backtrack():
    """`.*` k times then a character no name has takes a name's length to the
    k-th power of steps (10 of them: minutes on a 40-character name)."""
    import time

    from ckptfs.formats.quantized.patterns import Patterns

    notes: list[str] = []
    patterns = Patterns(["re:" + ".*" * 10 + "#", "re:.*mlp.*down_proj", r"re:model\.layers\.\d+\..*"], notes)
    started = time.monotonic()
    assert patterns.matches("model.layers.3.mlp.down_proj") and not patterns.matches("x" * 10_000)
    assert time.monotonic() - started < 1
    assert notes == ["module pattern 're:.*.*.*.*.*.*.*.*.*.*#' not used: more than 2 open-ended repeats could "
                     "backtrack for a name's length to their number's power"]
