"""JAX Orbax checkpoints: OCDBT, zarr and zarr3 layouts and a
CheckpointManager step folder and folder of steps, written at test time by orbax-checkpoint on
CPU JAX (tests/orbax_writer.py, in a program of its own), read through a
real mount, every array bit for bit what Orbax restores; the JSON metadata as
YAML; info, ls, cat, export and diff on them; a missing tensorstore in one
line; a broken array breaking only its own file."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes  # noqa: F401  (bfloat16 for np.load)
import numpy as np
import pytest
import yaml

from ckptfs.formats.orbax_metadata import Unfit, array
from ckptfs.formats.tensorstore_arrays import CACHE_CAP, boxes, cache_bytes

from .conftest import REPO, TIMED_APART, run_ckptfs

pytestmark = TIMED_APART

#: the layouts the writer makes, and where the checkpoint lies in each
LAYOUTS = {"ocdbt": "ocdbt", "zarr": "zarr", "zarr3": "zarr3", "manager": "manager/3", "steps": "manager"}
#: where the item of a CheckpointManager's save lies in the tree: its step folder, and its folder of steps
ITEM = {"manager": "default/", "steps": "3/default/"}


@pytest.fixture(scope="module")
def saved(written) -> Path:
    return written("tests.orbax_writer")


def _references(saved: Path, layout: str) -> dict[str, np.ndarray]:
    folder = saved / f"{LAYOUTS[layout].split('/')[0]}.ref"
    dtypes = json.loads((folder / "dtypes.json").read_text())
    return {p.stem: np.load(p).view(np.dtype(dtypes[p.stem])) for p in sorted(folder.glob("*.npy"))}


def _tree_path(layout: str, param: str) -> str:
    """Where the writer's arrays lie in the tree (its keys hold no dots):
    a step folder shows its item, `default/`, expanded, and so does a
    CheckpointManager's folder of steps."""
    return ITEM.get(layout, "") + param.replace(".", "/") + ".npy"


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert (got.dtype, got.shape) == (want.dtype, want.shape), what
    assert got.tobytes() == want.tobytes(), what


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_array_reads_bit_for_bit_as_orbax_restores_it(saved, mount, layout):
    """Through a real mount (tensorstore first used in the forked daemon):
    float32, bfloat16, float16, int32 in nested dicts and a list, a 0-d
    array, a Python int, and an array of several chunks, whole and from
    reads that start and end inside elements and chunks."""
    mnt = mount(saved / LAYOUTS[layout])
    references = _references(saved, layout)
    assert {"params.dense.bias", "layers.1.w", "step"} <= set(references)
    for param, want in references.items():
        _same(np.load(mnt / _tree_path(layout, param)), want, param)
    big = references["layers.1.w"]
    path = mnt / _tree_path(layout, "layers.1.w")
    start = path.stat().st_size - big.nbytes  # past the NPY header
    with open(path, "rb") as f:
        for offset, length in ((1, 7), (4 * 299, 4 * 302 + 3), (4 * 70_000 + 2, 200_001), (big.nbytes - 5, 5)):
            f.seek(start + offset)
            assert f.read(length) == big.tobytes()[offset: offset + length], (offset, length)
    assert os.getxattr(path, "user.ckptfs.name") == b"layers.1.w"
    chunk = json.loads(os.getxattr(path, "user.ckptfs.array_chunk"))
    assert chunk[0] * chunk[1] < big.size  # several chunks


def test_the_metadata_shows_as_yaml(saved, mount):
    """`_METADATA`, `_CHECKPOINT_METADATA`, `_sharding` (keyed by parameter
    name, not base64) and every array's zarr metadata; a string leaf as the
    YAML of its value."""
    mnt = mount(saved / "ocdbt")
    source = json.loads((saved / "ocdbt/_METADATA").read_text())
    assert yaml.safe_load((mnt / "_METADATA.yaml").read_text()) == source
    checkpoint = json.loads((saved / "ocdbt/_CHECKPOINT_METADATA").read_text())
    assert yaml.safe_load((mnt / "_CHECKPOINT_METADATA.yaml").read_text()) == checkpoint
    sharding = yaml.safe_load((mnt / "_sharding.yaml").read_text())
    assert sharding["layers.1.w"]["sharding_type"] == "SingleDeviceSharding"
    zarrs = yaml.safe_load((mnt / "_arrays.yaml").read_text())
    assert zarrs["layers.1.w"]["shape"] == [700, 300] and zarrs["params.dense.bias"]["dtype"] == "bfloat16"
    assert yaml.safe_load((mnt / "name.yaml").read_text()) == "tiny"
    assert (mnt / ".ckptfs/raw/manifest.ocdbt").read_bytes() == (saved / "ocdbt/manifest.ocdbt").read_bytes()
    assert not os.access(mnt / "params/dense/kernel.npy", os.W_OK)


