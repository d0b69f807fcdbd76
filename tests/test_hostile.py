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

from .conftest import FIXTURES, run_ckptfs, write_refused, write_safetensors


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
    assert done.stderr.strip().splitlines() == [f"ckptfs: {path}: not a readable zip archive: archive/data.pkl is "
                                                "encrypted or a patch, which torch.load cannot read"]


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


def test_a_yaml_alias_bomb_in_a_view_is_refused_at_once(mount, tmp_path):
    import time

    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "cfg": {"lr": 0.1}}, path)
    mnt = mount(path, log_errors_expected=True)
    levels = [b'a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):  # a few hundred bytes that stand for 9**9 values
        this, before = chr(97 + i).encode(), chr(96 + i).encode()
        levels.append(this + b": &" + this + b" [" + b",".join([b"*" + before] * 9) + b"]")
    bomb = b"\n".join(levels) + b"\n"
    started = time.monotonic()
    write_refused(mnt / "cfg.yaml", bomb)
    assert time.monotonic() - started < 5
    assert "aliases expand to more than 100,000 values" in os.getxattr(mnt / "cfg.yaml", "user.ckptfs.problem").decode()
    assert np.load(mnt / "w.npy").tolist() == [1.0, 1.0]  # the mount answers meanwhile
    done = run_ckptfs("umount", mnt, "--discard")
    assert done.returncode == 0, done.stderr


def test_a_pathological_npy_header_is_one_line_everywhere(mount, tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    mnt = mount(path, log_errors_expected=True)
    shape = "(" * 20000 + ")" * 20000
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
    header = text.encode() + b" " * (-(len(text) + 11) % 64) + b"\n"
    write_refused(mnt / "w.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    assert "NPY header is not readable" in os.getxattr(mnt / "w.npy", "user.ckptfs.problem").decode()
    done = run_ckptfs("umount", mnt)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "w: NPY header is not readable" in done.stderr and "ckptfs recover" in done.stderr
    assert run_ckptfs("recover", path, "--discard").returncode == 0


def test_a_pickle_that_asks_for_gigabytes_gets_a_placeholder(mount, tmp_path):
    from .test_torch_zip import _spliced

    torch.save({"weights": torch.ones(2), "payload": 12345}, tmp_path / "base.pt")
    ckpt = _spliced(tmp_path / "base.pt", tmp_path, b"cbuiltins\nbytearray\n\x8a\x05\x00\x5e\xd0\xb2\x00\x85R")
    mnt = mount(ckpt, "-o", "ro")  # bytearray(3_000_000_000) through REDUCE
    assert np.load(mnt / "weights.npy").tolist() == [1.0, 1.0]
    assert "bytearray" in (mnt / "payload.yaml").read_text() and "3000000000" in (mnt / "payload.yaml").read_text()
    status = Path(f"/proc/{_daemon_of(mnt)}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    assert peak_kb < 1 << 20, f"the daemon peaked at {peak_kb} kB"  # far below the 3 GB asked for


def _daemon_of(mnt: Path) -> int:
    from ckptfs.mount import mounts

    return mounts.MountState(str(mnt)).pid()


def test_a_tar_member_with_a_negative_size_is_refused_in_one_line(tmp_path):
    path = tmp_path / "negative.nemo"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("model_config.yaml")
        info.size, info.pax_headers = 3, {"size": "-512"}
        tf.addfile(info, io.BytesIO(b"a: "))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_ckptfs("mount", path, mnt)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"ckptfs: {path}: member 'model_config.yaml' claims a negative size (-512)"]
