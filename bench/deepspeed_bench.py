"""Side-by-side benchmark of DeepSpeed ZeRO consolidation (issue 16).

    .venv/bin/python bench/deepspeed_bench.py [--rounds 3] [--workdir DIR]

Writes a ZeRO stage 3 save with DeepSpeed itself (2 CPU ranks on gloo, a
model of 16 linear layers, 64 M parameters, Adam), then measures in one run
`ckptfs export SAVE model.safetensors` against the `zero_to_fp32.py` the
save carries (`--safe_serialization`), which writes the same tensors:
seconds and peak RSS of each process. Prints Markdown (docs/benchmarks.md),
also kept in bench/out/deepspeed.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from tools import median, run

CKPTFS = [sys.executable, "-m", "ckptfs"]
LAYERS, WIDTH = 16, 2048


def _rank(rank: int, world: int, out: str, port: str) -> None:
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    config = {"train_batch_size": world, "zero_optimization": {"stage": 3}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters()), config=config)
    engine.backward(engine(torch.randn(1, WIDTH)).square().mean())
    engine.step()
    engine.save_checkpoint(out, tag="global_step1")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def write_save(path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    mp.spawn(_rank, args=(2, str(path), port), nprocs=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-deepspeed-"))
    work.mkdir(parents=True, exist_ok=True)
    save = work / "zero3"
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        if not (save / "latest").exists():
            write_save(save)
        size = sum(f.stat().st_size for f in save.rglob("*") if f.is_file())
        outputs = work / "outputs"
        contenders = {
            "`ckptfs export`": lambda o: run(*CKPTFS, "export", save, o / "model.safetensors"),
            "`zero_to_fp32.py --safe_serialization`": lambda o: run(
                sys.executable, save / "zero_to_fp32.py", save, o / "ref", "--safe_serialization"),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        run("cat", *sorted(f for f in save.rglob("*") if f.is_file()))  # warm: both read the same bytes
        for _ in range(args.rounds):
            for name, contender in contenders.items():
                shutil.rmtree(outputs, ignore_errors=True)
                outputs.mkdir()
                results[name].append(contender(outputs))
        shutil.rmtree(outputs, ignore_errors=True)
        ref = "`zero_to_fp32.py --safe_serialization`"
        ref_seconds, ref_rss = median(s for s, _ in results[ref]), median(r for _, r in results[ref])
        out(f"## DeepSpeed ZeRO (`bench/deepspeed_bench.py`, {time.strftime('%Y-%m-%d %H:%M')})")
        out()
        out(f"### Consolidating a ZeRO stage 3 save of {LAYERS * (WIDTH * WIDTH + WIDTH) / 1e6:.0f} M float32 "
            f"parameters (2 ranks, {size / 2**30:.2f} GiB with Adam's states) into one safetensors file")
        out()
        out("| | s | ÷ zero_to_fp32 | peak RSS, MiB | ÷ zero_to_fp32 |")
        out("| --- | --- | --- | --- | --- |")
        for name, values in results.items():
            seconds, rss = median(s for s, _ in values), median(r for _, r in values)
            out(f"| {name} | {seconds:.2f} | {seconds / ref_seconds:.2f}x | {rss:.0f} | {rss / ref_rss:.2f}x |")
        out()
        out(f"Medians of {args.rounds} interleaved rounds, page cache warm, outputs on the same disk; RSS is each "
            "process's peak (`wait4`). Both write the same tensors (tests/test_deepspeed.py checks the bytes).")
        out()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results_dir = Path(__file__).resolve().parent / "out"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "deepspeed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
