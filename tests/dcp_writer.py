"""Writes real multi-rank distributed checkpoints for the tests: spawned CPU
ranks on gloo, DTensors placed as asked, saved with torch.distributed.checkpoint.

    python -m tests.dcp_writer OUT WORLD_SIZE [PORT]

OUT/<variant> for each of VARIANTS, and OUT/fsdp2: a model wrapped in FSDP2
`fully_shard`, trained two steps with AdamW, saved from `get_state_dict`,
with OUT/fsdp2.ref.pt holding the full model and optimizer state.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint._extension import ZStandard
from torch.distributed.checkpoint.filesystem import SerializationFormat
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

#: subfolder -> how it is saved
VARIANTS = {
    "plain": {},
    "zstd": {"storage_writer": lambda out: dcp.FileSystemWriter(out, _extensions=[ZStandard()])},
    "safetensors": {
        "storage_writer": lambda out: dcp.FileSystemWriter(out, serialization_format=SerializationFormat.SAFETENSORS)
    },
    "per_rank_metadata": {"use_collectives": False},  # __N.metadata, one per rank
}


def reference(world_size: int) -> dict[str, torch.Tensor]:
    """The full tensors every rank distributes (the same on every rank)."""
    gen = torch.Generator().manual_seed(world_size)
    return {
        "rows": torch.randn(10, 7, generator=gen),  # 10 rows over 3 ranks: uneven
        "cols": torch.randn(5, 11, generator=gen),
        "cols_bf16": torch.randn(4, 9, generator=gen).to(torch.bfloat16),
        "replicated": torch.arange(6, dtype=torch.int64),
        "layer.0.weight": torch.randn(8, 3, 2, generator=gen),
        "wide_cols": torch.randn(40, 600, generator=gen),  # 1,200-byte chunk rows for 2 ranks: read row by row
    }


PLACEMENTS = {
    "rows": Shard(0), "cols": Shard(1), "cols_bf16": Shard(1), "replicated": Replicate(), "layer.0.weight": Shard(2),
    "wide_cols": Shard(1),
}


def _save(state: dict, out: str, how: dict) -> None:
    how = dict(how)
    writer = how.pop("storage_writer", None)
    if writer is not None:
        how["storage_writer"] = writer(out)
    else:
        how["checkpoint_id"] = out
    dcp.save(state, **how)


def _fsdp2(out: str, rank: int, mesh) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.Linear(20, 7), torch.nn.LayerNorm(7))
    fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randn(4, 12)).sum().backward()
        optim.step()
        optim.zero_grad()
    model_state, optim_state = get_state_dict(model, optim)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=f"{out}/fsdp2")
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_full, optim_full = get_state_dict(model, optim, options=full)
    if rank == 0:
        torch.save({"model": model_full, "optim": optim_full}, f"{out}/fsdp2.ref.pt")


def _rank(rank: int, world_size: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    state = {k: distribute_tensor(v, mesh, [PLACEMENTS[k]]) for k, v in reference(world_size).items()}
    state["step"] = 7
    for variant, how in VARIANTS.items():
        _save(state, f"{out}/{variant}", how)
    _fsdp2(out, rank, mesh)
    dist.barrier()
    # Every file is written and closed. Leave without gloo's teardown, which
    # under load (3 ranks on 2 cores) now and then aborts a rank with
    # "terminate called without an active exception".
    os._exit(0)


def write(out: str, world_size: int, port: int) -> None:
    mp.start_processes(_rank, args=(world_size, out, str(port)), nprocs=world_size, start_method="spawn", join=True)


if __name__ == "__main__":
    write(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 29512)
