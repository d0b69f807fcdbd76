"""DeepSpeed ZeRO checkpoints written by DeepSpeed itself (stages 1, 2 and 3,
bf16 and fp32, 2 and 3 CPU ranks on gloo): every parameter of `fp32/`
equals what DeepSpeed's zero_to_fp32 assembles, the ranks' files read as
pickled trees, and a save that does not add up is shown without `fp32/`,
with a note."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ckptfs

from .conftest import TIMED_APART, run_ckptfs

#: name -> (stage, ranks, bf16)
SAVES = {"zero1-bf16": (1, 2, True), "zero2": (2, 3, False), "zero3-bf16": (3, 3, True)}
#: the saves take DeepSpeed minutes on a busy machine, each within its own timeout
pytestmark = TIMED_APART


@pytest.fixture(scope="module")
def saves(written) -> dict[str, Path]:
    return {name: written(*deepspeed_writer(stage, world, bf16)) for name, (stage, world, bf16) in SAVES.items()}


def deepspeed_writer(stage: int, world: int, bf16: bool) -> tuple[str, ...]:
    """The `written` arguments of one save (test_malicious_corpus.py names the zero2 one so too)."""
    return ("tests.deepspeed_writer", str(stage), str(world), "PORT", *(["bf16"] if bf16 else []))


def _reference(folder: Path, tag: str | None = None) -> dict[str, np.ndarray]:
    """zero_to_fp32's state dict; half-precision tensors widened to float32, as ckptfs serves them."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    result = {}
    for name, tensor in get_fp32_state_dict_from_zero_checkpoint(str(folder), tag).items():
        tensor = tensor.contiguous().detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        result[name] = tensor.numpy()
    return result


@pytest.mark.parametrize("name", SAVES)
def test_every_parameter_is_what_zero_to_fp32_assembles(saves, name, mount):
    mnt = mount(saves[name])
    reference = _reference(saves[name])
    fp32 = mnt / "global_step1" / "fp32"
    served = {str(p.relative_to(fp32))[:-4].replace("/", "."): p for p in fp32.rglob("*.npy")}
    assert sorted(served) == sorted(reference)
    assert "head.weight" in served and "steps" in served  # the tied parameter, the int64 buffer
    assert ("frozen.weight" in served) == (SAVES[name][0] != 1)  # bf16 stage 1 keeps no frozen shapes
    for key, expected in reference.items():
        array = np.load(served[key])
        assert array.dtype == expected.dtype and array.shape == expected.shape, key
        assert array.tobytes() == expected.tobytes(), key
        with open(served[key], "rb") as f:  # reads that start and end anywhere, across the ranks' pieces
            whole = f.read()
            for offset in range(0, len(whole), 37):
                assert os.pread(f.fileno(), 53, offset) == whole[offset:offset + 53]


def test_the_ranks_files_are_pickled_trees_and_the_mount_is_read_only(saves, mnt):
    folder = saves["zero3-bf16"]
    done = run_ckptfs("mount", folder, mnt)
    assert done.returncode == 0, done.stderr
    try:
        assert "ckptfs cannot write deepspeed zero checkpoints; mounted read-only" in done.stderr
        assert (mnt / "latest").read_text() == "global_step1"
        states = mnt / "global_step1" / "zero_pp_rank_2_mp_rank_00_model_states.pt"
        assert (states / "epoch.yaml").read_text().strip() == "3"
        assert "stage: 3" in (states / "ds_config.yaml").read_text()
        assert (mnt / "global_step1" / "zero_to_fp32.py").exists() is False  # it lies beside the tags
        assert (mnt / "zero_to_fp32.py").read_bytes() == (folder / "zero_to_fp32.py").read_bytes()
        with pytest.raises(OSError):
            (mnt / "global_step1" / "fp32" / "steps.npy").write_bytes(b"")
    finally:
        assert run_ckptfs("umount", mnt).returncode == 0
    info = json.loads(run_ckptfs("info", "--json", folder).stdout)
    assert info["format"] == "deepspeed zero"


