"""Hugging Face folders whose weights are torch.save files (`pytorch_model.bin`,
or `pytorch_model-0000K-of-0000N.bin` shards and their index), written by
huggingface_hub's `save_torch_state_dict(safe_serialization=False)` (what
transformers' `save_pretrained` wrote before safetensors; transformers 5 no
longer writes them but loads them), checked against torch.load and
from_pretrained, bit-exact."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from .conftest import is_mounted, pretrained_state, run_ckptfs, umount

SHARD_BYTES = "20KB"  # four shards of a 39-tensor BERT of width 32


def _model():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=64, max_position_embeddings=16)
    return transformers.BertModel(config)


def _save(model, folder: Path, max_shard_size: str = "5GB") -> Path:
    from huggingface_hub import save_torch_state_dict

    folder.mkdir()
    model.config.save_pretrained(folder)
    (folder / "special_tokens_map.json").write_text('{"pad_token": "[PAD]"}\n')
    save_torch_state_dict(model.state_dict(), folder, safe_serialization=False, max_shard_size=max_shard_size)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the model's state dict, a sharded folder, a one-file folder)."""
    base = tmp_path_factory.mktemp("hf_bin")
    model = _model()
    sharded, single = _save(model, base / "sharded", SHARD_BYTES), _save(model, base / "single")
    assert len(list(sharded.glob("pytorch_model-*-of-00004.bin"))) == 4
    assert (single / "pytorch_model.bin").is_file()
    return {k: v.clone() for k, v in model.state_dict().items()}, sharded, single


def _npy(mnt: Path, name: str) -> Path:
    *folders, leaf = name.split(".")
    return Path(mnt, *folders, leaf + ".npy")


def _loaded(folder: Path) -> dict:
    """Every tensor of the folder's weights files, by name, as torch.load reads them."""
    tensors = {}
    for path in sorted(folder.glob("pytorch_model*.bin")):
        tensors.update(torch.load(path, weights_only=True))
    return tensors


def _same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert got[name].numpy().tobytes() == tensor.numpy().tobytes(), name


def _pretrained(folder) -> dict:
    return pretrained_state(folder)[0]


