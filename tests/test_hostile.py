"""Hostile or broken entries break only their own file: the rest of the
checkpoint mounts and reads, the bad part is left out or shown plain with a
note in `.ckptfs/info.yaml`, and a checkpoint that cannot be read at all is
refused with one line, never an internal error."""

import io
import json
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import yaml

from .conftest import FIXTURES, run_ckptfs, write_safetensors


def _encrypted_torch_zip() -> bytes:
    """A torch.save zip whose records claim to be encrypted: zipfile raises
    RuntimeError on them, not an error of its own kind."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer)
    data = bytearray(buffer.getvalue())
    for magic, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(magic)
        while at >= 0:
            struct.pack_into("<H", data, at + flags_at, struct.unpack_from("<H", data, at + flags_at)[0] | 1)
            at = data.find(magic, at + 4)
    return bytes(data)


def _notes(mnt: Path) -> list[str]:
    return yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text()).get("notes", [])


def test_a_name_no_file_name_can_hold_is_escaped_not_fatal(mount, tmp_path):
    data = np.arange(4, dtype=np.float32).tobytes()
    header = {"ok": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "bad\ud800name": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    path = write_safetensors(tmp_path / "m.safetensors", header, data)
    mnt = mount(path, "-o", "ro")
    assert sorted(os.listdir(mnt)) == [".ckptfs", "bad%ED%A0%80name.npy", "ok.npy"]
    assert "bad\\ud800name" in (mnt / ".ckptfs" / "tensors.tsv").read_text()
    assert np.load(mnt / "bad%ED%A0%80name.npy").tolist() == [2.0, 3.0]
    assert os.getxattr(mnt / "bad%ED%A0%80name.npy", "user.ckptfs.name").decode("utf-8", "surrogatepass") == "bad\ud800name"


def test_a_broken_checkpoint_inside_a_nemo_is_shown_as_a_plain_member(mount, tmp_path):
    nemo = tmp_path / "broken.nemo"
    broken = _encrypted_torch_zip()
    with tarfile.open(FIXTURES / "nemo" / "tiny.nemo") as original, tarfile.open(nemo, "w") as out:
        for member in original.getmembers():
            data = original.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model_weights.ckpt"):
                member.size, data = len(broken), broken
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    mnt = mount(nemo, "-o", "ro")
    assert (mnt / "model_weights.ckpt").is_file() and (mnt / "model_weights.ckpt").read_bytes() == broken
    assert "model_config.yaml" in os.listdir(mnt)
    assert any("model_weights.ckpt is shown as a plain file" in n and "encrypted" in n for n in _notes(mnt))


def test_an_unreadable_torch_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "encrypted.pt"
    path.write_bytes(_encrypted_torch_zip())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_ckptfs("mount", path, mnt)
    assert done.returncode == 1 and "internal error" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"ckptfs: {path}: not a zip archive ckptfs can read: File "
                                                "<ZipInfo filename='archive/byteorder' file_size=6> is encrypted, "
                                                "password required for extraction"]


def _dcp_with_metadata_edit(tmp_path: Path, edit) -> Path:
    """A distributed checkpoint saved by torch, its `.metadata` then edited
    by `edit(metadata)` (unpickled and pickled again with torch's classes)."""
    ckpt = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"a": torch.arange(6.0), "b": torch.ones(2, 3)}, checkpoint_id=str(ckpt))
    with open(ckpt / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    edit(metadata)
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    return ckpt


def test_a_storage_entry_missing_a_field_breaks_only_its_tensor(mount, tmp_path):
    def drop_a_field(metadata):
        index = next(i for i in metadata.storage_data if i.fqn == "a")
        del metadata.storage_data[index].__dict__["relative_path"]

    mnt = mount(_dcp_with_metadata_edit(tmp_path, drop_a_field), "-o", "ro")
    assert not (mnt / "a.npy").exists() and np.load(mnt / "b.npy").tolist() == [[1.0] * 3] * 2
    assert any("'a'" in n or "a: " in n for n in _notes(mnt)), _notes(mnt)
    assert any("storage entry in the metadata is incomplete" in n for n in _notes(mnt)), _notes(mnt)


def test_a_tensor_larger_than_any_file_breaks_only_itself(mount, tmp_path):
    def inflate(metadata):
        meta = metadata.state_dict_metadata["a"]
        meta.size = torch.Size([1 << 40, 1 << 40])
        meta.chunks[0].sizes = torch.Size([1 << 40, 1 << 40])
        meta.chunks[0].offsets = torch.Size([0, 0])

    mnt = mount(_dcp_with_metadata_edit(tmp_path, inflate), "-o", "ro")
    assert sorted(os.listdir(mnt)) == [".ckptfs", "__0_0.distcp", "b.npy"]
    assert any("is more than a file can hold" in n for n in _notes(mnt)), _notes(mnt)
    assert json.dumps(_notes(mnt))  # the notes render
