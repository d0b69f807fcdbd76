"""Writes FSDP1 sharded state dicts for the tests: spawned CPU ranks on gloo,
a model wrapped in FSDP1 (`FullyShardedDataParallel`), trained one step
with Adam, each rank's SHARDED_STATE_DICT (ShardedTensors) saved with
torch.save, as older FSDP runs and OLMo's legacy checkpoints did.

    python -m tests.fsdp1_writer OUT WORLD_SIZE PORT

OUT/ranks/rank{N}.pt: {"model", "optim", "column", "step"} of rank N, where
"column" is a ShardedTensor split along its second dimension;
OUT/dcp/: the same sharded state saved with torch.distributed.checkpoint;
OUT/full.pt: the same state with every ShardedTensor gathered whole on rank 0
(`ShardedTensor.gather`).
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _gathered(obj, rank: int):
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(obj, dict):
        return {k: _gathered(v, rank) for k, v in obj.items()}
    if isinstance(obj, ShardedTensor):
        whole = torch.empty(obj.size(), dtype=obj.dtype) if rank == 0 else None
        obj.gather(0, whole)
        return whole
    return obj


def _rank(rank: int, world: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import torch.distributed.checkpoint as dcp
    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardedOptimStateDictConfig, ShardedStateDictConfig, StateDictType

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.ReLU(), torch.nn.Linear(13, 2))
    fsdp = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
    optim = torch.optim.Adam(fsdp.parameters(), lr=0.1)
    fsdp(torch.randn(4, 7, generator=torch.Generator().manual_seed(rank))).square().sum().backward()
    optim.step()

    spec = ChunkShardingSpec(dim=1, placements=[f"rank:{r}/cpu" for r in range(world)])
    column = sharded_tensor.empty(spec, 5, 3 * world + 1)
    for shard in column.local_shards():
        offset = shard.metadata.shard_offsets
        rows, cols = shard.tensor.shape
        shard.tensor.copy_(torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols) + 100 * offset[1])

    with FSDP.state_dict_type(fsdp, StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig(_use_dtensor=False),
                              ShardedOptimStateDictConfig(_use_dtensor=False)):
        state = {"model": fsdp.state_dict(), "optim": FSDP.optim_state_dict(fsdp, optim), "column": column, "step": 7}
    os.makedirs(f"{out}/ranks", exist_ok=True)
    torch.save(state, f"{out}/ranks/rank{rank}.pt")
    dcp.save(state, checkpoint_id=f"{out}/dcp")

    whole = _gathered(state, rank)  # every ShardedTensor whole, by torch's own ShardedTensor.gather
    if rank == 0:
        torch.save(whole, f"{out}/full.pt")
    dist.barrier()  # no rank leaves while another still talks to it
    # past the barrier, without gloo's teardown, which can abort a rank on a
    # loaded machine (see tests/deepspeed_writer.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    out, world, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    mp.spawn(_rank, args=(world, out, port), nprocs=world)
