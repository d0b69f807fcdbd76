"""Hostile archives and headers: tar members that claim impossible sizes,
damaged gzip streams, safetensors headers that lie."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

from ..conftest import FIXTURES, write_safetensors
from . import Case


def _tar_of_negative_size(tmp_path: Path) -> Path:
    path = tmp_path / "negative.nemo"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("model_config.yaml")
        info.size, info.pax_headers = 3, {"size": "-512"}
        tf.addfile(info, io.BytesIO(b"a: "))
    return path


def _tar_of_huge_size(tmp_path: Path) -> Path:
    path = tmp_path / "huge.nemo"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("model_weights.ckpt")
        info.size, info.pax_headers = 3, {"size": str(1 << 60)}
        tf.addfile(info, io.BytesIO(b"abc"))
    return path


def _gzip_nemo(tmp_path: Path, damage) -> Path:
    data = bytearray(gzip.compress((FIXTURES / "nemo" / "tiny.nemo").read_bytes(), mtime=0))
    damage(data)
    path = tmp_path / "damaged.nemo"
    path.write_bytes(bytes(data))
    return path


def _gzip_of_a_flipped_byte(tmp_path: Path) -> Path:
    return _gzip_nemo(tmp_path, lambda data: data.__setitem__(len(data) // 2, data[len(data) // 2] ^ 0x55))


def _gzip_of_a_wrong_length(tmp_path: Path) -> Path:
    return _gzip_nemo(tmp_path, lambda data: struct.pack_into("<I", data, len(data) - 4, 12345))


def _safetensors_of_a_header_past_the_end(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "past.safetensors", {}, b"", header_len=1 << 40)


def _safetensors_of_a_big_metadata(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "meta.safetensors", {"__metadata__": {"k": "x" * (20 << 20)},
                                                            "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                             bytes(4))


def _safetensors_of_overlapping_offsets(tmp_path: Path) -> Path:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    return write_safetensors(tmp_path / "overlap.safetensors", header, bytes(12))

CASES = {
    "a tar member of negative size": Case(_tar_of_negative_size, "refused", "negative size"),
    "a tar member of 2^60 bytes": Case(_tar_of_huge_size, "refused"),
    "a gzip .nemo with a flipped byte": Case(_gzip_of_a_flipped_byte, "refused", "gzip stream is truncated or corrupt"),
    "a gzip .nemo with a wrong length": Case(_gzip_of_a_wrong_length, "refused", "gzip stream is truncated or corrupt"),
    "a safetensors header past the end": Case(_safetensors_of_a_header_past_the_end, "refused"),
    "a 20 MB __metadata__": Case(_safetensors_of_a_big_metadata, "served"),
    "overlapping safetensors offsets": Case(_safetensors_of_overlapping_offsets, "refused", "overlap"),
}
