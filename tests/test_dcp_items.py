"""Non-tensor items of a distributed checkpoint (`dcp.save` of ints,
strings, configs, `io.BytesIO`): edited, added, renamed and removed through
the mount, stored as dcp.save stores them, and read back by dcp.load; an
edit an item cannot hold fails at close()."""

import argparse
import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner

from .conftest import umount, write_refused
from .dcp_writer import VARIANTS, _save

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _state(**extra) -> dict:
    state = {
        "model": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4, dtype=torch.bfloat16)},
        "extra": {"step": 7, "note": "x", "lr": 0.1, "layers": [1, 2], "pair": (1, "x"), "scratch": "drop me"},
        "args": argparse.Namespace(lr=0.5, mask=torch.tensor([1, 0, 1], dtype=torch.uint8)),  # a tensor inside
        "blob": io.BytesIO(b"hello raw"),
    }
    state.update(extra)
    return state


def _empty_like(state: dict) -> dict:
    """A state dict with the same keys to load into, as users load them."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = _empty_like(value)
        elif isinstance(value, torch.Tensor):
            out[key] = torch.zeros_like(value)
        else:
            out[key] = None
    return out


def _same(a, b, where: str = "") -> None:
    """Equal values of the same types; tensors equal bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.contiguous().view(torch.uint8).numpy().tobytes() == b.contiguous().view(torch.uint8).numpy().tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, argparse.Namespace):
        _same(vars(a), vars(b), where)
    elif isinstance(a, io.BytesIO):
        assert a.getvalue() == b.getvalue(), where
    else:
        assert a == b, where


def _loaded(path: Path, like: dict) -> dict:
    state = _empty_like(like)
    dcp.load(state, checkpoint_id=str(path))
    return state


@pytest.mark.parametrize("variant", VARIANTS)
def test_edited_new_renamed_and_removed_items_read_back_by_dcp_load(mount, tmp_path, variant):
    """Every way DCP saves (torch.save records, zstd streams, safetensors
    shards, one metadata file per rank): the edited checkpoint loads as a
    checkpoint dcp.save made of the edited state."""
    ckpt = tmp_path / "ck"
    _save(_state(), str(ckpt), VARIANTS[variant])
    mnt = Path(mount(ckpt))
    extra = mnt / "extra"
    assert yaml.safe_load((extra / "step.yaml").read_text()) == 7
    (extra / "step.yaml").write_text("8\n")
    (extra / "lr.yaml").write_text("1e-4\n")  # a string to YAML 1.1: stays a float
    (extra / "layers.yaml").write_text("[1, 2, 3]\n")
    (extra / "pair.yaml").write_text("- 2\n- y\n")  # stays a tuple
    subprocess.run(["sed", "-i", "s/^x$/y/", str(extra / "note.yaml")], check=True, timeout=30)
    os.rename(extra / "layers.yaml", extra / "sizes.yaml")  # a new key, the edited value
    (extra / "epoch.yaml").write_text("3\n")  # a new item
    args = (mnt / "args.yaml").read_text()
    assert "lr: 0.5" in args and "mask: !tensor" in args
    (mnt / "args.yaml").write_text(args.replace("lr: 0.5", "lr: 0.25"))
    blob = (mnt / "blob.yaml").read_text()
    (mnt / "blob.yaml").write_text(blob.replace("aGVsbG8gcmF3", "Ynll"))  # base64 of b"bye"
    os.unlink(mnt / "model" / "b.npy")
    os.unlink(extra / "scratch.yaml")
    np.save(mnt / "model" / "w.npy", np.arange(12, dtype=np.float32).reshape(3, 4) * 2)  # patched beside the items
    done = umount(mnt)
    assert done.returncode == 0, done.stderr

    expected = _state()
    expected["extra"] = {"step": 8, "note": "y", "lr": 1e-4, "pair": (2, "y"), "sizes": [1, 2, 3], "epoch": 3}
    expected["args"].lr = 0.25
    expected["blob"] = io.BytesIO(b"bye")
    del expected["model"]["b"]
    expected["model"]["w"] = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 2
    reference = tmp_path / "reference"
    dcp.save(expected, checkpoint_id=str(reference))
    if variant == "safetensors":  # torch's FileSystemReader reads the items there, not the tensors
        del expected["model"]
    ours, theirs = _loaded(ckpt, expected), _loaded(reference, expected)
    _same(ours, theirs)
    _same(ours["args"].mask, torch.tensor([1, 0, 1], dtype=torch.uint8))  # the storage inside the object, copied
    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata(rank=0 if variant == "per_rank_metadata" else None)
    assert sorted(k for k, v in metadata.state_dict_metadata.items() if type(v).__name__ == "BytesStorageMetadata") == [
        "args", "blob", "extra.epoch", "extra.lr", "extra.note", "extra.pair", "extra.sizes", "extra.step"]
    assert metadata.planner_data["extra.epoch"] == ("extra", "epoch")
    for gone in ("extra.layers", "extra.scratch", "model.b"):
        assert gone not in metadata.state_dict_metadata
    # a new item's record is the zip torch.save writes of its value: the same records, the same pickle
    info = next(v for k, v in metadata.storage_data.items() if k.fqn == "extra.epoch")
    with open(ckpt / info.relative_path, "rb") as f:
        f.seek(info.offset)
        ours = zipfile.ZipFile(io.BytesIO(f.read(info.length)))
    buffer = io.BytesIO()
    torch.save(3, buffer)
    theirs = zipfile.ZipFile(buffer)
    assert ours.namelist() == theirs.namelist()
    assert ours.read("archive/data.pkl") == theirs.read("archive/data.pkl")


