"""Writes real DeepSpeed ZeRO checkpoints for the tests: spawned CPU ranks on
gloo, a small model trained one step with Adam, saved with
`engine.save_checkpoint`.

    python -m tests.deepspeed_writer OUT STAGE WORLD_SIZE PORT [bf16]

The model has what zero_to_fp32 has to put back: two parameter groups,
sizes that leave padding on every rank, buffers (float and int64), a
frozen parameter and a tied one.
"""

import os
import sys

import torch
import torch.multiprocessing as mp


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 7)
        self.hidden = torch.nn.Linear(7, 13)
        self.norm = torch.nn.LayerNorm(13)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 13))
        self.register_buffer("steps", torch.tensor([3, -1], dtype=torch.int64))
        self.frozen = torch.nn.Linear(13, 5)
        self.frozen.requires_grad_(False)
        self.out = torch.nn.Linear(5, 7, bias=False)
        self.head = torch.nn.Linear(7, 11, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids):
        x = self.norm(torch.relu(self.hidden(self.embed(ids)))) * self.scale.to(self.hidden.weight.dtype)
        return self.head(self.out(self.frozen(x)))


def _rank(rank: int, world: int, out: str, stage: int, port: str, bf16: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    import importlib

    import deepspeed

    backend = importlib.import_module("deepspeed.comm.torch")  # the module: the attribute of that name is torch

    # DeepSpeed's shared-memory allreduce for CPU ranks is a C++ extension
    # built on first use (after probing every op's compiler), in each rank: a
    # minute or more of a test run. gloo makes the same sums, and what is
    # saved is laid out the same.
    backend.build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = Model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": trainable[:2], "lr": 0.1}, {"params": trainable[2:], "lr": 0.01}]
    config = {"train_batch_size": 4 * world, "train_micro_batch_size_per_gpu": 4,
              "zero_optimization": {"stage": stage}, "bf16": {"enabled": bf16}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(groups), config=config)
    ids = torch.randint(0, 11, (4,), generator=torch.Generator().manual_seed(rank))
    engine.backward(engine(ids).float().square().mean())
    engine.step()
    engine.save_checkpoint(out, tag="global_step1", client_state={"epoch": 3})
    torch.distributed.barrier()  # no rank leaves while another still talks to it
    # Every rank has saved and passed the barrier. gloo's teardown (at
    # destroy_process_group or at exit) sometimes aborts a rank with
    # "terminate called without an active exception" on a loaded machine,
    # which failed a CI run; there is nothing left to tear down cleanly for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    out, stage, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    bf16 = sys.argv[5:] == ["bf16"]
    mp.spawn(_rank, args=(world, out, stage, port, bf16), nprocs=world)
