"""Side-by-side benchmark of merging a LoRA adapter into its base (issue 29).

    .venv/bin/python bench/adapter_merge.py [--rounds 3] [--workdir DIR]

Writes a Llama-shaped base of about 400 MB (float32, 8 layers, hidden 768,
a 32,000-token vocabulary) with transformers, and a PEFT LoRA adapter of it
(r=16 on every projection, nonzero B). Then, in interleaved rounds, each a
fresh process: `ckptfs export ADAPTER OUT --to hf --base BASE` against
PEFT's way (`from_pretrained` of the base, `PeftModel.from_pretrained`,
`merge_and_unload`, `save_pretrained`): seconds and peak RSS. The two
outputs are compared tensor by tensor. Prints Markdown (docs/benchmarks.md),
also kept in bench/out/adapter_merge.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tools import median, python, run  # bench/ is the script's folder

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent

PEFT_MERGE = """import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
"""


def write_models(folder: Path) -> tuple[Path, Path]:
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                                      num_attention_heads=12, num_key_value_heads=4, vocab_size=32000)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder / "base")
    lora = peft.LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft.get_peft_model(model, lora).save_pretrained(folder / "adapter")
    return folder / "base", folder / "adapter"


def differences(a: Path, b: Path) -> tuple[int, float]:
    """(tensors, the largest absolute difference) between two exports."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        found = {}
        for path in folder.glob("*.safetensors"):
            with safe_open(path, "np") as f:
                found.update({k: f.get_tensor(k) for k in f.keys()})
        return found

    ours, theirs = tensors(a), tensors(b)
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    return len(ours), max(float(abs(ours[k] - theirs[k]).max()) for k in ours)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapter-bench-", dir=args.workdir))
    try:
        base, adapter = write_models(work)
        size = sum(p.stat().st_size for p in base.iterdir()) / 1e6
        times: dict[str, list[tuple[float, float]]] = {"ckptfs": [], "peft": []}
        for k in range(args.rounds):
            for who in times:
                out = work / f"{who}-{k}"
                cmd = ([*CKPTFS, "export", adapter, out, "--to", "hf", "--base", base] if who == "ckptfs"
                       else [*python(PEFT_MERGE), base, adapter, out])
                times[who].append(run(*cmd))
        count, largest = differences(work / "ckptfs-0", work / "peft-0")
        report = table(times, size, count, largest, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "adapter_merge.md").write_text(report)


def table(times: dict, size: float, count: int, largest: float, rounds: int) -> str:
    peft_s = median(t for t, _ in times["peft"])
    rows = [f"| {label} | {median(t for t, _ in times[who]):.2f} | {median(t for t, _ in times[who]) / peft_s:.2f}x "
            f"| {median(r for _, r in times[who]):.0f} |"
            for who, label in (("ckptfs", "`ckptfs export ADAPTER OUT --to hf --base BASE`"),
                               ("peft", "PEFT: `from_pretrained` + `merge_and_unload` + `save_pretrained`"))]
    return "\n".join([
        f"A {size:.0f} MB float32 Llama-shaped base (8 layers, hidden 768, 32,000 tokens) and a LoRA adapter of it "
        "(r=16 on all seven projections); medians of "
        f"{rounds} interleaved rounds, each a fresh process, page cache warm.", "",
        "| | s | ratio | peak RSS (MiB) |", "| --- | --- | --- | --- |", *rows, "",
        f"The two merged models: {count} tensors, largest absolute difference {largest:g}.", ""])


if __name__ == "__main__":
    main()