def test_info_ls_cat(saved):
    done = run_ckptfs("info", saved / "zarr3")
    assert done.returncode == 0, done.stderr
    assert "orbax (zarr)" in done.stdout and "bfloat16" in done.stdout
    assert "7, 210,035 parameters" in done.stdout  # the arrays and the 0-d ones; the string is no tensor
    listed = run_ckptfs("ls", "-R", saved / "ocdbt").stdout.split()
    assert {"layers/1/w.npy", "params/dense/bias.npy", "step.npy", "name.yaml", "_METADATA.yaml"} <= set(listed)
    cat = subprocess.run([sys.executable, "-m", "ckptfs", "cat", str(saved / "ocdbt"), "params/emb.npy"],
                         capture_output=True, timeout=120, cwd=REPO)
    assert cat.returncode == 0, cat.stderr
    _same(np.load(io.BytesIO(cat.stdout)), _references(saved, "ocdbt")["params.emb"], "cat")


def test_export_to_safetensors(saved, tmp_path):
    """Every array by its parameter name, bit for bit (bfloat16 compared as
    its bits: safetensors' numpy loader has no bfloat16)."""
    from safetensors import safe_open

    out = tmp_path / "m.safetensors"
    done = run_ckptfs("export", saved / "ocdbt", out, timeout=300)
    assert done.returncode == 0, done.stderr
    references = _references(saved, "ocdbt")
    with safe_open(out, "pt") as f:
        assert set(f.keys()) == set(references)
        for name, want in references.items():
            got = f.get_tensor(name)
            bits = got.view(__import__("torch").int16) if want.dtype.name == "bfloat16" else got
            assert bits.numpy().tobytes() == want.tobytes(), name


