"""Tiny Hugging Face models for the quantized-weights tests: a plain Llama
written by transformers on CPU, which each scheme's test quantizes with
its own library (or, where that library needs a GPU to quantize, with the
layout its source defines), and what a dequantized model computes."""

from __future__ import annotations

import json
from pathlib import Path

#: every linear layer of the tiny Llama, whose weights the schemes quantize
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def tiny_llama(folder: Path, dtype: str = "bfloat16", hidden: int = 64, intermediate: int = 160,
               layers: int = 2, seed: int = 0) -> Path:
    """A plain LlamaForCausalLM of a few hundred KB, saved as transformers saves it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    return folder


def with_quantization(folder: Path, quantization_config: dict) -> None:
    """Add `quantization_config` to the folder's config.json, as save_pretrained writes it."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"] = quantization_config
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def logits(model_folder, **kwargs):
    """The logits a model loaded from `model_folder` gives on a fixed input."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_folder, **kwargs)
    with torch.no_grad():
        return model(torch.arange(12).reshape(1, 12) % 128).logits


def linear_names(state: dict) -> list[str]:
    return sorted(n for n in state if n.endswith(LINEAR_SUFFIXES))


def dequantized_path(mnt: Path, weight_name: str) -> Path:
    """Where a mount shows a quantized weight's values."""
    return mnt.joinpath(*weight_name.split(".")) / "dequantized.npy"
