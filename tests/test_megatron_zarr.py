"""Megatron-Core distributed checkpoints with the zarr backend, written as
Megatron laid them out by the zarr library (tests/megatron_zarr_writer.py,
in a subprocess: zarr warns about v2), mounted for real and every array
compared bit for bit with what `zarr.open(...)[:]` reads; `common.pt`,
`metadata.json`, the `.nemo` nesting, and the commands."""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import ml_dtypes  # noqa: F401  (bfloat16 for np.load)
import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file

from ckptfs.errors import FormatError
from ckptfs.sources.zstd import zstd
from ckptfs.tree import names

from .conftest import CKPTFS, TIMED_APART, TIMEOUT, run_ckptfs, tar_members, umount

pytestmark = TIMED_APART

#: key -> (dtype, shape) of each array the writer writes
ARRAYS = {
    "decoder.layers.self_attention.linear_qkv.weight": ("float32", (2, 12, 8)),
    "embedding.word_embeddings.weight": ("bfloat16", (10, 6)),
    "decoder.final_layernorm.weight": ("float16", (6,)),
    "output_layer.weight": ("float32", (7, 5)),
    "optimizer.step_counts": ("int64", (5, 3)),
    "zstd.weight": ("float32", (9, 4)),
    "gzip/bias": ("float64", (5, 2)),
}


@pytest.fixture(scope="module")
def out(written) -> Path:
    return written("tests.megatron_zarr_writer")


def _reference(out: Path, key: str) -> bytes:
    return (out / "ref" / f"{key.replace('/', '%2F')}.bin").read_bytes()


def _npy_path(key: str) -> str:
    return "/".join(names.tensor_path(key))


def _same_arrays(folder: Path, out: Path) -> None:
    for key, (dtype, shape) in ARRAYS.items():
        array = np.load(folder / _npy_path(key))
        assert array.dtype == np.dtype(dtype) and array.shape == shape, key
        assert array.tobytes() == _reference(out, key), key


def test_every_array_reads_as_zarr_reads_it(out, mount):
    mnt = mount(out / "ckpt")
    _same_arrays(mnt, out)
    # the missing chunks read as the fill value: null (zeros) and 7.5
    assert not np.load(mnt / "output_layer/weight.npy")[3:6, 2:4].any()
    assert (np.load(mnt / "gzip%2Fbias.npy")[4:, 1] == 7.5).all()
    assert yaml.safe_load((mnt / "metadata.yaml").read_text())["sharded_backend"] == "zarr"
    assert yaml.safe_load((mnt / "common.pt/iteration.yaml").read_text()) == 10
    assert yaml.safe_load((mnt / "common.pt/args.yaml").read_text()) == {"hidden_size": 8}
    extra = mnt / "decoder.layers.self_attention.core_attention._extra_state/shard_0_2.pt/layer.yaml"
    assert yaml.safe_load(extra.read_text()) == 0
    raw = mnt / ".ckptfs" / "raw"
    assert (raw / "metadata.json").read_bytes() == (out / "ckpt/metadata.json").read_bytes()
    chunk = "decoder.layers.self_attention.linear_qkv.weight/1.1.0"
    assert (raw / chunk).read_bytes() == (out / "ckpt" / chunk).read_bytes()
    info = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())
    assert info["tensors"] == len(ARRAYS)


def test_reads_at_any_offset_touch_only_their_chunks(out, mount):
    """Short reads at every offset of every array give the same bytes as
    the whole, across chunk edges, partial chunks and compressed chunks."""
    mnt = mount(out / "ckpt")
    for key in ARRAYS:
        path = mnt / _npy_path(key)
        whole = path.read_bytes()
        with open(path, "rb", buffering=0) as f:
            for offset in range(0, len(whole), 7):
                f.seek(offset)
                assert f.read(13) == whole[offset:offset + 13], (key, offset)


def test_raw_chunks_are_served_zero_copy_where_they_lie_end_to_end(out, mount):
    mnt = mount(out / "ckpt")
    tsv = (mnt / ".ckptfs/tensors.tsv").read_text().splitlines()
    rows = {row.split("\t")[1]: row for row in tsv[1:]}
    assert "decoder.final_layernorm.weight/0" in rows["decoder.final_layernorm.weight"]
    norm = mnt / "decoder/final_layernorm/weight.npy"
    assert norm.stat().st_size == 128 + 12


