"""torch.distributed.checkpoint directories: consolidated tensors and shard
folders, compared with torch bit for bit."""

import io
import json
import os
import shutil
from pathlib import Path

import ml_dtypes  # noqa: F401
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from .conftest import FIXTURES, TIMED_APART

FSDP2 = FIXTURES / "dcp" / "fsdp2_2rank"
#: the multi-rank checkpoints are written by gloo ranks in minutes on a busy machine, within their own timeout
pytestmark = TIMED_APART


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
    pickle_globals = (mnt / ".ckptfs" / "pickle-globals.txt").read_text()
    assert "torch.distributed.checkpoint.metadata.Metadata" in pickle_globals


@pytest.fixture(scope="module", params=[2, 3])
def multirank(request, written):
    """DCP directories written by `world_size` gloo ranks in subprocesses,
    one per variant of tests/dcp_writer.py, and an FSDP2 model and optimizer
    (test_malicious_corpus.py shares the 2-rank ones)."""
    return written("tests.dcp_writer", str(request.param), "PORT"), request.param


VARIANTS = ["plain", "zstd", "safetensors", "per_rank_metadata"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_multirank_dtensors_consolidate_bit_for_bit(mount, multirank, variant):
    from .dcp_writer import reference

    out, world_size = multirank
    path = out / variant
    mnt = Path(mount(path))
    shards = sorted(p.name for p in path.glob("*.distcp"))
    assert len(shards) == world_size
    for fqn, tensor in reference(world_size).items():
        loaded = np.load(_npy(mnt, fqn))
        assert loaded.shape == tuple(tensor.shape) and loaded.tobytes() == _bytes(tensor), fqn
        whole = _npy(mnt, fqn).read_bytes()
        with open(_npy(mnt, fqn), "rb") as f:  # reads that start anywhere, in any order
            for off in reversed(range(0, len(whole), 23)):
                assert os.pread(f.fileno(), 41, off) == whole[off : off + 41]
    assert yaml.safe_load((mnt / "step.yaml").read_text()) == 7
    chunks = 0
    for shard in shards:
        for chunk in (mnt / shard).rglob("*.npy"):
            offsets = json.loads(os.getxattr(chunk, "user.ckptfs.offsets"))
            full = reference(world_size)[os.getxattr(chunk, "user.ckptfs.name").decode()]
            block = full[tuple(slice(o, o + n) for o, n in zip(offsets, np.load(chunk).shape))]
            assert np.load(chunk).tobytes() == _bytes(block), chunk
            chunks += 1
    assert chunks >= len(reference(world_size))
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert "notes" not in info


def test_fsdp2_model_and_optimizer_from_get_state_dict(mount, multirank):
    out, world_size = multirank
    mnt = Path(mount(out / "fsdp2"))
    ref = torch.load(out / "fsdp2.ref.pt", weights_only=False)
    for name, tensor in ref["model"].items():
        assert np.load(_npy(mnt, f"model.{name}")).tobytes() == _bytes(tensor), name
    for param, state in ref["optim"]["state"].items():
        for key, tensor in state.items():
            loaded = np.load(_npy(mnt, f"optim.state.{param}.{key}"))
            assert loaded.shape == tuple(tensor.shape) and loaded.tobytes() == _bytes(tensor), (param, key)
    group = mnt / "optim" / "param_groups" / "0"
    for key, value in ref["optim"]["param_groups"][0].items():
        shown = yaml.safe_load((group / f"{key}.yaml").read_text())
        assert shown == (list(value) if isinstance(value, tuple) else value), key
    rows = [p for p in mnt.glob("__*.distcp/model/0/weight@*.npy")]
    assert len(rows) == world_size  # 20 rows over the ranks, unevenly for 3


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


@pytest.mark.parametrize("variant", VARIANTS)
def test_dcp_inside_a_nemo_tar_is_served_from_the_tar(mount, tmp_path, multirank, variant):
    """NeMo keeps Megatron weights as a DCP directory `model_weights/` in the
    tar, with Megatron-core's common.pt and metadata.json beside the shards."""
    import shutil
    import tarfile

    from .dcp_writer import reference

    out, world_size = multirank
    original = out / variant
    path = tmp_path / "model_weights"
    shutil.copytree(original, path)
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    torch.save({"iteration": 3, "rng": torch.arange(4)}, path / "common.pt")
    nemo = tmp_path / "megatron.nemo"
    with tarfile.open(nemo, "w:") as tf:
        config = tmp_path / "model_config.yaml"
        config.write_text("precision: bf16-mixed\n")
        tf.add(config, arcname="./model_config.yaml")
        tf.add(path, arcname="./model_weights")
    metadata = {p.name: p.read_bytes() for p in path.glob("*.metadata")}
    shutil.rmtree(path)  # from here on, every byte comes from the .nemo
    mnt = Path(mount(nemo))
    weights = mnt / "model_weights"
    for fqn, tensor in reference(world_size).items():
        npy = _npy(weights, fqn)
        assert np.load(npy).tobytes() == _bytes(tensor), fqn
    assert (mnt / "model_config.yaml").read_text() == "precision: bf16-mixed\n"
    assert (weights / "__0_0.distcp").is_dir()
    assert (weights / "metadata.json").read_text() == '{"sharded_backend": "torch_dist"}'
    assert yaml.safe_load((weights / "common.pt" / "iteration.yaml").read_text()) == 3
    assert np.load(weights / "common.pt" / "rng.npy").tolist() == [0, 1, 2, 3]
    for name, data in metadata.items():
        assert (mnt / ".ckptfs" / "raw" / "model_weights" / name).read_bytes() == data
    assert "notes" not in yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
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


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_files_beside_a_megatron_checkpoint_are_written_back_with_it(mount, tmp_path):
    from .conftest import umount

    ckpt = tmp_path / "iter_0000100"
    dcp.save({"decoder.weight": torch.arange(6.0).reshape(2, 3)}, checkpoint_id=str(ckpt))
    (ckpt / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    torch.save({"iteration": 100, "rng": torch.ones(3)}, ckpt / "common.pt")
    (ckpt / "notes.txt").write_text("to be removed\n")
    mnt = Path(mount(ckpt))
    (mnt / "metadata.json").write_text('{"sharded_backend": "torch_dist", "edited": true}')
    (mnt / "common.pt" / "iteration.yaml").write_text("101\n")
    os.unlink(mnt / "notes.txt")
    np.save(mnt / "decoder" / "weight.npy", np.ones((2, 3), dtype=np.float32))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert json.loads((ckpt / "metadata.json").read_text()) == {"sharded_backend": "torch_dist", "edited": True}
    common = torch.load(ckpt / "common.pt", weights_only=True)
    assert common["iteration"] == 101 and common["rng"].tolist() == [1, 1, 1]
    assert not (ckpt / "notes.txt").exists()
    state = {"decoder.weight": torch.zeros(2, 3)}
    dcp.load(state, checkpoint_id=str(ckpt))
    assert state["decoder.weight"].tolist() == [[1, 1, 1], [1, 1, 1]]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_megatron_sharded_objects_are_files_named_after_their_shard(mount, tmp_path):
    """Megatron-core saves a ShardedObject as a torch.save of its data under
    `key/shard_<offset>_<shape>`, and its planner stores those bytes as they are."""
    import io

    from torch.distributed.checkpoint import DefaultSavePlanner

    class MCoreLikeSavePlanner(DefaultSavePlanner):
        def transform_object(self, write_item, object):
            return object

    def sharded_object(data) -> io.BytesIO:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        buffer.seek(0)
        return buffer

    ckpt = tmp_path / "iter_0000001"
    state = {
        "decoder.layers.self_attention._extra_state/shard_0.1_1.2": sharded_object({"fp8": False, "amax": [1.5]}),
        "decoder.layers.self_attention._extra_state/shard_0.0_1.2": sharded_object({"fp8": False, "amax": [0.5]}),
        "rng_state/shard_0_1": sharded_object([{"random_rng_state": (3, 4)}]),
        "decoder.layers.self_attention.weight": torch.ones(2, 2),
    }
    dcp.save(state, checkpoint_id=str(ckpt), planner=MCoreLikeSavePlanner())
    mnt = Path(mount(ckpt))
    extra = mnt / "decoder" / "layers" / "self_attention" / "_extra_state"
    assert sorted(p.name for p in extra.iterdir()) == ["shard_0.0_1.2.yaml", "shard_0.1_1.2.yaml"]
    assert yaml.safe_load((extra / "shard_0.1_1.2.yaml").read_text()) == {"fp8": False, "amax": [1.5]}
    assert yaml.safe_load((mnt / "rng_state" / "shard_0_1.yaml").read_text()) == [{"random_rng_state": [3, 4]}]
    assert np.load(mnt / "decoder" / "layers" / "self_attention" / "weight.npy").tolist() == [[1, 1], [1, 1]]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_nemo2_checkpoint_directory_mounts_context_and_weights(mount, tmp_path):
    """NeMo 2 saves `context/` (io.json, model.yaml, tokenizer files) beside
    `weights/`, a Megatron torch_dist directory."""
    ckpt = tmp_path / "model--step=9-consumed_samples=40.0"
    (ckpt / "context" / "nemo_tokenizer").mkdir(parents=True)
    (ckpt / "context" / "io.json").write_text('{"root": {"type": "ref"}}')
    (ckpt / "context" / "model.yaml").write_text("_target_: nemo.collections.llm.gpt.model.base.GPTModel\n")
    (ckpt / "context" / "nemo_tokenizer" / "tokenizer.json").write_text("{}")
    weights = ckpt / "weights"
    embedding = torch.randn(6, 4).to(torch.bfloat16)
    dcp.save({"module.embedding.word_embeddings.weight": embedding, "optimizer.step": 9}, checkpoint_id=str(weights))
    (weights / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    torch.save({"content_metadata": {"format": "nemo2"}}, weights / "common.pt")
    mnt = Path(mount(ckpt))
    assert (mnt / "context" / "model.yaml").read_text().startswith("_target_:")
    assert (mnt / "context" / "nemo_tokenizer" / "tokenizer.json").read_text() == "{}"
    npy = mnt / "weights" / "module" / "embedding" / "word_embeddings" / "weight.npy"
    assert np.load(npy).tobytes() == _bytes(embedding)
    assert yaml.safe_load((mnt / "weights" / "optimizer" / "step.yaml").read_text()) == 9
    assert yaml.safe_load((mnt / "weights" / "common.pt" / "content_metadata.yaml").read_text()) == {"format": "nemo2"}
    assert (mnt / "weights" / "__0_0.distcp").is_dir()
    for f in ckpt.rglob("*"):
        if f.is_file():
            assert (mnt / ".ckptfs" / "raw" / f.relative_to(ckpt)).read_bytes() == f.read_bytes()
    tsv = (mnt / ".ckptfs" / "tensors.tsv").read_text()
    assert "weights/module/embedding/word_embeddings/weight.npy" in tsv
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert info["format"] == "folder of distributed checkpoints" and "notes" not in info

    # and written back: the context files, the weights through their own writer, common.pt through its own
    from .conftest import umount

    tokenizer = ckpt / "context" / "nemo_tokenizer" / "tokenizer.json"
    inode = tokenizer.stat().st_ino
    (mnt / "context" / "model.yaml").write_text("_target_: edited\n")
    (mnt / "context" / "extra.txt").write_text("new\n")
    np.save(npy, np.ones((6, 4), dtype=np.float32).astype(ml_dtypes.bfloat16))
    (mnt / "weights" / "common.pt" / "content_metadata.yaml").write_text("format: nemo2-edited\n")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert (ckpt / "context" / "model.yaml").read_text() == "_target_: edited\n"
    assert (ckpt / "context" / "extra.txt").read_text() == "new\n"
    assert tokenizer.stat().st_ino == inode  # unchanged files are hard links of the old ones
    assert torch.load(weights / "common.pt", weights_only=True)["content_metadata"] == {"format": "nemo2-edited"}
    state = {"module.embedding.word_embeddings.weight": torch.zeros(6, 4, dtype=torch.bfloat16), "optimizer.step": 0}
    dcp.load(state, checkpoint_id=str(weights))
    assert state["module.embedding.word_embeddings.weight"].float().tolist() == [[1.0] * 4] * 6
    assert state["optimizer.step"] == 9


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_an_unknown_stream_transform_is_a_note_and_the_rest_reads(mount, tmp_path):
    import pickle

    ckpt = tmp_path / "ck"
    dcp.save({"a": torch.ones(3), "b": torch.zeros(2)}, checkpoint_id=str(ckpt))
    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata()
    for index, info in metadata.storage_data.items():
        if index.fqn == "a":
            info.transform_descriptors = ["stream.rot13/1"]
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    mnt = Path(mount(ckpt))
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert any("'stream.rot13/1'" in n and n.startswith("a: ") for n in notes)
    assert np.load(mnt / "b.npy").tolist() == [0, 0]


def _gap(metadata, _shards):
    tensor = metadata.state_dict_metadata["model.0.weight"]
    tensor.chunks = [c for c in tensor.chunks if c.offsets[0] == 0]  # rows 10-19 no longer stored
    return "model.0.weight", "do not cover the whole tensor"


def _overlap(metadata, _shards):
    tensor = metadata.state_dict_metadata["extra.colsharded"]
    second = max(tensor.chunks, key=lambda c: c.offsets[1])
    tensor.chunks.append(type(second)(offsets=torch.Size([0, second.offsets[1] - 1]), sizes=second.sizes))
    index = next(k for k in metadata.storage_data if k.fqn == "extra.colsharded" and k.offset == second.offsets)
    moved = type(index)("extra.colsharded", torch.Size([0, second.offsets[1] - 1]))
    metadata.storage_data[moved] = metadata.storage_data[index]
    return "extra.colsharded", "overlap"


def _out_of_range(metadata, _shards):
    for index, info in metadata.storage_data.items():
        if index.fqn == "model.2.weight":
            info.offset += 10**9
    return "model.2.weight", "lie outside the file"


def _truncated_shard(metadata, shards):
    last = max((info for index, info in metadata.storage_data.items() if info.relative_path == "__1_0.distcp"),
               key=lambda info: info.offset)
    fqn = next(index.fqn for index, info in metadata.storage_data.items() if info is last)
    with open(shards / "__1_0.distcp", "r+b") as f:
        f.truncate(last.offset + last.length - 1)
    return fqn, "lie outside the file"


@pytest.mark.parametrize("damage", [_gap, _overlap, _out_of_range, _truncated_shard], ids=lambda f: f.__name__[1:])
def test_bad_chunk_metadata_names_the_tensor_and_the_rest_reads(mount, tmp_path, damage):
    import pickle
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(FSDP2, broken)
    metadata = dcp.FileSystemReader(str(broken)).read_metadata()
    metadata.storage_meta = None
    fqn, problem = damage(metadata, broken)
    (broken / ".metadata").write_bytes(pickle.dumps(metadata))
    source_before = {p.name: p.read_bytes() for p in broken.iterdir()}
    mnt = Path(mount(broken))
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert [n for n in notes if n.startswith(f"{fqn}: ")], notes
    assert all(problem in n and str(broken) in n for n in notes if n.startswith(f"{fqn}: ")), notes
    assert not _npy(mnt, fqn).exists()
    ref = torch.load(FSDP2.parent / "fsdp2_2rank.ref.pt", weights_only=False)
    for name, tensor in ref["model"].items():
        if f"model.{name}" != fqn:
            assert np.load(_npy(mnt, f"model.{name}")).tobytes() == _bytes(tensor), name
    assert {p.name: p.read_bytes() for p in broken.iterdir()} == source_before


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_metadata_from_older_torch_class_paths_and_protocol_2(mount, tmp_path):
    """torch before 2.0 kept these classes in torch.distributed._shard.checkpoint
    and may have written protocol 2: the same checkpoint, spelled that way."""
    import pickle

    ckpt = tmp_path / "ck"
    state = {"w": torch.randn(3, 5), "step": 4}
    dcp.save(state, checkpoint_id=str(ckpt))
    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata()
    metadata.storage_meta = None
    old = pickle.dumps(metadata, protocol=2).replace(
        b"torch.distributed.checkpoint.metadata", b"torch.distributed._shard.checkpoint.metadata"
    )
    assert b"torch.distributed._shard.checkpoint.metadata\nTensorStorageMetadata" in old
    (ckpt / ".metadata").write_bytes(old)
    mnt = Path(mount(ckpt))
    assert np.load(mnt / "w.npy").tobytes() == _bytes(state["w"])
    assert yaml.safe_load((mnt / "step.yaml").read_text()) == 4
    assert "torch.distributed._shard.checkpoint.metadata.Metadata" in (mnt / ".ckptfs" / "pickle-globals.txt").read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_takes_a_rewrite_a_removal_and_a_new_tensor(mount, tmp_path, multirank, variant):
    """Plain chunks are patched in place; zstd-compressed ones and those of
    safetensors blocks are stored anew whole (in a safetensors block for the
    latter); per-rank metadata files all follow."""
    import shutil
    import warnings

    from .conftest import umount
    from .dcp_writer import reference

    out, world_size = multirank
    ckpt = tmp_path / variant
    shutil.copytree(out / variant, ckpt)
    expected = reference(world_size)
    mnt = Path(mount(ckpt))
    rows = expected["rows"].numpy() * 2
    np.save(_npy(mnt, "rows"), rows)
    os.unlink(_npy(mnt, "cols"))
    np.save(mnt / "added.npy", np.arange(5, dtype=np.int16))
    (mnt / "step.yaml").write_text("8\n")  # a non-tensor item: its record written anew (in every rank's shard)
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    mnt = Path(mount(ckpt))
    assert np.load(_npy(mnt, "rows")).tolist() == rows.tolist() and not _npy(mnt, "cols").exists()
    assert np.load(mnt / "added.npy").tolist() == [0, 1, 2, 3, 4]
    for fqn in ("cols_bf16", "replicated", "layer.0.weight", "wide_cols"):
        assert np.load(_npy(mnt, fqn)).tobytes() == _bytes(expected[fqn]), fqn
    reader = dcp.FileSystemReader(str(ckpt))
    if variant == "safetensors":  # torch's FileSystemReader reads no safetensors-format checkpoint
        from safetensors.numpy import load

        info = next(v for k, v in reader.read_metadata().storage_data.items() if k.fqn == "added")
        assert info.relative_path == "__0_1.distcp"
        # the new shard as the format makes one: the items' records (the edited step), then one block
        block = (ckpt / info.relative_path).read_bytes()[info.offset :]
        assert load(block)["added"].tolist() == [0, 1, 2, 3, 4]
        header = json.loads(block[8 : 8 + int.from_bytes(block[:8], "little")])
        sharding = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])
        assert sharding == {"added": {"saved_offsets": [0]}, "rows": {"saved_offsets": [0, 0]}}
    if variant in ("per_rank_metadata", "safetensors"):
        for rank in range(world_size) if variant == "per_rank_metadata" else [None]:
            metadata = reader.read_metadata(rank=rank)
            assert "cols" not in metadata.state_dict_metadata and "added" in metadata.state_dict_metadata
            info = next(v for k, v in metadata.storage_data.items() if k.fqn == "step")
            with open(ckpt / info.relative_path, "rb") as f:  # the record each rank's dcp.load reads
                f.seek(info.offset)
                assert torch.load(io.BytesIO(f.read(info.length)), weights_only=True) == 8
        return
    state = {"rows": torch.zeros(10, 7), "added": torch.zeros(5, dtype=torch.int16), "step": 0,
             "wide_cols": torch.zeros(40, 600)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(ckpt))
    assert state["rows"].numpy().tolist() == rows.tolist() and state["added"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(state["wide_cols"], expected["wide_cols"]) and state["step"] == 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_multirank_exports_and_scans(multirank, variant, tmp_path):
    """`ckptfs export` consolidates every variant (zstd-compressed chunks,
    safetensors blocks, per-rank metadata) bit for bit; `ckptfs scan` reads
    every item and chunk of each."""
    from safetensors.numpy import load_file

    from .conftest import run_ckptfs
    from .dcp_writer import reference

    out, world_size = multirank
    path = out / variant
    done = run_ckptfs("export", str(path), str(tmp_path / "out.safetensors"))
    assert done.returncode == 0, done.stderr
    exported = load_file(str(tmp_path / "out.safetensors"))
    for fqn, tensor in reference(world_size).items():
        assert exported[fqn].shape == tuple(tensor.shape) and exported[fqn].tobytes() == _bytes(tensor), fqn
    scanned = run_ckptfs("scan", "--json", str(path))
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    report = json.loads(scanned.stdout)
    items = [p for p in report["pickles"] if ".distcp@" in p["location"]]  # chunks and items read from the shards
    assert report["verdict"] == "safe" and items and all(p["whole"] for p in items)


def test_a_folder_shows_a_distributed_checkpoint_it_cannot_read_as_plain_files(tmp_path):
    from ckptfs.formats import open_checkpoint

    run = tmp_path / "run"
    shutil.copytree(FSDP2, run / "weights")
    (run / "broken").mkdir()
    (run / "broken" / ".metadata").write_bytes(b"not a pickle")
    (run / "notes.txt").write_text("kept\n")
    ckpt = open_checkpoint(str(run), str(tmp_path / "cache"))
    assert ckpt.format == "folder of distributed checkpoints"
    assert [n for n in ckpt.notes if n.startswith("broken is shown as plain files: ")]
    assert list(ckpt.root.children["broken"].children) == [".metadata"]
    assert ckpt.root.children["notes.txt"].content.read(0, 100) == b"kept\n"
    assert {p.path.split("/")[0] for p in ckpt.tensors} == {"weights"} and ckpt.writer is not None
