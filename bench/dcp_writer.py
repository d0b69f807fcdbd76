"""Writes the distributed checkpoints bench/run.py measures: spawned gloo
ranks on CPU saving DTensors with torch.distributed.checkpoint.

    python bench/dcp_writer.py OUT WORLD_SIZE KIND   (KIND: many | big | gib)
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh


def _state(kind: str, mesh) -> dict:
    gen = torch.Generator().manual_seed(0)
    if kind == "many":  # 1,000 row-sharded tensors
        full = {f"model.layers.{i // 10}.block{i % 10}.weight": torch.randn(64, 16, generator=gen) for i in range(1000)}
        return {name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in full.items()}
    if kind == "gib":  # 1 GiB in 8 tensors of 128 MiB, sharded by rows and by columns in turn
        full = {f"model.layers.{i}.weight": torch.randn(1 << 15, 1024, generator=gen) for i in range(8)}
        return {name: distribute_tensor(t, mesh, [Shard(i % 2)]) for i, (name, t) in enumerate(full.items())}
    rows = torch.randn(1 << 16, 1024, generator=gen)  # 256 MiB each
    cols = torch.randn(1 << 16, 1024, generator=gen)
    return {"rows": distribute_tensor(rows, mesh, [Shard(0)]), "cols": distribute_tensor(cols, mesh, [Shard(1)])}


def _rank(rank: int, world_size: int, out: str, kind: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    dcp.save(_state(kind, mesh), checkpoint_id=out)
    dist.barrier()
    os._exit(0)  # written and closed; gloo's teardown now and then aborts a rank under load (tests/dcp_writer.py)


if __name__ == "__main__":
    out, world_size, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    port = sys.argv[4] if len(sys.argv) > 4 else "29731"
    mp.start_processes(_rank, args=(world_size, out, kind, port), nprocs=world_size, start_method="spawn", join=True)