def test_commands_info_ls_cat_export_and_diff(out, tmp_path):
    ckpt = out / "ckpt"
    info = json.loads(run_ckptfs("info", "--json", ckpt).stdout)
    assert info["format"] == "Megatron zarr distributed checkpoint" and info["tensors"] == len(ARRAYS)
    listed = run_ckptfs("ls", "-l", ckpt, "embedding/word_embeddings")
    assert listed.returncode == 0 and "weight.npy  bfloat16 [10, 6]" in listed.stdout, listed.stdout
    cat = subprocess.run([*CKPTFS, "cat", str(ckpt), "zstd/weight.npy"], capture_output=True, timeout=TIMEOUT)
    assert cat.returncode == 0 and np.load(io.BytesIO(cat.stdout)).tobytes() == _reference(out, "zstd.weight")
    exported = tmp_path / "model.safetensors"
    done = run_ckptfs("export", ckpt, exported, "--to", "safetensors")
    assert done.returncode == 0, done.stderr
    tensors = load_file(exported)
    assert sorted(tensors) == sorted(ARRAYS)
    for key in ARRAYS:
        assert tensors[key].tobytes() == _reference(out, key), key
    diff = run_ckptfs("diff", "--tensors-only", ckpt, out / "ckpt2")
    assert diff.returncode == 1 and "differs: zstd.weight: 36 of 36 elements" in diff.stdout, diff.stdout + diff.stderr
    assert "linear_qkv" not in diff.stdout



def test_a_nemo_holding_it_in_model_weights_is_served_from_the_tar(out, mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copyfile(out / "model.nemo", nemo)
    mnt = mount(nemo)
    _same_arrays(mnt / "model_weights", out)
    assert (mnt / "model_config.yaml").read_text() == "precision: bf16\n"
    assert yaml.safe_load((mnt / "model_weights/common.pt/iteration.yaml").read_text()) == 10
    with tarfile.open(nemo) as tf:
        assert "./model_weights/zstd.weight/.zarray" in tf.getnames()
    assert torch.load(io.BytesIO((mnt / ".ckptfs/raw/model_weights/common.pt").read_bytes()),
                      weights_only=True)["iteration"] == 10


def test_a_writable_nemo_keeps_its_zarr_checkpoint_as_it_is(out, mount, tmp_path):
    """The checkpoint inside is read-only; an edit beside it repacks the
    .nemo with every member of model_weights/ copied as it was."""
    nemo = tmp_path / "model.nemo"
    shutil.copyfile(out / "model.nemo", nemo)
    mnt = mount(nemo)
    with pytest.raises(OSError) as refused:
        (mnt / "model_weights/zstd/weight.npy").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS
    (mnt / "model_config.yaml").write_text("precision: 16\n")
    assert umount(mnt).returncode == 0
    before, after = tar_members(out / "model.nemo"), tar_members(nemo)
    assert after["./model_config.yaml"] == b"precision: 16\n"
    weights = [name for name in before if name.startswith("./model_weights/")]
    assert len(weights) > 40 and all(after[name] == before[name] for name in weights)
    _same_arrays(mount(nemo) / "model_weights", out)


def _compressed(tmp_path: Path, chunks: dict[str, bytes], codec: str = "zlib", size: int = 16) -> Path:
    """A checkpoint by hand: one compressed |u1 array of `size` bytes in one
    chunk per key, the chunk file's bytes as given."""
    folder = tmp_path / "compressed"
    folder.mkdir()
    (folder / "metadata.json").write_text('{"sharded_backend": "zarr"}')
    for key, data in chunks.items():
        (folder / key).mkdir()
        (folder / key / ".zarray").write_text(json.dumps({
            "zarr_format": 2, "shape": [size], "chunks": [size], "dtype": "|u1", "compressor": {"id": codec},
            "fill_value": 0, "order": "C", "filters": None}))
        (folder / key / "0").write_bytes(data)
    return folder


def _zeros_compressed(count: int, codec: str) -> bytes:
    """`count` zero bytes compressed in steps (a bomb, made without holding it)."""
    stream = zstd.ZstdCompressor() if codec == "zstd" else zlib.compressobj(9)
    out = [stream.compress(bytes(1 << 20)) for _ in range(count >> 20)]
    return b"".join(out) + stream.flush(zstd.ZstdCompressor.FLUSH_FRAME if codec == "zstd" else zlib.Z_FINISH)


def test_a_chunk_that_does_not_decompress_to_one_chunk_fails_its_array_alone(tmp_path, mount):
    good = bytes(range(16))
    folder = _compressed(tmp_path, {
        "good": zlib.compress(good), "short": zlib.compress(good[:15]), "long": zlib.compress(good + b"!"),
        "corrupt": b"\x78\x9c" + b"\xff" * 20, "trailing": zlib.compress(good) + b"more",
        "cut": zlib.compress(good)[:-2],
    })
    mnt = mount(folder, "-o", "ro", log_errors_expected=True)
    assert np.load(mnt / "good.npy").tobytes() == good
    problems = {"short": "decompresses to 15 bytes", "long": "decompresses to more than the 16 bytes",
                "corrupt": "not a zlib stream", "trailing": "more bytes after its compressed stream", "cut": "cut short"}
    for key in problems:
        with pytest.raises(OSError) as failed:
            (mnt / f"{key}.npy").read_bytes()
        assert failed.value.errno == errno.EIO, key
    log = (mnt.parent / "daemon0.log").read_text()  # one line each, naming the chunk file
    for key, says in problems.items():
        assert any(f"compressed/{key}/0: " in line and says in line for line in log.splitlines()), (key, log)


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_a_decompression_bomb_is_decompressed_no_further_than_its_chunk(tmp_path, codec):
    """A chunk of 1 MiB whose stream inflates to 256 MiB: at most the chunk
    and a byte is made before it is refused."""
    from ckptfs.formats import open_checkpoint

    bomb = _zeros_compressed(256 << 20, codec)
    assert len(bomb) < 1 << 20
    ckpt = open_checkpoint(str(_compressed(tmp_path, {"bomb": bomb}, codec, 1 << 20)), str(tmp_path / "cache"))
    content = ckpt.root.children["bomb.npy"].content
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="decompresses to more than the 1048576 bytes of a chunk"):
            content.read(content.size - 10, 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_a_megatron_save_folder_shows_its_zarr_iteration_in_place(out, mount, tmp_path):
    save = tmp_path / "save"
    shutil.copytree(out / "ckpt", save / "iter_0000010")
    (save / "latest_checkpointed_iteration.txt").write_text("10")
    mnt = mount(save, "-o", "ro")
    _same_arrays(mnt / "iter_0000010", out)
    assert (mnt / "latest_checkpointed_iteration.txt").read_text() == "10"
    info = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())
    assert info["tensors"] == len(ARRAYS)


