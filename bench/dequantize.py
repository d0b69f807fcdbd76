"""Dequantized read throughput of quantized Hub checkpoints (issue 29).

    .venv/bin/python bench/dequantize.py [--rounds 3] [--gib 1] [--workdir DIR]

Writes two samples, each dequantizing to `--gib` GiB of values: a GPTQ
model (4-bit, group 128, desc_act: `qweight`, `qzeros`, `scales`,
`g_idx` of 4096 x 4096 layers, float16) and an FP8 one (float8_e4m3fn
4096 x 4096 layers with a 128 x 128 grid of `weight_scale_inv`,
bfloat16, fp8.py's block layout). In one run, for each: `cat` of every
`dequantized.npy` through a read-only mount, against the libraries'
dequantization in torch on CPU in one process, reading the stored
tensors with safetensors included: GPTQModel's `dequantize_weight`
(gptqmodel/nn_modules/qlinear/__init__.py: shifts and masks, then
scales[g_idx] * (weight - zeros[g_idx])) and transformers' FP8
dequantization (integrations/finegrained_fp8.py: each 128 x 128 block
times its scale in float32, to bfloat16). The first layer's values are
checked to be the same bytes both ways. Prints Markdown
(docs/benchmarks.md), also kept in bench/out/dequantize.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent
SIDE = 4096  # each layer's weight is SIDE x SIDE
GROUP = 128
LAYER_BYTES = SIDE * SIDE * 2  # of dequantized float16 or bfloat16 values


def _config(folder: Path, dtype: str, quantization: dict) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": dtype,
                                                    "quantization_config": quantization}))


def write_gptq(folder: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    state = {}
    for n in range(layers):
        prefix = f"model.layers.{n}.mlp.down_proj."
        state[prefix + "qweight"] = torch.randint(-2**31, 2**31 - 1, (SIDE // 8, SIDE), dtype=torch.int32, generator=generator)
        state[prefix + "qzeros"] = torch.randint(-2**31, 2**31 - 1, (SIDE // GROUP, SIDE // 8), dtype=torch.int32, generator=generator)
        state[prefix + "scales"] = (torch.rand(SIDE // GROUP, SIDE, generator=generator) / 100).half()
        g_idx = torch.empty(SIDE, dtype=torch.int32)
        g_idx[torch.randperm(SIDE, generator=generator)] = torch.arange(SIDE, dtype=torch.int32) // GROUP
        state[prefix + "g_idx"] = g_idx
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    _config(folder, "float16", {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": True, "sym": True,
                                "checkpoint_format": "gptq"})


def write_fp8(folder: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    state = {}
    for n in range(layers):
        prefix = f"model.layers.{n}.mlp.down_proj."
        state[prefix + "weight"] = (torch.randn(SIDE, SIDE, generator=generator) * 100).to(torch.float8_e4m3fn)
        state[prefix + "weight_scale_inv"] = torch.rand(SIDE // 128, SIDE // 128, generator=generator) / 100
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    _config(folder, "bfloat16", {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"})


#: the libraries' dequantization of every layer, in one process: prints its seconds, writes the first layer's bytes
REFERENCE = r'''
import sys, time, torch
from safetensors import safe_open
torch.set_num_threads(2)

def gptq(f, p):  # GPTQModel: v1 zeros to v2 (one added to every field of each word), then dequantize_weight, 4-bit
    qweight, qzeros = f.get_tensor(p + "qweight"), f.get_tensor(p + "qzeros") + 0x11111111  # int32: wraps
    scales, g_idx = f.get_tensor(p + "scales"), f.get_tensor(p + "g_idx").long()
    wf = torch.arange(0, 32, 4, dtype=torch.int32)
    zeros = torch.bitwise_and(torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, 8), wf.view(1, 1, 8)), 15)
    zeros = zeros.to(torch.int16).reshape(scales.shape)
    weight = torch.bitwise_and(torch.bitwise_right_shift(qweight.unsqueeze(1).expand(-1, 8, -1), wf.view(1, 8, 1)), 15)
    weight = weight.to(torch.int16).reshape(-1, weight.shape[2])
    return (scales[g_idx] * (weight - zeros[g_idx])).T.contiguous()

def fp8(f, p):  # transformers' FP8 dequantization: blocks of 128 x 128 times their scale, float32, to bfloat16
    w, s = f.get_tensor(p + "weight"), f.get_tensor(p + "weight_scale_inv")
    blocks = w.float().reshape(s.shape[0], 128, s.shape[1], 128) * s[:, None, :, None]
    return blocks.reshape(w.shape).to(torch.bfloat16)

scheme, path, first_out = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
total = 0
with safe_open(path, "pt") as f:
    for n, name in enumerate(sorted({k.rsplit(".", 1)[0] + "." for k in f.keys()}, key=lambda k: int(k.split(".")[2]))):
        values = (gptq if scheme == "gptq" else fp8)(f, name)
        data = values.view(torch.int16).numpy().tobytes()
        total += len(data)
        if n == 0:
            first = data
print(time.perf_counter() - start, total)
open(first_out, "wb").write(first)
'''


def through_mount(folder: Path, mnt: Path) -> tuple[float, int, bytes]:
    """Seconds to `cat` every dequantized.npy of a fresh read-only mount, their values' bytes (NPY headers
    left out), the first layer's values."""
    subprocess.run([*CKPTFS, "mount", "-o", "ro", folder, mnt], check=True, timeout=300)
    try:
        files = sorted(mnt.rglob("dequantized.npy"), key=lambda p: int(p.parts[len(mnt.parts) + 2]))
        start = time.perf_counter()
        subprocess.run(["cat", *files], check=True, stdout=subprocess.DEVNULL, timeout=1800)
        seconds = time.perf_counter() - start
        return seconds, len(files) * LAYER_BYTES, files[0].read_bytes()[-LAYER_BYTES:]
    finally:
        subprocess.run([*CKPTFS, "umount", mnt], timeout=300)


