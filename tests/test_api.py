"""`ckptfs.open`: tensors equal to what torch, safetensors and the DCP
reference load, files equal to `ckptfs cat`, configs parsed; no FUSE."""

from __future__ import annotations

import io
import json
import tarfile

import ml_dtypes  # noqa: F401 (numpy then knows bfloat16, as the docs say users need)
import numpy as np
import pytest
import torch
from safetensors import safe_open

import ckptfs
from ckptfs.errors import CkptfsError

from .conftest import FIXTURES, run_ckptfs

HF = FIXTURES / "hf" / "bert_tiny_sharded"
NEMO = FIXTURES / "nemo" / "tiny.nemo"
DCP = FIXTURES / "dcp" / "fsdp2_2rank"


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def test_hf_tensors_are_safetensors_own_and_memory_mapped():
    ckpt = ckptfs.open(HF)
    assert ckpt.format and ckpt.path == str(HF)
    infos = {t.name: t for t in ckpt.tensors()}
    seen = 0
    for shard in sorted(HF.glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            for name in f.keys():
                expected, got = f.get_tensor(name), ckpt.tensor(name)
                assert isinstance(got, np.memmap) and not got.flags.writeable  # read-only, from the file itself
                assert got.dtype == expected.dtype and np.array_equal(got, expected), name
                assert infos[name].shape == expected.shape and infos[name].nbytes == expected.nbytes
                seen += 1
    assert seen == len(infos)
    assert ckpt.config == json.loads((HF / "config.json").read_text())


def test_nemo_tensors_equal_torch_load_of_its_weights_and_config_is_the_yaml():
    ckpt = ckptfs.open(NEMO)
    with tarfile.open(NEMO) as tf:
        weights = torch.load(io.BytesIO(tf.extractfile("./model_weights.ckpt").read()), weights_only=True)
        config_text = tf.extractfile("./model_config.yaml").read()
    assert {t.name for t in ckpt.tensors()} == set(weights)
    for name, tensor in weights.items():
        got = ckpt.tensor(name)
        assert got.shape == tuple(tensor.shape) and got.tobytes() == _bytes(tensor), name
    assert ckpt.read("model_config.yaml") == config_text
    assert ckpt.config["d_hidden"] == 24


def test_dcp_tensors_are_assembled_as_the_reference_holds_them():
    ckpt = ckptfs.open(DCP)
    reference = torch.load(DCP.parent / "fsdp2_2rank.ref.pt", weights_only=False)
    for name, tensor in reference["model"].items():
        got = ckpt.tensor(f"model.{name}")
        assert got.shape == tuple(tensor.shape) and got.tobytes() == _bytes(tensor), name
    assert ckpt.tensor("extra.colsharded").tobytes() == _bytes(reference["colsharded"])
    assert ckpt.config is None


def test_read_and_walk_are_the_tree_of_ls_and_cat():
    ckpt = ckptfs.open(NEMO)
    walked = [e.path for e in ckpt.walk()]
    assert walked and sorted(walked) == sorted(run_ckptfs("ls", "-R", NEMO).stdout.split())
    info = next(e for e in ckpt.walk() if e.path == ".ckptfs/info.yaml")
    assert info.type == "file" and info.size == len(ckpt.read(".ckptfs/info.yaml"))
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        ckpt.tensor("nope")
    with pytest.raises(CkptfsError, match="no such file or folder"):
        ckpt.read("nope.yaml")


def test_the_ckpt_filesystem_lists_and_reads_the_tree_by_ranges():
    """fsspec finds ckpt:// by its entry point; listings and bytes are the tree's."""
    import fsspec

    fs = fsspec.filesystem("ckpt", fo=str(NEMO))
    ckpt = ckptfs.open(NEMO)
    assert fs.ls("", detail=False) == run_ckptfs("ls", NEMO).stdout.split()
    assert sorted(fs.find("")) == sorted(e.path for e in ckpt.walk() if e.type == "file")
    path = "model_weights.ckpt/encoder/0/weight.npy"
    whole = ckpt.read(path)
    assert fs.info(path) == {"name": path, "size": len(whole), "type": "file"}
    with fs.open(path, block_size=64) as f:  # small blocks: many range reads
        f.seek(100)
        assert f.read(300) == whole[100:400] and f.read() == whole[400:]
    with fsspec.open(f"ckpt://model_config.yaml::{NEMO}") as f:
        assert f.read() == ckpt.read("model_config.yaml")
    with pytest.raises(ValueError, match="local checkpoints only"):
        fsspec.filesystem("ckpt", fo="s3://bucket/model.nemo", skip_instance_cache=True)
    with pytest.raises(NotImplementedError, match="read-only"):
        fs.open("model_config.yaml", "wb")
