"""torch.distributed.checkpoint directories: consolidated tensors and shard
folders, compared with torch bit for bit."""

import os
from pathlib import Path

import ml_dtypes  # noqa: F401
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from .conftest import FIXTURES

FSDP2 = FIXTURES / "dcp" / "fsdp2_2rank"


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _npy(mnt: Path, fqn: str) -> Path:
    parts = fqn.split(".")
    return mnt.joinpath(*parts[:-1], parts[-1] + ".npy")


def test_fsdp2_fixture_consolidates_row_and_column_shards(mount):
    mnt = Path(mount(FSDP2))
    ref = torch.load(FSDP2.parent / "fsdp2_2rank.ref.pt", weights_only=False)
    for name, tensor in ref["model"].items():
        loaded = np.load(_npy(mnt, f"model.{name}"), mmap_mode="r")
        assert loaded.shape == tuple(tensor.shape) and loaded.tobytes() == _bytes(tensor), name
    for step in mnt.glob("optim/state/*/*/step.npy"):  # 0-d, replicated
        assert np.load(step).shape == ()
    col = _npy(mnt, "extra.colsharded")
    assert np.load(col).tobytes() == _bytes(ref["colsharded"])
    whole = col.read_bytes()
    fd = os.open(col, os.O_RDONLY)
    try:
        for off in range(0, len(whole), 5):
            assert os.pread(fd, 37, off) == whole[off : off + 37]
    finally:
        os.close(fd)
    assert np.load(_npy(mnt, "extra.replicated")).dtype == np.dtype("bfloat16")
    assert yaml.safe_load((mnt / "extra" / "step.yaml").read_text()) is not None
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert info["format"] == "torch.distributed.checkpoint" and "notes" not in info


def test_shards_are_read_only_folders_of_chunks(mount):
    mnt = Path(mount(FSDP2))
    ref = torch.load(FSDP2.parent / "fsdp2_2rank.ref.pt", weights_only=False)
    top = ref["model"]["0.weight"]
    first = np.load(mnt / "__0_0.distcp" / "model" / "0" / "weight@0_0.npy")
    second = np.load(mnt / "__1_0.distcp" / "model" / "0" / "weight@10_0.npy")
    assert first.tobytes() == _bytes(top[:10]) and second.tobytes() == _bytes(top[10:])
    left = np.load(mnt / "__0_0.distcp" / "extra" / "colsharded@0_0.npy")
    assert left.tobytes() == _bytes(ref["colsharded"][:, :3])
    assert os.stat(mnt / "__0_0.distcp").st_mode & 0o222 == 0
    for f in FSDP2.iterdir():
        assert (mnt / ".ckptfs" / "raw" / f.name).read_bytes() == f.read_bytes()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_single_process_save_with_many_dtypes(mount, tmp_path):
    state = {
        "w": torch.randn(6, 4),
        "h": torch.randn(3, 3).to(torch.bfloat16),
        "i": torch.arange(10, dtype=torch.int64),
        "b": torch.tensor([True, False]),
        "nested": {"x": torch.ones(2, 2, dtype=torch.float16)},
        "step": 41,
    }
    dcp.save(state, checkpoint_id=str(tmp_path / "ck"))
    mnt = Path(mount(tmp_path / "ck"))
    loaded = {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else v for k, v in state.items() if k != "nested"}
    loaded["nested"] = {"x": torch.zeros(2, 2, dtype=torch.float16)}
    dcp.load(loaded, checkpoint_id=str(tmp_path / "ck"))
    expected = [(k, loaded[k]) for k in ("w", "h", "i", "b")] + [("nested.x", loaded["nested"]["x"])]
    for fqn, tensor in expected:
        assert np.load(_npy(mnt, fqn)).tobytes() == _bytes(tensor), fqn
    assert yaml.safe_load((mnt / "step.yaml").read_text()) == 41


