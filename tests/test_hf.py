"""Hugging Face directories: the transformers-written fixture and generated
ones, against the safetensors library."""

import json
import os
import shutil
from pathlib import Path

import ml_dtypes  # noqa: F401  (bfloat16 for np.load)
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import FIXTURES, pretrained_state, umount, write_refused

BERT = FIXTURES / "hf" / "bert_tiny_sharded"


def _npy(mnt, name):
    return Path(mnt, *name.split(".")).with_name(name.split(".")[-1] + ".npy")


def test_sharded_fixture_merges_into_one_tree(mount):
    mnt = mount(BERT)
    weight_map = json.loads((BERT / "model.safetensors.index.json").read_text())["weight_map"]
    shards = {f: load_file(str(BERT / f)) for f in set(weight_map.values())}
    assert len(weight_map) == 39
    for name, shard in weight_map.items():
        expected = shards[shard][name].numpy()
        got = np.load(_npy(mnt, name), mmap_mode="r")
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), name
    info = (Path(mnt) / ".ckptfs" / "info.yaml").read_text()
    assert "format: huggingface (safetensors)" in info and "tensors: 39" in info


def test_shards_are_read_only_subfolders(mount):
    mnt = mount(BERT)
    for shard in sorted(BERT.glob("*.safetensors")):
        folder = Path(mnt) / shard.name
        assert folder.is_dir()
        tensors = load_file(str(shard))
        npys = sorted(str(p.relative_to(folder))[:-4].replace("/", ".") for p in folder.rglob("*.npy"))
        assert npys == sorted(tensors)
        for name, t in tensors.items():
            assert np.load(_npy(folder, name)).tobytes() == t.numpy().tobytes()
        assert (folder / "__metadata__.yaml").read_text() == "format: pt\n"
        assert os.stat(folder).st_mode & 0o222 == 0
        with pytest.raises(OSError):
            open(folder / "new.npy", "wb")


def test_other_files_appear_as_they_are(mount):
    mnt = mount(BERT)
    for name in ("config.json", "model.safetensors.index.json"):
        assert (Path(mnt) / name).read_bytes() == (BERT / name).read_bytes()
    for f in BERT.iterdir():
        assert (Path(mnt) / ".ckptfs" / "raw" / f.name).read_bytes() == f.read_bytes()


def test_unsharded_directory_with_subfolders_and_cache_symlinks(mount, tmp_path):
    """The layout of a Hugging Face cache snapshot: files are symlinks to the
    repository's blobs (`models--ORG--NAME/snapshots/REV/x -> ../../blobs/HASH`)."""
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    (snap / "2_Dense").mkdir(parents=True)
    tensors = {"model.embed.weight": torch.randn(4, 3), "lm_head.weight": torch.randn(3, 4).to(torch.bfloat16)}
    save_file(tensors, str(blobs / "aa11"), metadata={"format": "pt"})
    (blobs / "bb22").write_text('{"model_type": "tiny"}')
    os.symlink("../../blobs/aa11", snap / "model.safetensors")
    os.symlink("../../blobs/bb22", snap / "config.json")
    (snap / "2_Dense" / "config.json").write_text("{}")
    (snap / "lm_head").write_text("a plain file whose name a tensor part also wants")
    mnt = Path(mount(snap))
    assert (mnt / "config.json").read_text() == '{"model_type": "tiny"}'
    assert (mnt / "2_Dense" / "config.json").read_text() == "{}"
    assert (mnt / "lm_head").read_text().startswith("a plain file")
    assert np.load(mnt / "model" / "embed" / "weight.npy").tobytes() == tensors["model.embed.weight"].numpy().tobytes()
    escaped = mnt / "%6Cm_head" / "weight.npy"  # the tensor part yields its name to the file
    assert os.getxattr(escaped, "user.ckptfs.name") == b"lm_head.weight"
    assert np.load(escaped).tobytes() == tensors["lm_head.weight"].view(torch.int16).numpy().tobytes()
    assert (mnt / "model.safetensors").is_dir()


def test_duplicate_tensor_without_index_has_no_merged_tree(mount, tmp_path):
    d = tmp_path / "dup"
    d.mkdir()
    save_file({"w": torch.ones(2)}, str(d / "a.safetensors"))
    save_file({"w": torch.zeros(2)}, str(d / "b.safetensors"))
    mnt = Path(mount(d))
    assert not (mnt / "w.npy").exists()
    assert np.load(mnt / "a.safetensors" / "w.npy").tolist() == [1, 1]
    assert "more than one shard" in (mnt / ".ckptfs" / "info.yaml").read_text()


def test_index_naming_a_tensor_absent_from_its_shard(tmp_path):
    from ckptfs.errors import FormatError
    from ckptfs.formats import open_checkpoint

    d = tmp_path / "hf"
    shutil.copytree(BERT, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00004.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="'ghost.weight' is not in its shard"):
        open_checkpoint(str(d), str(tmp_path / "cache"))


