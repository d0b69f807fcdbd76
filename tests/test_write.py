"""Writable mounts: edits through real FUSE, repacked on unmount, read back
with safetensors and tarfile; crashes, discards and bad edits."""

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from .conftest import FIXTURES, run_ckptfs

NEMO = FIXTURES / "nemo" / "tiny.nemo"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _umount(mnt: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_ckptfs("umount", mnt, "--timeout", "60", *extra)


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(
        {
            "enc.w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "enc.b": np.ones(4, dtype=np.int64),
            "dec.w": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3),
            "big": np.zeros(1 << 20, dtype=np.float32),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path


def test_safetensors_replace_delete_add_and_metadata(mount, model):
    mnt = mount(model)
    np.save(mnt / "enc" / "w.npy", np.full((2, 2), 7, dtype=np.float64))  # other shape and dtype
    os.unlink(mnt / "enc" / "b.npy")
    np.save(mnt / "new.npy", np.arange(5, dtype=np.int16))
    bf16 = np.array([[1.5, 2, 3], [4, 5, 6]], dtype=ml_dtypes.bfloat16)
    np.save(mnt / "dec" / "w.npy", bf16)  # written as '<V2': keeps bfloat16
    (mnt / "__metadata__.yaml").write_text("format: pt\nnote: edited\n")
    done = _umount(mnt)
    assert done.returncode == 0, done.stderr
    tensors, metadata = _read_safetensors(model)
    assert sorted(tensors) == ["big", "dec.w", "enc.w", "new"]
    assert tensors["enc.w"].dtype == np.float64 and tensors["enc.w"].tolist() == [[7, 7], [7, 7]]
    assert tensors["new"].tolist() == [0, 1, 2, 3, 4]
    assert tensors["big"].shape == (1 << 20,) and not tensors["big"].any()
    assert metadata == {"format": "pt", "note": "edited"}
    with open(model, "rb") as f:
        header = f.read(8 + int.from_bytes(f.read(8), "little"))[8:]
    assert b'"dec.w":{"dtype":"BF16"' in header
    import torch
    from safetensors.torch import load_file

    assert load_file(str(model))["dec.w"].float().tolist() == bf16.astype(np.float32).tolist()
    assert not any(p.name.endswith(".ckptfs") for p in model.parent.iterdir())  # the overlay is gone
    assert torch is not None


def test_a_mount_without_edits_leaves_the_source_alone(mount, model):
    before = os.stat(model)
    digest = _sha(model)
    mnt = mount(model)
    data = (mnt / "enc" / "w.npy").read_bytes()
    with open(mnt / "enc" / "w.npy", "r+b") as f:  # rewritten with the same bytes: not an edit
        f.write(data)
    os.utime(mnt / "enc" / "b.npy")  # touch: not an edit
    (mnt / ".enc.swp").write_bytes(b"vim swap")  # an editor's file: never packed
    assert _umount(mnt).returncode == 0
    after = os.stat(model)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and _sha(model) == digest
    assert not [p.name for p in model.parent.iterdir() if "ckptfs" in p.name]  # no overlay, no temp file


def test_mmap_write_copies_blocks_not_the_tensor(mount, model):
    mnt = mount(model)
    array = np.load(mnt / "big.npy", mmap_mode="r+")
    array[123456] = 42.0
    array.flush()
    del array
    data_files = list((model.parent / ".model.safetensors.ckptfs" / "data").iterdir())
    assert len(data_files) == 1
    allocated = os.stat(data_files[0]).st_blocks * 512
    assert allocated < (1 << 22) // 8  # a block or two of a 4 MiB tensor
    assert _umount(mnt).returncode == 0
    big = _read_safetensors(model)[0]["big"]
    assert big[123456] == 42.0 and np.count_nonzero(big) == 1


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()}


def test_nemo_edits_with_sed_vim_cp_and_rm(mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    original = _tar_members(nemo)
    vocab = next(n for n in original if n.endswith("_vocab.txt"))
    mnt = mount(nemo)
    config = mnt / "model_config.yaml"
    subprocess.run(["sed", "-i", "s/^d_in: 16$/d_in: 32/", config], check=True, timeout=30)
    subprocess.run(["vim", "-E", "-s", "-c", "%s/^d_out: 8$/d_out: 9/", "-c", "wq", config], check=True, timeout=30)
    new_vocab = tmp_path / "vocab.txt"
    new_vocab.write_text("a\nb\n")
    shutil.copy(new_vocab, mnt / vocab[2:])  # cp over an artifact
    (mnt / "notes").mkdir()
    (mnt / "notes" / "README.txt").write_text("fine-tuned\n")
    (mnt / "scratch.txt").write_text("x")
    os.rename(mnt / "scratch.txt", mnt / "notes" / "moved.txt")
    os.unlink(mnt / "notes" / "moved.txt")
    with pytest.raises(OSError):
        (mnt / "model_weights.ckpt" / "new.npy").write_bytes(b"x")  # nested checkpoints are read-only here
    done = _umount(mnt)
    assert done.returncode == 0, done.stderr
    members = _tar_members(nemo)
    text = members["./model_config.yaml"].decode()
    assert "d_in: 32" in text and "d_out: 9" in text
    assert text.replace("d_in: 32", "d_in: 16").replace("d_out: 9", "d_out: 8").encode() == original["./model_config.yaml"]
    assert members[vocab] == b"a\nb\n"
    assert members["./model_weights.ckpt"] == original["./model_weights.ckpt"]
    assert members["./notes/README.txt"] == b"fine-tuned\n" and "./notes" in members
    assert list(members)[: len(original)] == list(original)  # order kept, new members after
    assert not [n for n in members if "swp" in n or n.endswith("~") or "moved" in n]


def test_gzip_nemo_stays_gzip(mount, tmp_path):
    nemo = tmp_path / "old.nemo"
    with gzip.GzipFile(nemo, "wb", mtime=0) as gz:
        gz.write(NEMO.read_bytes())
    mnt = mount(nemo)
    (mnt / "model_config.yaml").write_text("d_in: 1\n")
    assert _umount(mnt).returncode == 0
    assert nemo.read_bytes()[:2] == b"\x1f\x8b"
    assert _tar_members(nemo)["./model_config.yaml"] == b"d_in: 1\n"


def test_umount_discard_drops_the_edits(mount, model):
    digest = _sha(model)
    mnt = mount(model)
    os.unlink(mnt / "big.npy")
    assert _umount(mnt, "--discard").returncode == 0
    assert _sha(model) == digest
    assert not (model.parent / ".model.safetensors.ckptfs").exists()


def test_a_second_writable_mount_is_read_only(mount, model):
    first = mount(model, log_errors_expected=True)
    second = mount(model)
    assert b"already mounted writable" in os.getxattr(second, "user.ckptfs.read_only")
    with pytest.raises(OSError):
        (second / "x.npy").write_bytes(b"")
    (first / "x.txt").write_text("")  # still writable; and not a tensor: the repack refuses it
    done = _umount(first)
    assert done.returncode == 1 and "x.txt" in done.stderr and ".model.safetensors.ckptfs" in done.stderr
    assert run_ckptfs("recover", model, "--discard").returncode == 0


def _daemon_pid(mnt: Path) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mnt).encode() in argv and b"mount" in argv:
                return int(entry)
    raise AssertionError("daemon not found")


def test_killed_daemon_keeps_source_and_edits_for_recover(mount, model):
    digest = _sha(model)
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "enc" / "w.npy", np.eye(2, dtype=np.float32))
    with open(mnt / "added.npy", "wb") as f:
        np.save(f, np.arange(3, dtype=np.int32))
        f.flush()
        os.fsync(f.fileno())
    os.kill(_daemon_pid(mnt), signal.SIGKILL)
    assert _umount(mnt).returncode == 1  # clears the dead mount
    assert _sha(model) == digest
    again = run_ckptfs("mount", model, mnt)  # says that edits are waiting, mounts read-only
    assert again.returncode == 0 and "edits of an earlier mount are waiting" in again.stderr
    assert _umount(mnt).returncode == 0
    done = run_ckptfs("recover", model, "--resume")
    assert done.returncode == 0, done.stderr
    tensors, _ = _read_safetensors(model)
    assert tensors["enc.w"].tolist() == [[1, 0], [0, 1]] and tensors["added"].tolist() == [0, 1, 2]


def test_a_bad_edit_is_refused_and_kept_for_fixing(mount, model, tmp_path):
    digest = _sha(model)
    mnt = mount(model, log_errors_expected=True)
    (mnt / "enc" / "w.npy").write_bytes(b"not npy")
    (mnt / "__metadata__.yaml").write_text("a: [unclosed\n")
    done = _umount(mnt)
    assert done.returncode == 1
    assert "enc.w: not an NPY file" in done.stderr and "__metadata__.yaml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and _sha(model) == digest
    out = tmp_path / "fixed.safetensors"
    assert run_ckptfs("recover", model, "--resume", "--output", out).returncode == 1  # still bad
    assert run_ckptfs("recover", model, "--discard").returncode == 0
    assert _sha(model) == digest


def test_a_source_changed_under_the_mount_is_not_overwritten(mount, model):
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "new.npy", np.ones(2))
    with open(model, "ab") as f:
        f.write(b"\0")  # somebody else changes the file
    changed = _sha(model)
    done = _umount(mnt)
    assert done.returncode == 1 and "changed since it was mounted" in done.stderr
    assert _sha(model) == changed
    assert run_ckptfs("recover", model, "--discard").returncode == 0
