"""FSDP1 sharded state dicts (ShardedTensor) saved by three CPU ranks:
each rank's torch.save file, and the same state saved with
torch.distributed.checkpoint. Every tensor ckptfs assembles equals what
torch's own `ShardedTensor.gather` makes of it; a rank's file missing
leaves its tensors out, with a note, and the rest readable."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptfs.formats import sharded_torch

from .conftest import TIMED_APART, run_ckptfs

WORLD = 3
#: the save takes three torch ranks minutes on a busy machine, within its own timeout
pytestmark = TIMED_APART


@pytest.fixture(scope="module")
def saved(written) -> Path:
    return written("tests.fsdp1_writer", str(WORLD), "PORT")


def _tensors(obj, prefix=()) -> dict[tuple, np.ndarray]:
    """Every tensor of a nested state, by key path."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _tensors(value, (*prefix, str(key))).items()}
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().numpy()}
    return {}


def _file(root: Path, path: tuple) -> Path:
    return root.joinpath(*[p for key in path[:-1] for p in key.split(".")], *path[-1].split(".")[:-1],
                         path[-1].split(".")[-1] + ".npy")


@pytest.mark.parametrize("where", ["ranks", "dcp"])
def test_every_tensor_is_what_sharded_tensor_gather_makes(saved, mount, where):
    mnt = mount(saved / where)
    root = mnt / "assembled" if where == "ranks" else mnt
    reference = _tensors(torch.load(saved / "full.pt", weights_only=False))
    assert ("column",) in reference and ("optim", "state", "0.weight", "exp_avg") in reference
    for path, expected in reference.items():
        served = np.load(_file(root, path))
        assert served.dtype == expected.dtype and served.shape == expected.shape, path
        assert served.tobytes() == expected.tobytes(), path
    column = _file(root, ("column",))  # split along its second dimension: assembled element by element
    whole = column.read_bytes()
    with open(column, "rb") as f:
        for offset in range(0, len(whole), 29):
            assert os.pread(f.fileno(), 41, offset) == whole[offset:offset + 41]


def test_each_rank_file_is_shown_as_saved(saved, mount):
    mnt = mount(saved / "ranks")
    for rank in range(WORLD):
        assert (mnt / f"rank{rank}.pt" / "step.yaml").read_text().strip() == "7"
        assert "ShardedTensor" in (mnt / f"rank{rank}.pt" / "column.yaml").read_text()
    assert (mnt / "assembled" / "step.yaml").read_text().strip() == "7"
    info = json.loads(run_ckptfs("info", "--json", saved / "ranks").stdout)
    assert info["format"] == "sharded torch.save (FSDP1)" and not info["notes"]
    # read-only, as its record says and so `ckptfs --help` (tests/test_registry.py for the other formats)
    assert info["writable"] is False and sharded_torch.FORMAT.writes is None


def test_a_missing_rank_leaves_its_tensors_out_with_a_note(saved, tmp_path):
    ranks = tmp_path / "ranks"
    shutil.copytree(saved / "ranks", ranks)
    os.remove(ranks / "rank1.pt")
    info = json.loads(run_ckptfs("info", "--json", ranks).stdout)
    column = [n for n in info["notes"] if n.startswith("assembled: column not assembled")]
    assert len(column) == 1 and "do not tile it" in column[0], info["notes"]
    shown = run_ckptfs("cat", ranks, "assembled/column.yaml")  # left as the first rank's file shows it
    assert shown.returncode == 0 and "ShardedTensor" in shown.stdout
    assert run_ckptfs("cat", ranks, "assembled/step.yaml").stdout.strip() == "7"


def test_export_writes_the_whole_state(saved, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "whole.safetensors"
    done = run_ckptfs("export", saved / "ranks", out)
    assert done.returncode == 0, done.stderr
    exported = load_file(out)
    reference = {".".join(path): array for path, array in _tensors(torch.load(saved / "full.pt", weights_only=False)).items()}
    assert sorted(exported) == sorted(reference)
    for key, expected in reference.items():
        assert exported[key].tobytes() == expected.tobytes() and exported[key].shape == expected.shape, key
