"""`ckptfs info`, `ls` and `cat` without FUSE: the same names and bytes as a
mount of the same checkpoint, facts equal to what the libraries count."""

from __future__ import annotations

import io
import json
import os
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import ckptfs

from .conftest import CKPTFS, FIXTURES, TIMEOUT, run_ckptfs

SOURCES = {
    "nemo": FIXTURES / "nemo" / "tiny.nemo",
    "lightning": FIXTURES / "lightning" / "tiny.ckpt",
    "hf": FIXTURES / "hf" / "bert_tiny_sharded",
    "dcp": FIXTURES / "dcp" / "fsdp2_2rank",
}


def _mount_paths(mnt) -> list[str]:
    paths = []
    for top, dirs, files in os.walk(mnt):
        dirs.sort()
        for name in sorted(dirs + files):
            paths.append(os.path.relpath(os.path.join(top, name), mnt))
    return sorted(paths)


@pytest.mark.parametrize("kind", SOURCES)
def test_ls_and_cat_give_the_mounts_names_and_bytes(kind, mount):
    source = SOURCES[kind]
    mnt = mount(source, "-o", "ro")
    listed = run_ckptfs("ls", "-R", source)
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.splitlines()) == _mount_paths(mnt)
    top = run_ckptfs("ls", source).stdout.splitlines()
    assert top == sorted(os.listdir(mnt))
    files = [p for p in _mount_paths(mnt) if os.path.isfile(mnt / p) and not os.path.islink(mnt / p)]
    assert files
    opened = ckptfs.open(source)  # the code `cat` runs, without starting a process per file
    for path in files:
        assert opened.read(path) == (mnt / path).read_bytes(), path
    for path in files[:: max(1, len(files) // 4)]:
        done = subprocess.run(CKPTFS + ["cat", str(source), path], capture_output=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        assert done.stdout == (mnt / path).read_bytes(), path


def test_ls_long_and_json_say_what_each_tensor_is():
    source = SOURCES["hf"]
    entries = json.loads(run_ckptfs("ls", "--json", "-R", source).stdout)
    tensors = {e["name"]: e for e in entries if "dtype" in e}
    with_library, first_of_shard = {}, []
    for shard in sorted(source.glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            first_of_shard.append(next(iter(f.keys())))
            for name in f.keys():
                with_library[name] = f.get_tensor(name)
    assert set(tensors) == set(with_library)
    checkpoint = ckptfs.open(source)
    for name, array in with_library.items():
        entry = tensors[name]
        assert (entry["dtype"], entry["shape"], entry["type"]) == (str(array.dtype), list(array.shape), "file")
        # the bytes `cat` prints (ckptfs.open's read): the library's own values, bit for bit
        npy = checkpoint.read(entry["path"])
        assert np.array_equal(np.load(io.BytesIO(npy)), array)
        if name in first_of_shard:  # the command itself, once per shard (a process each: minutes for all on a busy machine)
            done = subprocess.run(CKPTFS + ["cat", str(source), entry["path"]], capture_output=True, timeout=TIMEOUT)
            assert done.stdout == npy, name
    long = run_ckptfs("ls", "-l", source, "embeddings/word_embeddings").stdout
    assert long.split() == ["-", f"{tensors['embeddings.word_embeddings.weight']['size']:,}", "weight.npy",
                            "float32", "[300,", "32]"]


def test_info_counts_what_safetensors_counts(tmp_path):
    path = tmp_path / "m.safetensors"
    arrays = {"model.a.weight": np.ones((3, 4), np.float32), "model.b": np.zeros(5, np.float16),
              "head.weight": np.arange(6, dtype=np.int64).reshape(2, 3)}
    save_file(arrays, str(path))
    done = run_ckptfs("info", "--json", path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["format"], info["source"], info["source_bytes"], info["writable"]) == (
        "safetensors", str(path), path.stat().st_size, True)
    assert info["tensors"] == 3 and info["parameters"] == sum(a.size for a in arrays.values())
    assert info["tensor_bytes"] == sum(a.nbytes for a in arrays.values())
    assert info["by_dtype"] == {"float16": {"tensors": 1, "parameters": 5, "bytes": 10},
                                "float32": {"tensors": 1, "parameters": 12, "bytes": 48},
                                "int64": {"tensors": 1, "parameters": 6, "bytes": 48}}
    assert info["by_prefix"] == {"head": {"tensors": 1, "parameters": 6, "bytes": 48},
                                 "model": {"tensors": 2, "parameters": 17, "bytes": 58}}
    assert info["pickle_globals"] == [] and isinstance(info["notes"], list)
    text = run_ckptfs("info", path).stdout
    assert f"source      {path}" in text and "tensors     3, 23 parameters" in text


def test_info_names_the_globals_a_pickle_would_import():
    info = json.loads(run_ckptfs("info", "--json", SOURCES["lightning"]).stdout)
    assert "torch._utils._rebuild_tensor_v2" in info["pickle_globals"]
    assert info["format"].startswith("torch") and info["tensors"] > 0


def test_problems_are_one_line_with_status_1(tmp_path):
    source = SOURCES["nemo"]
    for args, message in (
        (("ls", source, "no/such"), f"ckptfs: {source}: no: no such file or folder in the checkpoint\n"),
        (("cat", source, "model_weights.ckpt"), f"ckptfs: {source}: model_weights.ckpt: a folder (ckptfs ls lists it)\n"),
        (("info", tmp_path / "absent.pt"), f"ckptfs: {tmp_path / 'absent.pt'}: no such file or directory\n"),
    ):
        done = run_ckptfs(*args)
        assert (done.returncode, done.stderr, done.stdout) == (1, message, ""), args


def test_cat_into_a_closed_pipe_ends_quietly():
    done = subprocess.run(f"{' '.join(CKPTFS)} cat {SOURCES['hf']} embeddings/word_embeddings/weight.npy | head -c 6",
                          shell=True, capture_output=True, timeout=TIMEOUT)
    assert done.stdout == b"\x93NUMPY" and done.stderr == b""
