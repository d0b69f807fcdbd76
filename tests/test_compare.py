"""Comparing checkpoints with the tools everybody has: `diff -r` of two
mounts names the tensors that differ and nothing else; `ls -a` lists a
mount as it lists any directory."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from .conftest import FIXTURES


def _diff(a: Path, b: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["diff", "-r", *options, a, b], capture_output=True, text=True, timeout=60)


def _copies(tmp_path: Path, make) -> tuple[Path, Path]:
    """The same checkpoint twice, under the same name in two folders."""
    paths = []
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        paths.append(make(tmp_path / run))
    return paths[0], paths[1]


def _safetensors(folder: Path) -> Path:
    path = folder / "model.safetensors"
    save_file({"enc.w": np.arange(12, dtype=np.float32).reshape(3, 4), "enc.b": np.ones(4, dtype=np.float32)}, str(path))
    return path


def _nemo(folder: Path) -> Path:
    return Path(shutil.copy(FIXTURES / "nemo" / "tiny.nemo", folder / "tiny.nemo"))


def _hf(folder: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", folder / "bert"))


@pytest.mark.parametrize("make", [_safetensors, _nemo, _hf], ids=["safetensors", "nemo", "huggingface"])
def test_two_mounts_of_the_same_bytes_compare_equal(mount, tmp_path, make):
    a, b = _copies(tmp_path, make)
    done = _diff(mount(a, "-o", "ro"), mount(b, "-o", "ro"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_copies_under_other_names_differ_only_in_the_raw_mirror(mount, tmp_path):
    a = _nemo(tmp_path)
    b = Path(shutil.copy(a, tmp_path / "renamed.nemo"))
    done = _diff(mount(a, "-o", "ro"), mount(b, "-o", "ro"), "-x", "raw")
    assert done.returncode == 0 and done.stdout == "", done.stdout


def test_diff_names_the_tensor_that_differs(mount, tmp_path):
    a, b = _copies(tmp_path, _safetensors)
    save_file({"enc.w": np.arange(12, dtype=np.float32).reshape(3, 4), "enc.b": np.zeros(4, dtype=np.float32)}, str(b))
    mnt_a, mnt_b = mount(a, "-o", "ro"), mount(b, "-o", "ro")
    done = _diff(mnt_a, mnt_b, "-q", "-x", "raw", "-x", "export")
    assert done.returncode == 1
    assert done.stdout == f"Files {mnt_a}/enc/b.npy and {mnt_b}/enc/b.npy differ\n"
    done = _diff(mnt_a, mnt_b, "-q")  # and the source file itself, in the raw mirror, and the export view
    assert sorted(done.stdout.splitlines()) == [
        f"Files {mnt_a}/.ckptfs/export/hf/model.safetensors and {mnt_b}/.ckptfs/export/hf/model.safetensors differ",
        f"Files {mnt_a}/.ckptfs/export/model.safetensors and {mnt_b}/.ckptfs/export/model.safetensors differ",
        f"Files {mnt_a}/.ckptfs/raw/model.safetensors and {mnt_b}/.ckptfs/raw/model.safetensors differ",
        f"Files {mnt_a}/enc/b.npy and {mnt_b}/enc/b.npy differ",
    ]


def test_ls_a_shows_dot_and_dot_dot(mount, tmp_path):
    mnt = mount(_safetensors(tmp_path), "-o", "ro")
    for folder in (mnt, mnt / "enc"):
        done = subprocess.run(["ls", "-a", folder], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.split()[:2] == [".", ".."], done.stdout
    assert (mnt / "enc" / "..").resolve() == mnt and sorted(p.name for p in (mnt / "enc").iterdir()) == ["b.npy", "w.npy"]
    inode = subprocess.run(["stat", "-c", "%i", mnt / "enc" / ".", mnt / "enc"], capture_output=True, text=True,
                           timeout=60).stdout
    assert len(set(inode.split())) == 1