def test_a_sharded_folder_mounts_as_one_merged_tree(mount, saved):
    state, sharded, _ = saved
    mnt = mount(sharded, "-o", "ro")
    weight_map = json.loads((sharded / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert sorted(weight_map) == sorted(state)
    shards = {f: torch.load(sharded / f, weights_only=True) for f in set(weight_map.values())}
    for name, shard in weight_map.items():
        got = np.load(_npy(mnt, name), mmap_mode="r")
        assert got.shape == tuple(state[name].shape) and got.tobytes() == shards[shard][name].numpy().tobytes(), name
    info = (mnt / ".ckptfs" / "info.yaml").read_text()
    assert "format: huggingface (torch.save)" in info and "tensors: 39" in info
    for shard in shards:  # each shard file as its own tree, read-only
        folder = mnt / shard
        assert folder.is_dir() and os.stat(folder).st_mode & 0o222 == 0
        assert sorted(".".join(p.relative_to(folder).with_suffix("").parts) for p in folder.rglob("*.npy")) == \
            sorted(shards[shard])
        assert (mnt / ".ckptfs" / "raw" / shard).read_bytes() == (sharded / shard).read_bytes()
    for name in ("config.json", "pytorch_model.bin.index.json", "special_tokens_map.json"):
        assert (mnt / name).read_bytes() == (sharded / name).read_bytes()
    assert "torch._utils._rebuild_tensor_v2" in (mnt / ".ckptfs" / "pickle-globals.txt").read_text()


def test_edits_go_back_to_the_shard_that_held_each_tensor(mount, saved, tmp_path):
    """A tensor rewritten in place is patched into its shard, a new one goes
    to the last shard, the index follows, untouched shards are hard links."""
    state, sharded, _ = saved
    folder = Path(shutil.copytree(sharded, tmp_path / "model"))
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    home = index["weight_map"]
    before = {f.name: f.stat().st_ino for f in folder.iterdir()}
    mnt = mount(folder)
    edited = "embeddings.word_embeddings.weight"
    assert home[edited] == "pytorch_model-00001-of-00004.bin"
    expected = dict(state)
    expected[edited] = torch.full_like(state[edited], 1.5)
    np.save(_npy(mnt, edited), expected[edited].numpy())
    expected["extra.bias"] = torch.arange(5, dtype=torch.float16)
    (mnt / "extra").mkdir()
    np.save(mnt / "extra" / "bias.npy", expected["extra.bias"].numpy())
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    _same(_loaded(folder), expected)
    assert "extra.bias" in torch.load(folder / "pytorch_model-00004-of-00004.bin", weights_only=True)
    after = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    assert after["weight_map"] == {**home, "extra.bias": "pytorch_model-00004-of-00004.bin"}
    assert after["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    untouched = {"config.json", "special_tokens_map.json", "pytorch_model-00002-of-00004.bin",
                 "pytorch_model-00003-of-00004.bin"}
    assert {f.name for f in folder.iterdir() if f.stat().st_ino == before.get(f.name)} == untouched
    # the same size as before: the bytes were patched in, the records left as torch.save wrote them
    assert (folder / "pytorch_model-00001-of-00004.bin").stat().st_size == \
        (sharded / "pytorch_model-00001-of-00004.bin").stat().st_size
    got = _pretrained(folder)
    _same({k: got[k] for k in state}, {k: expected[k] for k in state})


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_one_file_folder_takes_every_edit(mount, saved, tmp_path, legacy):
    """Reshaped, removed and added tensors rewrite the file's pickle, in the
    zip or the pre-1.6 layout it had."""
    state, _, single = saved
    folder = Path(shutil.copytree(single, tmp_path / "model"))
    if legacy:
        torch.save(torch.load(folder / "pytorch_model.bin", weights_only=True), folder / "pytorch_model.bin",
                   _use_new_zipfile_serialization=False)
    mnt = mount(folder)
    expected = dict(state)
    expected["pooler.dense.weight"] = torch.eye(32)
    np.save(_npy(mnt, "pooler.dense.weight"), expected["pooler.dense.weight"].numpy())
    expected["embeddings.position_embeddings.weight"] = torch.ones(8, 32, dtype=torch.float16)
    np.save(_npy(mnt, "embeddings.position_embeddings.weight"), np.ones((8, 32), np.float16))
    del expected["pooler.dense.bias"]
    _npy(mnt, "pooler.dense.bias").unlink()
    expected["head"] = torch.tensor([1, 2, 3])
    np.save(mnt / "head.npy", expected["head"].numpy())
    assert umount(mnt).returncode == 0
    _same(torch.load(folder / "pytorch_model.bin", weights_only=True), expected)
    with open(folder / "pytorch_model.bin", "rb") as f:
        assert (f.read(2) == b"PK") != legacy


def test_safetensors_are_chosen_over_bin_files_as_transformers_chooses(mount, saved, tmp_path):
    state, _, single = saved
    folder = Path(shutil.copytree(single, tmp_path / "both"))
    halved = {k: v / 2 if v.is_floating_point() else v for k, v in state.items()}
    save_file(halved, folder / "model.safetensors", metadata={"format": "pt"})
    mnt = mount(folder, "-o", "ro")
    assert "format: huggingface (safetensors)" in (mnt / ".ckptfs" / "info.yaml").read_text()
    got = {name: torch.from_numpy(np.load(_npy(mnt, name)).copy()) for name in state}
    _same(got, halved)
    assert (mnt / "pytorch_model.bin").is_file()  # a plain file beside the model's weights
    assert (mnt / "pytorch_model.bin").read_bytes() == (folder / "pytorch_model.bin").read_bytes()
    _same(_pretrained(folder), halved)  # transformers picks the same weights


def test_a_weights_file_that_is_no_torch_save_file_is_refused(tmp_path, mnt):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x00" * 64)
    done = run_ckptfs("mount", folder, mnt)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"{folder}/pytorch_model.bin" in done.stderr and "not a torch.save file" in done.stderr
    assert not is_mounted(mnt) and os.listdir(mnt) == []


def test_a_weights_file_holding_no_state_dict_is_shown_read_only(tmp_path, mount):
    folder = tmp_path / "odd"
    folder.mkdir()
    torch.save({"step": 3, "weights": {"w": torch.ones(2)}}, folder / "pytorch_model.bin")
    mnt = mount(folder)
    assert (mnt / "pytorch_model.bin" / "step.yaml").read_text().strip() == "3"
    assert "holds no state dict" in (mnt / ".ckptfs" / "info.yaml").read_text()
    assert b"no single index" in os.getxattr(mnt, "user.ckptfs.read_only")


def test_from_pretrained_loads_the_mount_with_its_edits(mount, saved, tmp_path):
    """`.ckptfs/pretrained/` is the folder from_pretrained loads: the
    folder's other files, and the tensors as they are now."""
    state, sharded, _ = saved
    folder = Path(shutil.copytree(sharded, tmp_path / "model"))
    mnt = mount(folder)
    view = mnt / ".ckptfs" / "pretrained"
    assert sorted(os.listdir(view)) == ["config.json", "model.safetensors", "special_tokens_map.json"]
    assert os.readlink(view / "config.json") == "../../config.json"
    _same(_pretrained(view), state)
    expected = dict(state)
    expected["pooler.dense.bias"] = torch.linspace(-1, 1, 32)
    np.save(_npy(mnt, "pooler.dense.bias"), expected["pooler.dense.bias"].numpy())
    _same(_pretrained(view), expected)  # before the unmount
    assert umount(mnt).returncode == 0
    _same(_pretrained(folder), expected)


def test_a_new_tensor_goes_to_the_last_shard_the_index_names_not_a_variant_beside(mount, saved, tmp_path):
    """`pytorch_model.fp16.bin` sorts after `pytorch_model-00004-of-00004.bin`
    but is no shard of the index: a new tensor went into it, and the index
    named it, so from_pretrained loaded the variant as a shard."""
    state, sharded, _ = saved
    folder = Path(shutil.copytree(sharded, tmp_path / "model"))
    variant = folder / "pytorch_model.fp16.bin"
    torch.save({k: v.half() for k, v in state.items()}, variant)
    variant_bytes = variant.read_bytes()
    mnt = mount(folder)
    np.save(mnt / "new.npy", np.arange(3, dtype=np.float32))
    assert umount(mnt).returncode == 0
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    assert index["weight_map"]["new"] == "pytorch_model-00004-of-00004.bin"
    assert "new" in torch.load(folder / "pytorch_model-00004-of-00004.bin", weights_only=True)
    assert variant.read_bytes() == variant_bytes