def test_an_edit_an_item_cannot_hold_fails_at_close(mount, tmp_path):
    ckpt = tmp_path / "ck"
    dcp.save(_state(), checkpoint_id=str(ckpt))
    mnt = Path(mount(ckpt, log_errors_expected=True))
    lr = mnt / "extra" / "lr.yaml"
    write_refused(lr, b"fast\n")
    assert os.getxattr(lr, "user.ckptfs.problem").decode() == "extra/lr.yaml: was a float (0.1); 'fast' would change its type"
    write_refused(mnt / "extra" / "step.yaml", b"[unclosed\n")
    write_refused(mnt / "extra" / "date.yaml", b"2024-05-01\n")  # a date: torch.save's pickle has no such value here
    problem = os.getxattr(mnt / "extra" / "date.yaml", "user.ckptfs.problem").decode()
    assert problem.startswith("extra/date.yaml: the value cannot be pickled")
    write_refused(mnt / "extra" / "raw.bin", b"\x00\x01")  # raw bytes: only the planner that stored them reads them
    lr.write_text("0.2\n")
    (mnt / "extra" / "step.yaml").write_text("9\n")
    (mnt / "extra" / "date.yaml").write_text("'2024-05-01'\n")
    os.unlink(mnt / "extra" / "raw.bin")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    state = _loaded(ckpt, {"extra": {"lr": 0, "step": 0, "date": "", "note": ""}})
    assert state["extra"] == {"lr": 0.2, "step": 9, "date": "2024-05-01", "note": "x"}


class _RawBytesSavePlanner(DefaultSavePlanner):
    """Stores an io.BytesIO as its bytes, as Megatron-core's planner does."""

    def transform_object(self, write_item, object):
        return object


class _RawBytesLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value):
        self.original_state_dict[read_item.dest_index.fqn] = value.getvalue()  # the keys are flat


