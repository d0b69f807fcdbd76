"""Safe checkpoints, each written by the library that owns its format:
what `ckptfs scan` must call safe (tests/test_malicious_corpus.py) and
what the scanners are benchmarked on for false alarms (bench/scan_bench.py).

    python -m tests.malicious.safe OUT [NAME=FOLDER ...]

writes OUT/<name> for each of SAFE, and the samples of the repository; a
NAME=FOLDER copies FOLDER, which the same writer already wrote, as NAME
(the tests share the DeepSpeed and DCP saves of test_deepspeed.py and
test_dcp.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: real checkpoints kept in the repository (samples/README.md says who wrote each)
SAMPLES = ["samples/nemo/tiny.nemo", "samples/lightning/tiny.ckpt", "samples/hf/bert_tiny_sharded",
           "samples/dcp/fsdp2_2rank", "samples/dcp/fsdp2_2rank.ref.pt"]


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def lightning(out: Path) -> Path:
    """Trainer.save_checkpoint after one step: state dict, optimizer and
    scheduler states, loops, callbacks, hyper-parameters."""
    import lightning.pytorch as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self, width: int = 3, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(width, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).square().mean()

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 3)), batch_size=2)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=str(out.parent))
    trainer.fit(Tiny(), data)
    trainer.save_checkpoint(out)
    return out


def transformers_model(out: Path) -> Path:
    """save_pretrained of a tiny BERT (transformers 5 writes safetensors
    only), and beside it pytorch_model.bin as transformers 4 wrote it with
    safe_serialization=False: torch.save of the state dict."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = BertModel(config)
    model.save_pretrained(out)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def optimizer(out: Path) -> Path:
    """A training loop's own checkpoint: model, AdamW and SGD states, a
    scheduler, the epoch."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    adam, sgd = torch.optim.AdamW(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 3)).sum().backward()
    adam.step()
    sgd.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(adam, 10)
    torch.save({"model": model.state_dict(), "adam": adam.state_dict(), "sgd": sgd.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": 3}, out)
    return out


def numpy_arrays(out: Path) -> Path:
    import numpy as np

    out.mkdir()
    np.savez(out / "arrays.npz", a=np.arange(6).reshape(2, 3), b=np.ones(3, dtype=np.float16))
    np.savez_compressed(out / "packed.npz", c=np.linspace(0, 1, 5))
    np.save(out / "one.npy", np.eye(3))
    return out


def _writer(module: str, out: Path, *args: str) -> Path:
    done = subprocess.run([sys.executable, "-m", module, str(out), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def deepspeed(out: Path) -> Path:
    """engine.save_checkpoint of ZeRO stage 2 on three CPU ranks (tests/deepspeed_writer.py)."""
    return _writer("tests.deepspeed_writer", out, "2", "3", _port())


def distributed(out: Path) -> Path:
    """torch.distributed.checkpoint.save from two CPU ranks, FSDP2 and plain
    variants (tests/dcp_writer.py)."""
    return _writer("tests.dcp_writer", out, "2", _port())


SAFE = {"lightning.ckpt": lightning, "transformers": transformers_model, "optimizer.pt": optimizer,
        "numpy": numpy_arrays, "deepspeed": deepspeed, "dcp": distributed}


def main(out: Path, written: dict[str, Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, write in SAFE.items():
        if name in written:
            shutil.copytree(written[name], out / name)
        else:
            write(out / name)
    for sample in SAMPLES:
        copy = shutil.copytree if (REPO / sample).is_dir() else shutil.copy
        copy(REPO / sample, out / Path(sample).name)


if __name__ == "__main__":
    main(Path(sys.argv[1]), {name: Path(folder) for name, _, folder in (a.partition("=") for a in sys.argv[2:])})
