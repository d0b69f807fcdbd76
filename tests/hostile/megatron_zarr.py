"""Hostile Megatron zarr checkpoints: `.zarray` files whose shapes and
chunks are negative, zero, overflowing or mismatched, whose dtype, order,
filters or compressor no reader here knows, that are not JSON or nest past
any parser's stack; raw chunk files shorter or longer than a chunk; arrays
of a trillion elements or 2^40 chunks, read only where asked. Each bad
array is left out with a note naming it; every other array reads as
written. (Chunks that fail only when read, a decompression bomb among
them, answer EIO: tests/test_megatron_zarr.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from . import Case

GOOD = np.arange(4, dtype=np.float32)


def _meta(**more) -> dict:
    return {"zarr_format": 2, "shape": [4], "chunks": [4], "dtype": "<f4", "compressor": None, "fill_value": None,
            "order": "C", "filters": None, **more}


def _checkpoint(tmp_path: Path, arrays: dict[str, tuple[bytes, dict[str, bytes]]]) -> Path:
    """A checkpoint folder: key -> (its .zarray, its chunk files), beside `good`."""
    folder = tmp_path / "zarr_ckpt"
    folder.mkdir()
    (folder / "metadata.json").write_text('{"sharded_backend": "zarr", "sharded_backend_version": 1}')
    for key, (meta, chunks) in {"good": (json.dumps(_meta()).encode(), {"0": GOOD.tobytes()}), **arrays}.items():
        (folder / key).mkdir()
        (folder / key / ".zarray").write_bytes(meta)
        for name, data in chunks.items():
            (folder / key / name).write_bytes(data)
    return folder


#: key -> (its .zarray's fields over a good one's, or its whole text; its chunk files; what its note says)
BAD = {
    "negative_shape": (_meta(shape=[-4]), {}, "shape [-4]"),
    "zero_chunks": (_meta(chunks=[0]), {}, "chunks [0]"),
    "overflowing": (_meta(shape=[1 << 40, 1 << 40], chunks=[1, 1]), {}, "more than a file can hold"),
    "huge_chunks": (_meta(shape=[4], chunks=[1 << 61, ]), {}, "more than a file can hold"),
    "mismatched": (_meta(chunks=[2, 2]), {}, "do not match"),
    "boolean_shape": (_meta(shape=[True]), {}, "not a list"),
    "too_many_dims": (_meta(shape=[1] * 40, chunks=[1] * 40), {}, "at most 32"),
    "big_endian": (_meta(dtype=">f4"), {}, "'>f4'"),
    "objects": (_meta(dtype="|O"), {}, "'|O'"),
    "structured": (_meta(dtype=[["a", "<f4"]]), {}, "dtype"),
    "fortran": (_meta(order="F"), {}, "only C order"),
    "filtered": (_meta(filters=[{"id": "delta", "dtype": "<f4"}]), {}, "filters"),
    "blosc": (_meta(compressor={"id": "blosc", "cname": "lz4"}), {}, "'blosc'"),
    "separator": (_meta(dimension_separator="/../"), {}, "dimension_separator"),
    "fill_text": (_meta(fill_value="abc"), {}, "fill_value abc"),
    "fill_overflow": (_meta(dtype="|i1", fill_value=1000), {}, "fill_value 1000"),
    "version_3": (_meta(zarr_format=3), {}, "zarr_format 2"),
    "not_json": (b"{not json", {}, "not JSON"),
    "deep_json": (b"[" * 100_000 + b"]" * 100_000, {}, "not JSON"),
    "huge_meta": (b" " * (2 << 20) + b"{}", {}, "not a .zarray (at most 1,048,576)"),
    "short_chunk": (_meta(), {"0": GOOD.tobytes()[:-1]}, "15 bytes, not the 16 bytes of a raw chunk"),
    "long_chunk": (_meta(), {"0": GOOD.tobytes() + b"\0"}, "17 bytes, not the 16 bytes of a raw chunk"),
    "huge_compressed_chunks": (_meta(shape=[1 << 30], chunks=[1 << 30], dtype="|u1", compressor={"id": "zlib"}), {},
                               "more than ckptfs decompresses"),
}


def _bad_arrays(tmp_path: Path) -> Path:
    arrays = {key: (meta if isinstance(meta, bytes) else json.dumps(meta).encode(), chunks)
              for key, (meta, chunks, _) in BAD.items()}
    return _checkpoint(tmp_path, arrays)


def _each_bad_array_is_left_out_with_its_note(mnt: Path, source: Path) -> None:
    assert np.load(mnt / "good.npy").tobytes() == GOOD.tobytes()
    notes = yaml.safe_load((mnt / ".ckptfs/info.yaml").read_text())["notes"]
    for key, (_, _, says) in BAD.items():
        assert not (mnt / f"{key}.npy").exists(), key
        assert any(n.startswith(f"{key}: ") and says in n for n in notes), (key, notes)
    # every file is still there as it is
    assert (mnt / ".ckptfs/raw/short_chunk/0").read_bytes() == GOOD.tobytes()[:-1]


def _vast_arrays(tmp_path: Path) -> Path:
    """2^40 one-byte chunks, none stored; a trillion elements in one
    missing chunk: files of a terabyte, whose reads touch only what they ask."""
    many = _meta(shape=[1 << 40], chunks=[1], dtype="|u1", fill_value=7)
    one = _meta(shape=[1 << 20, 1 << 20], chunks=[1 << 20, 1 << 20], dtype="|u1")
    return _checkpoint(tmp_path, {"many_chunks": (json.dumps(many).encode(), {"5": b"\x01"}),
                                  "one_vast_chunk": (json.dumps(one).encode(), {})})


def _read_where_asked(mnt: Path, source: Path) -> None:
    with open(mnt / "many_chunks.npy", "rb") as f:
        header = len(f.read(128))
        assert (mnt / "many_chunks.npy").stat().st_size == header + (1 << 40)
        f.seek(header + (1 << 39))
        assert f.read(4) == b"\x07" * 4
        f.seek(header)
        assert f.read(8) == b"\x07" * 5 + b"\x01" + b"\x07" * 2
    with open(mnt / "one_vast_chunk.npy", "rb") as f:
        f.seek(1 << 39)
        assert f.read(1 << 16) == bytes(1 << 16)


CASES = {
    "a Megatron zarr checkpoint of arrays whose .zarray or chunks are hostile": Case(
        _bad_arrays, "served", check=_each_bad_array_is_left_out_with_its_note),
    "a Megatron zarr checkpoint of a terabyte in 2^40 chunks and in one": Case(
        _vast_arrays, "served", check=_read_where_asked),
}