def test_export_holds_a_few_chunks_not_the_array(written, tmp_path):
    """`ckptfs export` of a 256 MiB array in 4 MiB chunks grows its peak RSS
    by less than half the array above an export of the tiny checkpoint."""
    wide = written("tests.orbax_writer", "wide") / "wide"
    peaks = {}
    for name, source in (("tiny", written("tests.orbax_writer") / "ocdbt"), ("wide", wide)):
        proc = subprocess.Popen([sys.executable, "-m", "ckptfs", "export", str(source), str(tmp_path / f"{name}.st")],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, proc.stderr.read()
        proc.stderr.close()
        peaks[name] = usage.ru_maxrss / 1024  # MiB
    assert (tmp_path / "wide.st").stat().st_size > 256 << 20
    assert peaks["wide"] - peaks["tiny"] < 128, peaks


def test_diff_finds_the_one_value_changed(saved):
    done = run_ckptfs("diff", "--tensors-only", saved / "ocdbt", saved / "changed")
    assert done.returncode == 1, done.stderr
    assert "differs: layers.1.w: 1 of 210,000 elements" in done.stdout
    assert "6 tensors bit-equal" in done.stdout


def test_without_tensorstore_one_line_says_what_to_install(saved):
    code = ("import sys; sys.modules['tensorstore'] = None\n"
            "from ckptfs.cli import main; sys.exit(main(['info', sys.argv[1]]))")
    done = subprocess.run([sys.executable, "-c", code, str(saved / "ocdbt")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(saved / "ocdbt") in lines[0] and "pip install -e '.[tensorstore]'" in lines[0]


def test_opening_starts_no_tensorstore(saved, tmp_path):
    """The process that opens a checkpoint (the mount, before its daemon
    forks) does not import tensorstore, whose import starts a thread: the
    OCDBT metadata is read by a process of its own, the arrays on first read."""
    code = ("import sys; from ckptfs.formats import open_checkpoint\n"
            "ckpt = open_checkpoint(sys.argv[1], sys.argv[2])\n"
            "print(len(ckpt.tensors), 'tensorstore' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(saved / "ocdbt"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "False"]


def test_a_broken_array_breaks_only_its_own_file(saved, mount, tmp_path):
    """A chunk of one array overwritten with junk, and another array's
    `.zarray` claiming an astronomical shape: their files fail (EIO, the
    problem in an attribute and in info.yaml), every other array reads."""
    copy = tmp_path / "zarr"
    shutil.copytree(saved / "zarr", copy)
    chunk = next(p for p in sorted((copy / "layers.1.w").iterdir()) if not p.name.startswith("."))
    chunk.write_bytes(b"\x28\xb5\x2f\xfd junk" * 10)
    meta = json.loads((copy / "params.emb/.zarray").read_text())
    (copy / "params.emb/.zarray").write_text(json.dumps({**meta, "shape": [2 ** 47, 2 ** 6], "chunks": [5, 3]}))
    mnt = mount(copy, log_errors_expected=True)
    with pytest.raises(OSError) as e:
        (mnt / "layers/1/w.npy").read_bytes()
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError):
        (mnt / "params/emb.npy").read_bytes()
    assert b"larger than" in os.getxattr(mnt / "params/emb.npy", "user.ckptfs.problem")
    assert "params/emb.npy" in (mnt / ".ckptfs/info.yaml").read_text()
    references = _references(saved, "zarr")
    for param in ("params.dense.kernel", "params.dense.bias", "layers.0", "step", "count"):
        _same(np.load(mnt / _tree_path("zarr", param)), references[param], param)


def test_a_read_asks_for_no_element_outside_it():
    """The boxes a read becomes cover its elements exactly, in order: a
    small read of a large array never asks tensorstore for more."""
    shape = (3, 4, 5)
    flat = np.arange(60).reshape(shape)
    for first in range(60):
        for last in range(first, 61):
            got = [flat[box].ravel() for box in boxes(shape, first, last)]
            assert np.array_equal(np.concatenate(got) if got else np.array([], int), np.arange(first, last))
            assert len(got) <= 2 * len(shape) + 1
    assert boxes((), 0, 1) == [()]


def test_the_chunk_cache_holds_a_row_of_chunks():
    """Column-sharded chunks: a C-order read goes through a whole row of
    them before it leaves one, so the cache holds that row and one chunk
    more; never more than CACHE_CAP unless one chunk is larger."""
    def info(shape, chunks):
        return array(json.dumps({"zarr_format": 2, "dtype": "<f4", "shape": shape, "chunks": chunks}).encode(), False)

    columns = info([4096, 4096], [4096, 512])
    assert columns.band_bytes == 64 << 20
    assert cache_bytes([columns, info([10], [10])]) == (64 << 20) + (8 << 20) + (16 << 20)
    assert cache_bytes([info([4, 2 ** 30], [4, 1024])]) == CACHE_CAP + (16 << 20)
    assert cache_bytes([info([2 ** 29], [2 ** 29])]) == 2 * (2 << 30) + (16 << 20)


@pytest.mark.parametrize("claim", [
    {"shape": [2 ** 49], "chunks": [1]},
    {"shape": [4, 4], "chunks": [4]},
    {"shape": [10], "chunks": [0]},
    {"dtype": "|O8"},
    {"dtype": "<U4"},
    {"shape": [True]},
    {"shape": [2 ** 31, 2 ** 20], "chunks": [2 ** 31, 2 ** 20]},
])
def test_zarr_metadata_claims_are_checked(claim):
    good = {"zarr_format": 2, "dtype": "<f4", "shape": [10], "chunks": [5]}
    assert array(json.dumps(good).encode(), False).shape == (10,)
    with pytest.raises(Unfit):
        array(json.dumps({**good, **claim}).encode(), False)


def test_no_module_of_the_folder_the_user_stands_in_is_run(saved, tmp_path):
    """`python -c` looks for modules in its working directory first: the
    process that reads the OCDBT database must not import a `json.py` of
    the folder `ckptfs` was run from (a checkpoint's own folder, say)."""
    marker = tmp_path / "ran"
    for module in ("json", "tensorstore"):
        (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('{module}')\n")
    script = Path(sys.executable).with_name("ckptfs")  # `python -m` would itself import from the folder
    done = subprocess.run([script, "ls", str(saved / "ocdbt")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "_METADATA.yaml" in done.stdout
    assert not marker.exists(), marker.read_text()
