"""Writes a tiny Stable Diffusion pipeline with diffusers, on CPU, for the
tests (tests/test_diffusers.py): a few hundred kilobytes, saved as users find
them on the Hub.

    python -m tests.diffusers_writer OUT

OUT is the pipeline's folder, as `save_pretrained` writes it, then:
  - unet/ saved again sharded (`max_shard_size`: shards and their index),
    with an fp16 variant beside them (`diffusion_pytorch_model.fp16.safetensors`);
  - vae/ saved again as torch.save weights (`safe_serialization=False`:
    `diffusion_pytorch_model.bin`), with an fp16 variant of those;
  - text_encoder/ (transformers' CLIPTextModel) as it is: `model.safetensors`;
  - tokenizer/ a CLIP tokenizer of a few words; scheduler/ a DDIMScheduler;
  - model_index.json lists safety_checker and feature_extractor as
    `[null, null]`, components left out.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WORDS = ["a", "photo", "of", "cat", "dog"]


def tokenizer() -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(WORDS)}}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=16)


def pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, layers_per_block=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(WORDS) + 2, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=8, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(), unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=10, steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def main(out: Path) -> None:
    pipe = pipeline()
    pipe.save_pretrained(out)
    (out / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    pipe.unet.save_pretrained(out / "unet", max_shard_size="40KB")
    pipe.unet.to(torch.float16).save_pretrained(out / "unet", variant="fp16")
    (out / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    pipe.vae.save_pretrained(out / "vae", safe_serialization=False)
    pipe.vae.to(torch.float16).save_pretrained(out / "vae", safe_serialization=False, variant="fp16")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