def test_a_chunk_linked_from_outside_leaves_its_array_out(out, tmp_path):
    """A link is not followed out of the checkpoint: read as a missing
    chunk, it would give the fill value; the array is left out instead."""
    from ckptfs.formats import open_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(out / "ckpt", ckpt)
    chunk = ckpt / "zstd.weight" / "1.0"
    outside = tmp_path / "outside"
    chunk.rename(outside)
    chunk.symlink_to(outside)
    opened = open_checkpoint(str(ckpt), str(tmp_path / "cache"))
    assert "zstd.weight" not in {p.tensor.name for p in opened.tensors}
    assert len(opened.tensors) == len(ARRAYS) - 1
    assert any(n.startswith("zstd.weight: holds links that lead outside") for n in opened.notes), opened.notes


def test_a_chunk_name_of_thousands_of_digits_is_no_chunk_and_breaks_nothing(tmp_path):
    """A tar member's name may be longer than a folder's: 5,000 digits are
    more than int() takes, and no grid index of an array spells them."""
    meta = {"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": "<f4", "order": "C", "compressor": None,
            "filters": None, "fill_value": 0}
    members = {"model_weights/metadata.json": json.dumps({"sharded_backend": "zarr"}).encode(),
               "model_weights/w/.zarray": json.dumps(meta).encode(),
               "model_weights/w/0": np.arange(2, dtype=np.float32).tobytes(),
               "model_weights/w/1": np.arange(2, 4, dtype=np.float32).tobytes(),
               "model_weights/w/" + "9" * 5000: b"\0" * 8,
               "model_config.yaml": b"a: 1\n"}
    nemo = tmp_path / "long.nemo"
    with tarfile.open(nemo, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    listed = run_ckptfs("ls", "-R", nemo)
    assert listed.returncode == 0, listed.stderr
    assert "model_weights/w.npy" in listed.stdout
    shown = subprocess.run([*CKPTFS, "cat", str(nemo), "model_weights/w.npy"], capture_output=True, timeout=TIMEOUT)
    assert shown.returncode == 0, shown.stderr
    assert np.load(io.BytesIO(shown.stdout)).tolist() == [0, 1, 2, 3]