def test_missing_shard_is_named_and_the_rest_served(mount, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(FSDP2, broken)
    (broken / "__1_0.distcp").unlink()
    mnt = Path(mount(broken))
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert any("__1_0.distcp" in n and "missing" in n for n in notes)
    assert not _npy(mnt, "model.0.weight").exists()
    assert not (mnt / "__1_0.distcp").exists()


def test_missing_metadata_is_a_clear_error(tmp_path):
    from .conftest import run_ckptfs

    d = tmp_path / "nometa"
    d.mkdir()
    (d / "__0_0.distcp").write_bytes(b"x")
    (tmp_path / "mnt").mkdir()
    done = run_ckptfs("mount", d, tmp_path / "mnt")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.strip() == f"ckptfs: {d}: distributed checkpoint without its .metadata file: the shards cannot be placed"


def test_metadata_globals_are_audited(mount):
    mnt = Path(mount(FSDP2))
    audit = (mnt / ".ckptfs" / "pickle-globals.txt").read_text()
    assert "torch.distributed.checkpoint.metadata.Metadata" in audit


@pytest.fixture(scope="module", params=[2, 3])
def multirank(request, tmp_path_factory):
    """A DCP directory written by `world_size` gloo ranks in subprocesses."""
    import subprocess
    import sys

    from .conftest import REPO

    out = tmp_path_factory.mktemp(f"dcp{request.param}") / "ckpt"
    port = str(29600 + request.param + os.getpid() % 200)
    done = subprocess.run(
        [sys.executable, "-m", "tests.dcp_writer", str(out), str(request.param), port],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, request.param


def test_multirank_dtensors_consolidate_bit_for_bit(mount, multirank):
    from .dcp_writer import reference

    path, world_size = multirank
    mnt = Path(mount(path))
    shards = sorted(p.name for p in path.glob("*.distcp"))
    assert len(shards) == world_size
    for fqn, tensor in reference(world_size).items():
        loaded = np.load(_npy(mnt, fqn))
        assert loaded.shape == tuple(tensor.shape) and loaded.tobytes() == _bytes(tensor), fqn
    assert yaml.safe_load((mnt / "step.yaml").read_text()) == 7
    for shard in shards:
        assert (mnt / shard).is_dir() and list((mnt / shard).rglob("*.npy"))


def test_a_broken_chunk_fails_its_reads_only(mount, tmp_path):
    import errno
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(FSDP2, broken)
    metadata = dcp.FileSystemReader(str(broken)).read_metadata()
    info = next(v for k, v in metadata.storage_data.items() if k.fqn == "model.0.weight" and tuple(k.offset) == (10, 0))
    shard = broken / info.relative_path
    data = bytearray(shard.read_bytes())
    data[info.offset : info.offset + 4] = b"XXXX"  # rank 1's chunk of model.0.weight no longer starts a zip
    shard.write_bytes(bytes(data))
    mnt = Path(mount(broken, log_errors_expected=True))
    failed = []
    for npy in sorted(p for p in mnt.rglob("*.npy") if not p.relative_to(mnt).parts[0].endswith(".distcp")):
        try:
            np.load(npy)
        except OSError as e:
            assert e.errno == errno.EIO
            failed.append(os.getxattr(npy, "user.ckptfs.name").decode())
    assert failed == ["model.0.weight"]  # every other tensor still reads
    log = next(tmp_path.glob("daemon*.log")).read_text()
    assert "__1_0.distcp" in log and "Traceback" not in log
    assert all(name in log for name in failed)


def test_dcp_inside_a_nemo_tar_is_served_from_the_tar(mount, tmp_path, multirank):
    """NeMo keeps Megatron weights as a DCP directory `model_weights/` in the tar."""
    import tarfile

    from .dcp_writer import reference

    import shutil

    original, world_size = multirank
    path = tmp_path / "model_weights"
    shutil.copytree(original, path)
    nemo = tmp_path / "megatron.nemo"
    with tarfile.open(nemo, "w:") as tf:
        config = tmp_path / "model_config.yaml"
        config.write_text("precision: bf16-mixed\n")
        tf.add(config, arcname="./model_config.yaml")
        tf.add(path, arcname="./model_weights")
    metadata = (path / ".metadata").read_bytes()
    shutil.rmtree(path)  # from here on, every byte comes from the .nemo
    mnt = Path(mount(nemo))
    weights = mnt / "model_weights"
    for fqn, tensor in reference(world_size).items():
        npy = _npy(weights, fqn)
        assert np.load(npy).tobytes() == _bytes(tensor), fqn
    assert (mnt / "model_config.yaml").read_text() == "precision: bf16-mixed\n"
    assert (weights / "__0_0.distcp").is_dir()
    assert (mnt / ".ckptfs" / "raw" / "model_weights" / ".metadata").read_bytes() == metadata
    assert np.load(next((weights / "__0_0.distcp").rglob("*.npy"))).size > 0


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_megatron_style_directory_shows_common_pt_and_metadata_json(mount, tmp_path):
    """Megatron-core torch_dist: a DCP directory with metadata.json and common.pt beside it."""
    import json

    ckpt = tmp_path / "iter_0000100"
    dcp.save({"decoder.weight": torch.arange(6.0).reshape(2, 3)}, checkpoint_id=str(ckpt))
    (ckpt / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1}))
    torch.save({"iteration": 100, "args": {"hidden": 8}, "rng": torch.ones(3)}, ckpt / "common.pt")
    mnt = Path(mount(ckpt))
    assert json.loads((mnt / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    assert yaml.safe_load((mnt / "common.pt" / "iteration.yaml").read_text()) == 100
    assert np.load(mnt / "common.pt" / "rng.npy").tolist() == [1.0, 1.0, 1.0]
    assert np.load(mnt / "decoder" / "weight.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (mnt / ".ckptfs" / "raw" / "common.pt").read_bytes() == (ckpt / "common.pt").read_bytes()