def test_an_item_stored_as_raw_bytes_is_written_as_its_new_bytes(mount, tmp_path):
    ckpt = tmp_path / "ck"
    payload = bytes(range(256)) * 3
    dcp.save({"w": torch.arange(5.0), "blob": io.BytesIO(payload), "tail": io.BytesIO(b"\xff\xfe")},
             checkpoint_id=str(ckpt), planner=_RawBytesSavePlanner())
    mnt = Path(mount(ckpt))
    assert (mnt / "blob.bin").read_bytes() == payload
    (mnt / "blob.bin").write_bytes(b"\x00new bytes\xff" * 100)
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    state = {"w": torch.zeros(5), "blob": None, "tail": None}
    dcp.load(state, checkpoint_id=str(ckpt), planner=_RawBytesLoadPlanner())
    assert state["blob"] == b"\x00new bytes\xff" * 100 and state["tail"] == b"\xff\xfe"
    assert state["w"].tolist() == [0, 1, 2, 3, 4]


def test_items_in_a_folder_of_checkpoints_and_in_a_nemo(mount, tmp_path):
    """The same writer serves NeMo 2's `weights/` and a `.nemo`'s `model_weights/`."""
    folder = tmp_path / "nemo2"
    (folder / "context").mkdir(parents=True)
    (folder / "context" / "model.yaml").write_text("_target_: x\n")
    dcp.save({"module.w": torch.ones(2, 3), "optimizer": {"step": 9}}, checkpoint_id=str(folder / "weights"))
    weights = tmp_path / "model_weights"
    dcp.save({"decoder.w": torch.arange(4.0), "iteration": 100}, checkpoint_id=str(weights))
    nemo = tmp_path / "megatron.nemo"
    with tarfile.open(nemo, "w:") as tf:
        tf.add(weights, arcname="./model_weights")

    mnt = Path(mount(folder, log_errors_expected=True))
    step = mnt / "weights" / "optimizer" / "step.yaml"
    write_refused(step, b"ten\n")
    assert os.getxattr(step, "user.ckptfs.problem").decode() == "optimizer/step.yaml: was an int (9); 'ten' would change its type"
    step.write_text("10\n")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    state = {"module.w": torch.zeros(2, 3), "optimizer": {"step": 0}}
    dcp.load(state, checkpoint_id=str(folder / "weights"))
    assert state["optimizer"]["step"] == 10 and state["module.w"].tolist() == [[1.0] * 3] * 2

    mnt = Path(mount(nemo, log_errors_expected=True))
    iteration = mnt / "model_weights" / "iteration.yaml"
    write_refused(iteration, b"- a list\n")
    iteration.write_text("101\n")
    (mnt / "model_weights" / "consumed.yaml").write_text("4096\n")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "unpacked"
    with tarfile.open(nemo) as tf:
        tf.extractall(out, filter="data")
    state = {"decoder.w": torch.zeros(4), "iteration": 0, "consumed": 0}
    dcp.load(state, checkpoint_id=str(out / "model_weights"))
    assert state["iteration"] == 101 and state["consumed"] == 4096
    assert np.array_equal(state["decoder.w"].numpy(), np.arange(4.0, dtype=np.float32))


def test_a_failed_close_is_an_error_the_caller_sees(mount, tmp_path):
    """What a user sees: cp fails, and the problem is kept on the file."""
    ckpt = tmp_path / "ck"
    dcp.save({"w": torch.ones(2), "epoch": 3}, checkpoint_id=str(ckpt))
    mnt = Path(mount(ckpt, log_errors_expected=True))
    bad = tmp_path / "bad.yaml"
    bad.write_text("three\n")
    done = subprocess.run(["cp", str(bad), str(mnt / "epoch.yaml")], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert os.getxattr(mnt / "epoch.yaml", "user.ckptfs.problem").decode() == (
        "epoch.yaml: was an int (3); 'three' would change its type")
    (mnt / "epoch.yaml").write_text("4\n")
    assert umount(mnt).returncode == 0
    state = {"w": torch.zeros(2), "epoch": 0}
    dcp.load(state, checkpoint_id=str(ckpt))
    assert state["epoch"] == 4
