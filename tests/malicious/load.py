"""Loads one checkpoint as its library does, in this (throwaway) process:

    python -m tests.malicious.load LOADER PATH

LOADER is one of generate.LOADERS. Whatever the load raises after its
payload ran is of no interest: the caller looks for the payload's marker.
"""

from __future__ import annotations

import pickle
import sys
import tarfile
import tempfile
from pathlib import Path


def load(loader: str, path: Path) -> None:
    if loader == "pickle":
        with open(path, "rb") as f:
            pickle.load(f)
    elif loader == "pickle twice":
        with open(path, "rb") as f:
            pickle.load(f)
            pickle.load(f)
    elif loader == "numpy":
        import numpy as np

        loaded = np.load(path, allow_pickle=True)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            for key in loaded.files:
                loaded[key]
    elif loader == "torch":
        import torch

        torch.load(path, weights_only=False)
    elif loader in ("dcp", "nemo 2"):
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as out:
            dcp_to_torch_save(path if loader == "dcp" else path / "weights", Path(out) / "out.pt")
    elif loader == "nemo":
        import torch

        with tempfile.TemporaryDirectory() as out, tarfile.open(path) as tar:
            tar.extractall(out)  # as NeMo's SaveRestoreConnector does
            torch.load(Path(out) / "model_weights.ckpt", weights_only=False)
    else:
        raise SystemExit(f"unknown loader {loader!r}")


if __name__ == "__main__":
    load(sys.argv[1], Path(sys.argv[2]))