def test_an_api_read_of_one_tag_folder(saves):
    """A tag folder on its own (what zero_to_fp32 is pointed at) is a checkpoint too."""
    tag = saves["zero2"] / "global_step1"
    checkpoint = ckptfs.open(tag)
    reference = _reference(saves["zero2"], "global_step1")
    for key, expected in reference.items():
        served = np.load(io.BytesIO(checkpoint.read("fp32/" + key.replace(".", "/") + ".npy")))
        assert served.tobytes() == expected.tobytes(), key


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("damage, note", [
    (lambda tag: os.remove(tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
     "2 optimizer states files for 3 ranks"),
    (lambda tag: os.truncate(tag / "zero_pp_rank_2_mp_rank_00_optim_states.pt", 900), "zero_pp_rank_2_mp_rank_00"),
    (lambda tag: shutil.copy(tag / "mp_rank_00_model_states.pt", tag / "mp_rank_01_model_states.pt"),
     "tensor or pipeline parallel files"),
])
def test_a_save_that_does_not_add_up_is_shown_without_fp32(saves, tmp_path, damage, note):
    folder = _copy(saves["zero2"], tmp_path / "save")
    damage(folder / "global_step1")
    info = json.loads(run_ckptfs("info", "--json", folder).stdout)
    notes = [n for n in info["notes"] if n.startswith("global_step1/fp32: parameters not assembled")]
    assert len(notes) == 1 and note in notes[0], info["notes"]
    listed = run_ckptfs("ls", folder, "global_step1")
    assert listed.returncode == 0 and "fp32" not in listed.stdout.split()


@pytest.mark.parametrize("shape, ranks, note", [
    ((10 ** 12,), [1], "elements 0-1000000000000 lie past its 4"),
    ((2, 2), 10 ** 9, "1 optimizer states file for 1000000000 ranks"),
    ((2, -2), [1], "shape (2, -2) is no list of sizes"),
    ((2, 2), "x", "partition_count 'x' is no number of ranks"),
])
def test_sizes_a_save_claims_are_checked_before_use(tmp_path, shape, ranks, note):
    """A save written in DeepSpeed's layout by hand, claiming what its
    files cannot hold: a note, fast, and the rest of the folder readable."""
    tag = tmp_path / "save" / "global_step1"
    tag.mkdir(parents=True)
    (tag.parent / "latest").write_text("global_step1")
    torch.save({"module": {}, "buffer_names": [], "param_shapes": [{"w": shape}], "shared_params": {}},
               tag / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"partition_count": ranks, "single_partition_of_fp32_groups": [torch.ones(4)]}},
               tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    info = json.loads(run_ckptfs("info", "--json", tag.parent).stdout)
    assert info["format"] == "deepspeed zero"
    assert any(n.startswith("global_step1/fp32: parameters not assembled") and note in n for n in info["notes"]), info
    assert run_ckptfs("cat", tag.parent, "latest").stdout == "global_step1"


@pytest.mark.parametrize("name", ["zero2", "zero3-bf16"])
def test_export_writes_what_zero_to_fp32_writes(saves, name, tmp_path):
    """`ckptfs export SAVE model.safetensors` in place of `zero_to_fp32.py
    --safe_serialization`: the tag `latest` names, its parameters only."""
    from safetensors.numpy import load_file

    out = tmp_path / "model.safetensors"
    done = run_ckptfs("export", saves[name], out)
    assert done.returncode == 0, done.stderr
    exported = load_file(out)
    reference = _reference(saves[name])
    assert sorted(exported) == sorted(reference)
    for key, expected in reference.items():
        assert exported[key].dtype == expected.dtype and exported[key].tobytes() == expected.tobytes(), key
    info = json.loads(run_ckptfs("info", "--json", saves[name]).stdout)
    assert info["tensors"] == len(reference)
