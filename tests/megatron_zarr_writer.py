"""Writes Megatron-Core distributed checkpoints with the `zarr` backend for
the tests, laid out as Megatron's zarr strategy wrote them (Megatron no
longer writes it): `metadata.json`, `common.pt` by torch.save, a sharded
object's `.pt`, and a zarr v2 array per sharded tensor key, written by the
zarr library: chunks as each rank's shard, compressor None, fill_value
null, empty chunks written; bfloat16 stored as 2-byte voids and `.zarray`'s
dtype then renamed `bfloat16`, as Megatron did. Some arrays are made to
cover what ckptfs must also read: zlib, gzip and zstd chunks, partial edge
chunks, a missing chunk, a fill_value, `/` as dimension separator.

    python -m tests.megatron_zarr_writer OUT

OUT/ckpt, OUT/ckpt2 (one array changed), OUT/model.nemo (a NeMo 1.x tar:
model_config.yaml and ckpt as model_weights/), and OUT/ref/<key>.bin: the
bytes of each array as `zarr.open(...)[:]` reads it (bfloat16: before the
dtype is renamed, which zarr cannot read).
"""

import json
import shutil
import sys
import tarfile
import warnings
from pathlib import Path

import ml_dtypes
import numcodecs
import numpy as np
import torch
import zarr

CONFIG = {"sharded_backend": "zarr", "sharded_backend_version": 1, "common_backend": "torch",
          "common_backend_version": 1}


def arrays(seed: int) -> dict[str, tuple[np.ndarray, tuple[int, ...], dict]]:
    """key -> (values, chunks, more arguments of zarr.create_array)."""
    gen = np.random.default_rng(seed)
    raw = {"compressors": None, "fill_value": None}
    return {
        # layers stacked (PP) and split by TP along dim 1: a 2 x 2 grid of chunks
        "decoder.layers.self_attention.linear_qkv.weight": (gen.standard_normal((2, 12, 8), np.float32), (1, 6, 8), raw),
        # bfloat16 split by rows: the chunk files laid end to end
        "embedding.word_embeddings.weight": (gen.standard_normal((10, 6)).astype(ml_dtypes.bfloat16), (5, 6), raw),
        "decoder.final_layernorm.weight": (gen.standard_normal(6).astype(np.float16), (6,), raw),
        # partial edge chunks; the chunk 1.1 is removed after writing (read as the fill value)
        "output_layer.weight": (gen.standard_normal((7, 5), np.float32), (3, 2), raw),
        "optimizer.step_counts": (np.arange(15, dtype=np.int64).reshape(5, 3), (2, 3),
                                  {"compressors": numcodecs.Zlib(level=1), "fill_value": None}),
        "zstd.weight": (gen.standard_normal((9, 4), np.float32), (4, 4),
                        {"compressors": numcodecs.Zstd(level=3), "fill_value": None}),
        # gzip, a fill value, a missing chunk (2/1), chunks in nested folders (a key with a slash too)
        "gzip/bias": (np.arange(10, dtype=np.float64).reshape(5, 2), (2, 1),
                      {"compressors": numcodecs.GZip(level=5), "fill_value": 7.5, "chunk_key_encoding": {
                          "name": "v2", "separator": "/"}}),
    }


def write_array(folder: Path, key: str, values: np.ndarray, chunks: tuple[int, ...], more: dict) -> np.ndarray:
    """The array at folder/key as Megatron created it; returns its bytes as zarr reads them."""
    bf16 = values.dtype == ml_dtypes.bfloat16
    stored = values.view("V2") if bf16 else values
    array = zarr.create_array(str(folder / key), shape=values.shape, chunks=chunks, dtype=stored.dtype,
                              zarr_format=2, config={"write_empty_chunks": True}, **more)
    array[...] = stored
    if key == "output_layer.weight":
        (folder / key / "1.1").unlink()
    if key == "gzip/bias":
        (folder / key / "2" / "1").unlink()
    read = zarr.open(str(folder / key), mode="r")[...]
    if bf16:  # Megatron's rename, which zarr cannot read back
        meta = folder / key / ".zarray"
        meta.write_text(meta.read_text().replace('"|V2"', '"bfloat16"'))
    return np.ascontiguousarray(read)


def write_checkpoint(folder: Path, seed: int, ref: Path | None) -> None:
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(CONFIG))
    torch.save({"iteration": 10 + seed, "checkpoint_version": 3.0, "args": {"hidden_size": 8}}, folder / "common.pt")
    extra = folder / "decoder.layers.self_attention.core_attention._extra_state"
    extra.mkdir()
    torch.save({"layer": 0}, extra / "shard_0_2.pt")
    for key, (values, chunks, more) in arrays(seed).items():
        read = write_array(folder, key, values, chunks, more)
        if ref is not None:
            (ref / f"{key.replace('/', '%2F')}.bin").write_bytes(read.tobytes())


def write_nemo(ckpt: Path, nemo: Path) -> None:
    with tarfile.open(nemo, "w:") as tf:
        config = nemo.parent / "model_config.yaml"
        config.write_text("precision: bf16\n")
        tf.add(config, "./model_config.yaml")
        tf.add(ckpt, "./model_weights")


def main(out: Path) -> None:
    warnings.simplefilter("ignore")  # zarr warns that v2 is not its current format
    ref = out / "ref"
    ref.mkdir(parents=True)
    write_checkpoint(out / "ckpt", 0, ref)
    write_checkpoint(out / "ckpt2", 0, None)
    shutil.rmtree(out / "ckpt2" / "zstd.weight")
    write_array(out / "ckpt2", "zstd.weight", np.ones((9, 4), np.float32), (4, 4),
                {"compressors": numcodecs.Zstd(level=3), "fill_value": None})
    write_nemo(out / "ckpt", out / "model.nemo")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
