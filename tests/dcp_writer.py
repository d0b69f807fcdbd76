"""Writes real multi-rank distributed checkpoints for the tests: spawned CPU
ranks on gloo, DTensors placed as asked, saved with torch.distributed.checkpoint.

    python -m tests.dcp_writer OUT WORLD_SIZE
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh


def reference(world_size: int) -> dict[str, torch.Tensor]:
    """The full tensors every rank distributes (the same on every rank)."""
    gen = torch.Generator().manual_seed(world_size)
    return {
        "rows": torch.randn(10, 7, generator=gen),  # 10 rows over 3 ranks: uneven
        "cols": torch.randn(5, 11, generator=gen),
        "cols_bf16": torch.randn(4, 9, generator=gen).to(torch.bfloat16),
        "replicated": torch.arange(6, dtype=torch.int64),
        "layer.0.weight": torch.randn(8, 3, 2, generator=gen),
    }


PLACEMENTS = {"rows": Shard(0), "cols": Shard(1), "cols_bf16": Shard(1), "replicated": Replicate(), "layer.0.weight": Shard(2)}


def _rank(rank: int, world_size: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    state = {k: distribute_tensor(v, mesh, [PLACEMENTS[k]]) for k, v in reference(world_size).items()}
    state["step"] = 7
    dcp.save(state, checkpoint_id=out)
    dist.destroy_process_group()


def write(out: str, world_size: int, port: int) -> None:
    mp.start_processes(_rank, args=(world_size, out, str(port)), nprocs=world_size, start_method="spawn", join=True)


if __name__ == "__main__":
    write(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 29512)
