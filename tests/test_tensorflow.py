"""TensorFlow tensor bundles, checkpoint folders and SavedModels, written
at test time by TensorFlow itself (tests/tf_writer.py, in a process of its
own): every variable read through a real mount bit for bit what
`tf.train.load_checkpoint(...).get_tensor` gives, the object graph and
string variables as YAML, a damaged tensor found by its CRC-32C; info, ls,
cat, diff and export on them; the test-side bundle writer the hostile
cases use, read by TensorFlow."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import google_crc32c
import ml_dtypes  # noqa: F401  (bfloat16 for np.load)
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ckptfs.errors import FormatError
from ckptfs.formats import crc32c
from ckptfs.formats.tf_bundle import tree_path
from ckptfs.formats.tf_checked import checked
from ckptfs.sources.base import FileSource

from . import tf_bundle_writer
from .conftest import CKPTFS, REPO, TIMED_APART, run_ckptfs

WRITER = REPO / "tests" / "tf_writer.py"


def _run_writer(*args) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(WRITER), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def saves(tmp_path_factory) -> Path:
    """ckpt/, second/, sharded/, saved_model/ and the references, refs/."""
    out = tmp_path_factory.mktemp("tf")
    _run_writer(out)
    return out


def _references(saves: Path, name: str) -> dict[str, dict]:
    return json.loads((saves / "refs" / f"{name}.json").read_text())


def _same_as_tensorflow(folder: Path, saves: Path, name: str) -> None:
    """Every key TensorFlow reads is its file under `folder`, bit for bit."""
    references = _references(saves, name)
    npy = {str(p.relative_to(folder)) for p in folder.rglob("*.npy")}
    numeric = {k: v for k, v in references.items() if "file" in v}
    assert npy == {"/".join(tree_path(k, ".npy")) for k in numeric}
    for key, ref in numeric.items():
        path = folder.joinpath(*tree_path(key, ".npy"))
        served = np.load(path)
        assert str(served.dtype) == ref["dtype"] and list(served.shape) == ref["shape"], key
        assert served.tobytes() == (saves / "refs" / name / ref["file"]).read_bytes(), key
        assert os.getxattr(path, "user.ckptfs.name").decode() == key


@TIMED_APART
def test_a_checkpoint_folder_is_every_variable_tensorflow_reads(saves, mount):
    mnt = mount(saves / "ckpt")
    assert sorted(os.listdir(mnt)) == [".ckptfs", "checkpoint", "ckpt-1"]
    _same_as_tensorflow(mnt / "ckpt-1", saves, "ckpt")
    assert (mnt / "checkpoint").read_bytes() == (saves / "ckpt" / "checkpoint").read_bytes()
    raw = mnt / ".ckptfs" / "raw"
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        assert (raw / name).read_bytes() == (saves / "ckpt" / name).read_bytes()
    # zero-copy: the file's range is the variable's bytes in the data shard
    kernel = mnt / "ckpt-1" / "model" / "dense" / "kernel.npy"
    start, end = map(int, os.getxattr(kernel, "user.ckptfs.range").decode().split("-"))
    assert os.getxattr(kernel, "user.ckptfs.source").decode().endswith("ckpt-1.data-00000-of-00001")
    with open(saves / "ckpt" / "ckpt-1.data-00000-of-00001", "rb") as f:
        f.seek(start)
        assert f.read(end - start) == np.load(kernel).tobytes()
    with pytest.raises(OSError) as refused:
        kernel.write_bytes(b"x")
    assert refused.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


@TIMED_APART
def test_the_object_graph_and_string_variables_are_yaml(saves, mount):
    mnt = mount(saves / "ckpt" / "ckpt-1.index")
    graph = yaml.safe_load((mnt / "object_graph.yaml").read_text())
    keys = {a["checkpoint_key"] for node in graph["nodes"] for a in node.get("attributes", [])}
    assert keys == set(_references(saves, "ckpt")) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    paths = {node["path"]: node for node in graph["nodes"]}
    assert paths["/model/dense/kernel"]["attributes"][0]["checkpoint_key"] == \
        "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert set(paths["/model"]["children"]) == {"vocabulary", "dense", "half", "brain", "steps", "mask", "small", "wide",
                                                "waves", "label"}
    label = yaml.safe_load((mnt / "model" / "label.yaml").read_text())
    assert label == {"dtype": "string", "shape": [], "values": "a string variable"}


@TIMED_APART
def test_a_sharded_checkpoint_has_its_partitioned_variables_whole(saves, mount):
    shards = sorted(p.name for p in (saves / "sharded").glob("ckpt-1.data-*"))
    assert len(shards) > 1
    mnt = mount(saves / "sharded" / "ckpt-1.index")
    _same_as_tensorflow(mnt, saves, "sharded")
    assert sorted(os.listdir(mnt / ".ckptfs" / "raw")) == sorted(["ckpt-1.index", *shards])
    chunks = json.loads(os.getxattr(mnt / "model" / "dense" / "kernel.npy", "user.ckptfs.chunks"))
    assert len(chunks) > 1  # TensorFlow split it across shards: assembled on read


@TIMED_APART
def test_a_v1_saver_folder_has_its_partitioned_variable_whole(saves, mount):
    mnt = mount(saves / "saver")
    assert sorted(os.listdir(mnt)) == [".ckptfs", "checkpoint", "model.ckpt", "model.ckpt.meta"]
    _same_as_tensorflow(mnt / "model.ckpt", saves, "saver")
    assert len(json.loads(os.getxattr(mnt / "model.ckpt" / "part" / "w.npy", "user.ckptfs.chunks"))) == 3


@TIMED_APART
def test_a_saved_model_shows_its_variables_and_keeps_its_graph(saves, mount):
    mnt = mount(saves / "saved_model")
    assert sorted(os.listdir(mnt)) == [".ckptfs", "assets", "fingerprint.pb", "saved_model.pb", "variables"]
    for name in ("saved_model.pb", "fingerprint.pb", "assets/vocab.txt"):
        assert (mnt / name).read_bytes() == (saves / "saved_model" / name).read_bytes()
    _same_as_tensorflow(mnt / "variables", saves, "variables")
    assert (mnt / "variables" / "object_graph.yaml").is_file()
    assert (mnt / ".ckptfs" / "raw" / "variables" / "variables.index").read_bytes() == \
        (saves / "saved_model" / "variables" / "variables.index").read_bytes()


def test_info_ls_cat_diff_and_export(saves, tmp_path):
    info = json.loads(run_ckptfs("info", "--json", saves / "ckpt").stdout)
    assert info["format"] == "tensorflow checkpoint folder" and info["tensors"] == 12
    listed = run_ckptfs("ls", "-l", saves / "saved_model", "variables/dense")
    assert listed.returncode == 0 and "kernel.npy  float32 [3, 4]" in listed.stdout, listed.stdout
    cat = subprocess.run([*CKPTFS, "cat", str(saves / "ckpt" / "ckpt-1.index"), "model/wide.npy"],
                         capture_output=True, timeout=120)
    assert cat.returncode == 0 and np.load(io.BytesIO(cat.stdout)) == 2.5
    diff = run_ckptfs("diff", saves / "ckpt", saves / "second")
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "differs: model/dense/bias/.ATTRIBUTES/VARIABLE_VALUE: 4 of 4 elements" in diff.stdout
    assert "11 tensors bit-equal" in diff.stdout
    out = tmp_path / "ckpt.safetensors"
    done = run_ckptfs("export", saves / "sharded", out, "--to", "safetensors")
    assert done.returncode == 0, done.stderr
    exported = load_file(out)
    references = {k: v for k, v in _references(saves, "sharded").items() if "file" in v}
    assert set(exported) == set(references)
    for key, ref in references.items():
        got = exported[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert got == (saves / "refs" / "sharded" / ref["file"]).read_bytes(), key


def _damaged_copy(saves: Path, tmp_path: Path) -> Path:
    """The checkpoint folder with one byte of model/dense/kernel flipped,
    found where `.ckptfs/tensors.tsv` says its bytes lie."""
    copy = tmp_path / "damaged"
    shutil.copytree(saves / "ckpt", copy)
    index = run_ckptfs("cat", copy, ".ckptfs/tensors.tsv").stdout.splitlines()
    columns = index[0].split("\t")
    row = next(dict(zip(columns, line.split("\t"))) for line in index[1:] if "dense/kernel" in line)
    data = copy / row["file"]
    raw = bytearray(data.read_bytes())
    raw[int(row["offset"]) + 5] ^= 0x10
    data.write_bytes(bytes(raw))
    return copy


@TIMED_APART
def test_a_damaged_tensor_is_found_by_its_crc_when_read_through(saves, tmp_path, mount):
    copy = _damaged_copy(saves, tmp_path)
    mnt = mount(copy, log_errors_expected=True)
    kernel = mnt / "ckpt-1" / "model" / "dense" / "kernel.npy"
    with pytest.raises(OSError) as failed:
        kernel.read_bytes()
    assert failed.value.errno == errno.EIO
    assert os.getxattr(kernel, "user.ckptfs.problem").decode().endswith(
        "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE: its bytes do not match the CRC-32C its bundle entry keeps "
        "(the data shard is damaged)")
    _same_as_tensorflow_but(mnt / "ckpt-1", saves, "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    said = run_ckptfs("cat", copy, "ckpt-1/model/dense/kernel.npy")
    assert said.returncode != 0 and said.stderr.count("\n") == 1
    assert "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE: its bytes do not match the CRC-32C" in said.stderr
    refused = run_ckptfs("export", copy, tmp_path / "out.safetensors", "--to", "safetensors")
    assert refused.returncode != 0 and "CRC-32C" in refused.stderr and not (tmp_path / "out.safetensors").exists()


def test_only_a_read_through_from_the_start_is_checked(tmp_path):
    """Reads elsewhere are served as they are (zero-copy, unchecked); reads
    that run from the first byte to the last are checked, once."""
    data = bytearray(np.arange(4096, dtype=np.uint8).tobytes())
    path = tmp_path / "shard"
    path.write_bytes(bytes(data))
    good = checked(FileSource(str(path)), 100, 3000, google_crc32c.value(bytes(data[100:3100])), "good")
    assert good.pread(2000, 1000) == data[2100:3100] and not good.run.checked
    for start in range(0, 3000, 700):
        good.pread(start, 700)
    assert good.run.checked
    data[150] ^= 1
    path.write_bytes(bytes(data))
    bad = checked(FileSource(str(path)), 100, 3000, good.run.crc, "bad")
    assert bad.pread(1000, 2000) == data[1100:3100]  # not from the start: served, unchecked
    bad.pread(0, 1500)
    with pytest.raises(FormatError, match="bad: its bytes do not match the CRC-32C"):
        bad.pread(1500, 1500)
    with pytest.raises(FormatError):
        bad.pread(0, 10)  # and every read after


def _same_as_tensorflow_but(folder: Path, saves: Path, damaged: str) -> None:
    for key, ref in _references(saves, "ckpt").items():
        if "file" in ref and key != damaged:
            assert np.load(folder.joinpath(*tree_path(key, ".npy"))).tobytes() == \
                (saves / "refs" / "ckpt" / ref["file"]).read_bytes(), key


@TIMED_APART
def test_tensorflow_reads_the_test_side_bundle_writer(tmp_path, mount):
    """The hostile cases' writer lays bundles out as TensorFlow does: its
    bundle, in two data shards, read by TensorFlow and by a mount."""
    folder = tmp_path / "own"
    folder.mkdir()
    index = tf_bundle_writer.write_arrays(folder / "b", tf_bundle_writer.ARRAYS, shards=2)
    _run_writer(tmp_path, folder / "b")
    references = _references(tmp_path, "own")
    assert set(references) == set(tf_bundle_writer.ARRAYS)
    for key, array in tf_bundle_writer.ARRAYS.items():
        assert (tmp_path / "refs" / "own" / references[key]["file"]).read_bytes() == array.tobytes(), key
    mnt = mount(index)
    for key, array in tf_bundle_writer.ARRAYS.items():
        served = np.load(mnt.joinpath(*tree_path(key, ".npy")))
        assert served.dtype == array.dtype and served.tobytes() == array.tobytes(), key
    # an optimizer slot: beside its variable's file, the leading dot of `.OPTIMIZER_SLOT` escaped
    assert (mnt / "layer" / "kernel" / "%2EOPTIMIZER_SLOT" / "optimizer" / "m.npy").is_file()
    assert (mnt / "layer" / "kernel.npy").is_file()


@pytest.mark.parametrize("size", [0, 1, 7, 511, 512, 513, 4096 + 3, 131072, (1 << 20) + 17])
def test_the_numpy_crc32c_is_google_crc32c(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c._numpy_value(data, 0) == google_crc32c.value(data)
    half = size // 2
    assert crc32c._numpy_value(data[half:], crc32c._numpy_value(data[:half], 0)) == google_crc32c.value(data)
    assert crc32c.value(data) == google_crc32c.value(data)
    assert crc32c.unmask(crc32c.mask(0x12345678)) == 0x12345678
    assert crc32c.mask(0x12345678) == tf_bundle_writer.mask(0x12345678)


@pytest.mark.parametrize("head", [b"\0\0\x82\x80\x80\0", b"\0\0\x05", b"\0\0\x05\x08"])
def test_a_file_cut_short_after_the_first_entry_is_not_a_bundle_and_raises_nothing(tmp_path, head):
    path = tmp_path / "cut.index"
    path.write_bytes(head)
    done = run_ckptfs("info", path)
    assert done.returncode != 0
    assert done.stderr.startswith(f"ckptfs: {path}: ") and "internal error" not in done.stderr, done.stderr