def reference(scheme: str, folder: Path, work: Path) -> tuple[float, int, bytes]:
    first = work / f"{scheme}-first.bin"
    done = subprocess.run([sys.executable, "-c", REFERENCE, scheme, folder / "model.safetensors", first],
                          check=True, capture_output=True, text=True, timeout=1800)
    seconds, total = done.stdout.split()
    return float(seconds), int(total), first.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of dequantized values in each sample")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-dequantize-"))
    work.mkdir(parents=True, exist_ok=True)
    layers = max(1, round(args.gib * 2**30 / LAYER_BYTES))
    samples = {"gptq": (work / "gptq", write_gptq), "fp8": (work / "fp8", write_fp8)}
    for folder, write in samples.values():
        if not folder.exists():
            write(folder, layers)
        subprocess.run(["cat", folder / "model.safetensors"], check=True, stdout=subprocess.DEVNULL)  # warm
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    results = {scheme: ([], []) for scheme in samples}
    for _ in range(args.rounds):
        for scheme, (folder, _) in samples.items():
            seconds, total, first = through_mount(folder, mnt)
            ref_seconds, ref_total, ref_first = reference(scheme, folder, work)
            if first != ref_first or total != ref_total:
                raise SystemExit(f"{scheme}: the mount's values differ from the reference's")
            results[scheme][0].append(total / seconds / 1e9)
            results[scheme][1].append(ref_total / ref_seconds / 1e9)
    print(report(results, samples, layers, args.rounds))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict, samples: dict, layers: int, rounds: int) -> str:
    median = statistics.median
    stored = {s: (folder / "model.safetensors").stat().st_size / 2**30 for s, (folder, _) in samples.items()}
    lines = [f"## Dequantized reads (`bench/dequantize.py`, {time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Two samples of {layers} layers of {SIDE} x {SIDE}, each {layers * LAYER_BYTES / 2**30:.2f} GiB of "
             f"dequantized values: GPTQ 4-bit, group {GROUP}, desc_act ({stored['gptq']:.2f} GiB stored, float16 "
             f"values) and FP8 e4m3 in 128 x 128 blocks ({stored['fp8']:.2f} GiB stored, bfloat16 values).", "",
             "| | GB/s of values | ratio |", "| --- | --- | --- |"]
    names = {"gptq": ("GPTQ", "GPTQModel's `dequantize_weight` formula"), "fp8": ("FP8", "transformers' FP8 dequantization")}
    for scheme, (mounted, referenced) in results.items():
        title, library = names[scheme]
        lines.append(f"| {title}: `cat` of every `dequantized.npy` through a mount | {median(mounted):.3f} | "
                     f"{median(mounted) / median(referenced):.2f}x |")
        lines.append(f"| {title}: {library} in torch, one process (safetensors reads included) | "
                     f"{median(referenced):.3f} | 1.00x |")
    lines += ["", f"Medians of {rounds} interleaved rounds, page cache warm, a fresh mount each round; the first "
              "layer's values are the same bytes both ways."]
    text = "\n".join(lines) + "\n"
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "dequantize.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
