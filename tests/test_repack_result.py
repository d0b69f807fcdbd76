"""What a repack leaves on disk besides the edits: the source's modes and
owners, only the format's own files, every field the format's writer would
change; and attributes of edited files that describe what they are now."""

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from .conftest import FIXTURES, TIMEOUT, umount

BERT = FIXTURES / "hf" / "bert_tiny_sharded"
OWNER = (1234, 2345)  # somebody else: the tests run as root, who may give files away


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _owned(path: Path, mode: int) -> None:
    os.chown(path, *OWNER)
    os.chmod(path, mode)


def _kept(path: Path, mode: int) -> None:
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, *OWNER), path


@pytest.fixture
def bert(tmp_path) -> Path:
    model = tmp_path / "bert"
    shutil.copytree(BERT, model)
    return model


def test_a_config_edit_of_a_hugging_face_directory_keeps_modes_and_writes_only_its_files(mount, bert):
    _owned(bert, 0o751)
    _owned(bert / "model-00003-of-00004.safetensors", 0o640)
    _owned(bert / "config.json", 0o604)
    before = sorted(os.listdir(bert))
    mnt = mount(bert)
    done = subprocess.run(["sed", "-i", "s/gelu/relu/", mnt / "config.json"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(bert)) == before  # no empty copies of the tensor folders (embeddings/, encoder/)
    assert '"hidden_act": "relu"' in (bert / "config.json").read_text()
    _kept(bert, 0o751)
    _kept(bert / "model-00003-of-00004.safetensors", 0o640)
    _kept(bert / "config.json", 0o604)  # written anew, as it was
    assert _mode(bert / "model-00001-of-00004.safetensors") == _mode(BERT / "model-00001-of-00004.safetensors")


def test_removing_a_module_updates_every_field_of_the_index(mount, bert):
    index_path = bert / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = {name: load_file(str(bert / name)) for name in set(index["weight_map"].values())}
    tensors = {k: v for shard in shards.values() for k, v in shard.items()}
    assert index["metadata"]["total_parameters"] == sum(t.size for t in tensors.values())  # as transformers wrote it
    pooler = {k: v for k, v in tensors.items() if k.startswith("pooler.")}
    assert pooler
    mnt = mount(bert)
    shutil.rmtree(mnt / "pooler")
    np.save(mnt / "extra.npy", np.zeros((3, 5), dtype=np.float32))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    index = json.loads(index_path.read_text())
    kept = {k: v for k, v in tensors.items() if k not in pooler}
    assert sorted(index["weight_map"]) == sorted([*kept, "extra"])
    assert index["metadata"]["total_parameters"] == sum(t.size for t in kept.values()) + 15
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in kept.values()) + 60
    written = {}
    for name in set(index["weight_map"].values()):
        written.update(load_file(str(bert / name)))
    assert sorted(written) == sorted(index["weight_map"])


def test_a_distributed_checkpoint_directory_keeps_its_modes(mount, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", ckpt)
    _owned(ckpt, 0o755)
    _owned(ckpt / "__1_0.distcp", 0o600)
    mnt = mount(ckpt)
    weight = next(p for p in (mnt / "model").rglob("*.npy"))
    data = np.load(weight)
    np.save(weight, np.zeros_like(data))
    assert umount(mnt).returncode == 0
    _kept(ckpt, 0o755)
    _kept(ckpt / "__1_0.distcp", 0o600)
    assert _mode(ckpt / ".metadata") == _mode(FIXTURES / "dcp" / "fsdp2_2rank" / ".metadata")


@pytest.mark.parametrize("kind", ["safetensors", "nemo"])
def test_a_single_file_keeps_its_mode_and_owner(mount, tmp_path, kind):
    if kind == "nemo":
        source = tmp_path / "tiny.nemo"
        shutil.copy(FIXTURES / "nemo" / "tiny.nemo", source)
    else:
        source = tmp_path / "model.safetensors"
        save_file({"w": np.ones(4, dtype=np.float32)}, str(source))
    _owned(source, 0o640)
    mnt = mount(source)
    (mnt / "added.npy").unlink(missing_ok=True)
    np.save(mnt / "added.npy", np.arange(3, dtype=np.float32))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    _kept(source, 0o640)


def test_attributes_of_edited_files_describe_them_as_they_are(mount, tmp_path):
    source = tmp_path / "model.safetensors"
    save_file({"w": np.ones((2, 3), dtype=np.float32), "b": np.ones(2, dtype=np.float32)}, str(source))
    nemo = tmp_path / "tiny.nemo"
    shutil.copy(FIXTURES / "nemo" / "tiny.nemo", nemo)
    mnt = mount(source)
    tensor = mnt / "w.npy"
    assert {"user.ckptfs.source", "user.ckptfs.range"} <= set(os.listxattr(tensor))
    np.save(tensor, np.zeros(7, dtype=np.float16))
    names = set(os.listxattr(tensor))
    assert "user.ckptfs.source" not in names and "user.ckptfs.range" not in names
    assert b"overlay" in os.getxattr(tensor, "user.ckptfs.edited")
    assert os.getxattr(tensor, "user.ckptfs.dtype") == b"float16"
    assert os.getxattr(tensor, "user.ckptfs.shape") == b"[7]"
    assert os.getxattr(tensor, "user.ckptfs.name") == b"w"
    assert "user.ckptfs.edited" not in os.listxattr(mnt / "b.npy")  # untouched: as it was
    assert os.getxattr(mnt / "b.npy", "user.ckptfs.source") == str(source).encode()
    np.save(mnt / "new.npy", np.ones((4, 1), dtype=np.int32))
    assert os.getxattr(mnt / "new.npy", "user.ckptfs.shape") == b"[4, 1]"
    assert umount(mnt, "--discard").returncode == 0

    mnt = mount(nemo)
    config = mnt / "model_config.yaml"
    assert "user.ckptfs.range" in os.listxattr(config)
    with open(config, "a") as f:
        f.write("# edited\n")
    names = set(os.listxattr(config))
    assert "user.ckptfs.range" not in names and "user.ckptfs.source" not in names and "user.ckptfs.edited" in names
    assert umount(mnt, "--discard").returncode == 0