def test_a_file_made_in_the_mount_is_written_under_the_name_it_stands_for(mount, tmp_path):
    """A name made in the mount is unescaped when the folder is written: one
    that stands for `..` (`%2E%2E`) is refused when closed and at unmount,
    and a `%` that starts no escape (`50%.txt`) is kept as it is."""
    src = Path(shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", tmp_path / "bert"))
    mnt = mount(src, log_errors_expected=True)
    (mnt / "50%.txt").write_text("half")
    (mnt / "%2E%2E").mkdir()
    write_refused(mnt / "%2E%2E" / "climbed.txt", b"out")
    done = umount(mnt)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot be named '../climbed.txt': the name '..'" in done.stderr and "the edits are kept" in done.stderr
    assert not (tmp_path / "climbed.txt").exists()
    mnt = mount(src, "--resume")
    shutil.rmtree(mnt / "%2E%2E")
    assert umount(mnt).returncode == 0
    assert (src / "50%.txt").read_text() == "half" and not (tmp_path / "climbed.txt").exists()



def _equal_states(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].numpy().tobytes() == tensor.numpy().tobytes(), name


def test_from_pretrained_loads_the_mount_with_its_edits(mount, tmp_path):
    """`.ckptfs/pretrained/` is what from_pretrained loads: config.json (a
    link into the mount) and one model.safetensors of the tensors as they
    are now, edits included, before the unmount."""
    original, _ = pretrained_state(BERT)
    view = mount(BERT, "-o", "ro") / ".ckptfs" / "pretrained"
    assert sorted(os.listdir(view)) == ["config.json", "model.safetensors"]
    _equal_states(pretrained_state(view)[0], original)
    src = Path(shutil.copytree(BERT, tmp_path / "bert"))
    mnt = mount(src)
    expected = dict(original)
    expected["pooler.dense.bias"] = torch.linspace(-1, 1, original["pooler.dense.bias"].numel())
    np.save(_npy(mnt, "pooler.dense.bias"), expected["pooler.dense.bias"].numpy())
    (mnt / "config.json").write_text((mnt / "config.json").read_text().replace('"hidden_act": "gelu"',
                                                                               '"hidden_act": "relu"'))
    state, config = pretrained_state(mnt / ".ckptfs" / "pretrained")
    _equal_states(state, expected)
    assert config.hidden_act == "relu"  # the config as the mount has it now
    weights = mnt / ".ckptfs" / "pretrained" / "model.safetensors"
    size = os.stat(weights).st_size  # the kernel keeps it...
    np.save(mnt / "extra.npy", np.arange(1000, dtype=np.float32))  # ...and the file grows: read at once, whole
    assert len(weights.read_bytes()) > size + 4000  # the data, and the header's new entry
    assert load_file(str(weights))["extra"].tolist() == list(range(1000))
    (mnt / "extra.npy").unlink()
    assert umount(mnt).returncode == 0
    _equal_states(pretrained_state(src)[0], expected)


def test_a_safetensors_file_in_a_subfolder_is_kept_when_the_model_is_edited(mount, tmp_path):
    """A sentence-transformers folder: `2_Dense/model.safetensors` holds none
    of the model's tensors; an edit of the model leaves it as it was (it
    was written back empty)."""
    folder = tmp_path / "st"
    (folder / "2_Dense").mkdir(parents=True)
    save_file({"embed.weight": torch.ones(4, 3)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    dense = folder / "2_Dense" / "model.safetensors"
    save_file({"linear.weight": torch.full((2, 3), 7.0)}, str(dense), metadata={"format": "pt"})
    (folder / "2_Dense" / "config.json").write_text('{"in_features": 3}')
    (folder / "config.json").write_text("{}")
    kept, inode = dense.read_bytes(), dense.stat().st_ino
    mnt = mount(folder)
    np.save(mnt / "embed" / "weight.npy", np.zeros((4, 3), np.float32))
    assert umount(mnt).returncode == 0
    assert load_file(str(folder / "model.safetensors"))["embed.weight"].sum() == 0
    assert dense.read_bytes() == kept and dense.stat().st_ino == inode
    view = mount(folder, "-o", "ro") / ".ckptfs" / "pretrained"  # the subfolder is what from_pretrained reads too
    assert sorted(os.listdir(view)) == ["2_Dense", "config.json", "model.safetensors"]
    assert (view / "2_Dense" / "model.safetensors").is_dir()  # as the mount shows it


def test_a_variant_beside_the_weights_is_kept_out_of_the_merged_tree(mount, tmp_path):
    """`model.safetensors` with `model.fp16.safetensors` beside it (save_pretrained's
    `variant`) and no index: transformers loads the first, and so the merged
    tree is its tensors; the variant is its own read-only folder, kept as it
    is (hard-linked) when the model is written."""
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"w": torch.ones(4)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    variant = folder / "model.fp16.safetensors"
    save_file({"w": torch.ones(4, dtype=torch.float16)}, str(variant), metadata={"format": "pt"})
    inode = variant.stat().st_ino
    mnt = mount(folder)
    assert np.load(mnt / "w.npy").dtype == np.float32 and (mnt / "model.fp16.safetensors" / "w.npy").is_file()
    np.save(mnt / "w.npy", np.zeros(4, np.float32))
    assert umount(mnt).returncode == 0
    assert load_file(str(folder / "model.safetensors"))["w"].tolist() == [0] * 4
    assert variant.stat().st_ino == inode and load_file(str(variant))["w"].tolist() == [1] * 4
