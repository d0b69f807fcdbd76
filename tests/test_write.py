"""Writable mounts: edits through real FUSE, repacked on unmount, read back
with safetensors and tarfile; crashes, discards and bad edits."""

import errno
import gzip
import hashlib
import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from .conftest import FIXTURES, TIMEOUT, daemon_pid, run_ckptfs, sha256, tar_members, umount, write_refused

NEMO = FIXTURES / "nemo" / "tiny.nemo"


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
    done = umount(mnt)
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


def test_the_tensor_index_and_info_follow_the_edits(mount, model):
    import yaml

    mnt = mount(model)
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert info["tensors"] == 4
    np.save(mnt / "added.npy", np.zeros((2, 5), dtype=np.float16))
    os.unlink(mnt / "big.npy")
    rows = [line.split("\t") for line in (mnt / ".ckptfs" / "tensors.tsv").read_text().splitlines()[1:]]
    by_name = {r[1]: r for r in rows}
    assert sorted(by_name) == ["added", "dec.w", "enc.b", "enc.w"]
    assert by_name["added"][2:6] == ["float16", "[2, 5]", "10", "20"]
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert info["tensors"] == 4 and info["by_dtype"]["float16"]["parameters"] == 10
    assert "float32" in info["by_dtype"] and info["by_dtype"]["float32"]["parameters"] == 12
    assert umount(mnt, "--discard").returncode == 0


def test_a_mount_without_edits_leaves_the_source_alone(mount, model):
    before = os.stat(model)
    digest = sha256(model)
    mnt = mount(model)
    data = (mnt / "enc" / "w.npy").read_bytes()
    with open(mnt / "enc" / "w.npy", "r+b") as f:  # rewritten with the same bytes: not an edit
        f.write(data)
    os.utime(mnt / "enc" / "b.npy")  # touch: not an edit
    (mnt / ".enc.swp").write_bytes(b"vim swap")  # an editor's file: never packed
    assert umount(mnt).returncode == 0
    after = os.stat(model)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and sha256(model) == digest
    assert not [p.name for p in model.parent.iterdir() if "ckptfs" in p.name]  # no overlay, no temp file


def test_ignored_names_can_be_added_to_or_replaced(mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    digest = sha256(nemo)
    mnt = mount(nemo, "-o", "ignore=+*.bak")
    (mnt / "model_config.yaml.bak").write_text("a backup\n")
    (mnt / ".model_config.yaml.swp").write_bytes(b"vim swap")  # still ignored: a default
    assert umount(mnt).returncode == 0 and sha256(nemo) == digest  # no edit
    mnt = mount(nemo, "-o", "ignore=")
    (mnt / "notes.tmp").write_text("kept\n")
    assert umount(mnt).returncode == 0
    assert tar_members(nemo)["./notes.tmp"] == b"kept\n"


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
    assert umount(mnt).returncode == 0
    big = _read_safetensors(model)[0]["big"]
    assert big[123456] == 42.0 and np.count_nonzero(big) == 1


def test_nemo_edits_with_sed_vim_cp_and_rm(mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    original = tar_members(nemo)
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
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    members = tar_members(nemo)
    text = members["./model_config.yaml"].decode()
    assert "d_in: 32" in text and "d_out: 9" in text
    assert text.replace("d_in: 32", "d_in: 16").replace("d_out: 9", "d_out: 8").encode() == original["./model_config.yaml"]
    assert members[vocab] == b"a\nb\n"
    assert members["./model_weights.ckpt"] == original["./model_weights.ckpt"]
    assert members["./notes/README.txt"] == b"fine-tuned\n" and "./notes" in members
    assert list(members)[: len(original)] == list(original)  # order kept, new members after
    assert not [n for n in members if "swp" in n or n.endswith("~") or "moved" in n]


def test_renamed_and_unlinked_files_stay_writable_through_open_handles(mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    mnt = mount(nemo)
    (mnt / "a.txt").write_text("a")
    os.rename(mnt / "a.txt", mnt / "b.txt")
    with open(mnt / "b.txt", "r+") as f:  # the kernel knows the inode from the rename: no lookup
        f.write("B")
    with open(mnt / "model_config.yaml", "r+") as f:
        os.rename(mnt / "model_config.yaml", mnt / "renamed.yaml")
        f.write("# x")
        f.truncate(3)
    with open(mnt / "gone.txt", "w") as f:
        os.unlink(mnt / "gone.txt")
        f.write("still writable")
        f.truncate(5)
    assert (mnt / "b.txt").read_text() == "B" and (mnt / "renamed.yaml").read_text() == "# x"
    assert umount(mnt).returncode == 0
    members = tar_members(nemo)
    assert members["./b.txt"] == b"B" and members["./renamed.yaml"] == b"# x"
    assert "./model_config.yaml" not in members and not [n for n in members if "gone" in n]


def test_gzip_nemo_stays_gzip(mount, tmp_path):
    nemo = tmp_path / "old.nemo"
    with gzip.GzipFile(nemo, "wb", mtime=0) as gz:
        gz.write(NEMO.read_bytes())
    mnt = mount(nemo)
    (mnt / "model_config.yaml").write_text("d_in: 1\n")
    assert umount(mnt).returncode == 0
    assert nemo.read_bytes()[:2] == b"\x1f\x8b"
    assert tar_members(nemo)["./model_config.yaml"] == b"d_in: 1\n"


def test_umount_discard_drops_the_edits(mount, model):
    digest = sha256(model)
    mnt = mount(model)
    os.unlink(mnt / "big.npy")
    assert umount(mnt, "--discard").returncode == 0
    assert sha256(model) == digest
    assert not (model.parent / ".model.safetensors.ckptfs").exists()


def test_a_second_writable_mount_is_read_only(mount, model):
    first = mount(model, log_errors_expected=True)
    second = mount(model)
    assert b"already mounted writable" in os.getxattr(second, "user.ckptfs.read_only")
    with pytest.raises(OSError):
        (second / "x.npy").write_bytes(b"")
    (first / "x.txt").write_text("")  # still writable; and not a tensor: the repack refuses it
    done = umount(first)
    assert done.returncode == 1 and "x.txt" in done.stderr and ".model.safetensors.ckptfs" in done.stderr
    assert run_ckptfs("recover", model, "--discard").returncode == 0


def test_killed_daemon_keeps_source_and_edits_for_recover(mount, model):
    digest = sha256(model)
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "enc" / "w.npy", np.eye(2, dtype=np.float32))
    with open(mnt / "added.npy", "wb") as f:
        np.save(f, np.arange(3, dtype=np.int32))
        f.flush()
        os.fsync(f.fileno())
    os.kill(daemon_pid(mnt), signal.SIGKILL)
    assert umount(mnt).returncode == 1  # clears the dead mount
    assert sha256(model) == digest
    again = run_ckptfs("mount", model, mnt)  # says that edits are waiting, mounts read-only
    assert again.returncode == 0 and "edits of an earlier mount are waiting" in again.stderr
    assert umount(mnt).returncode == 0
    done = run_ckptfs("recover", model, "--resume")
    assert done.returncode == 0, done.stderr
    tensors, _ = _read_safetensors(model)
    assert tensors["enc.w"].tolist() == [[1, 0], [0, 1]] and tensors["added"].tolist() == [0, 1, 2]


def test_a_bad_edit_is_refused_and_kept_for_fixing(mount, model, tmp_path):
    digest = sha256(model)
    mnt = mount(model, log_errors_expected=True)
    write_refused(mnt / "enc" / "w.npy", b"not npy")
    write_refused(mnt / "__metadata__.yaml", b"a: [unclosed\n")
    done = umount(mnt)
    assert done.returncode == 1
    assert "enc.w: not an NPY file" in done.stderr and "__metadata__.yaml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and sha256(model) == digest
    out = tmp_path / "fixed.safetensors"
    assert run_ckptfs("recover", model, "--resume", "--output", out).returncode == 1  # still bad
    assert run_ckptfs("recover", model, "--discard").returncode == 0
    assert sha256(model) == digest


def test_an_edit_that_cannot_be_written_back_fails_when_closed(mount, model):
    mnt = mount(model)
    tensor = mnt / "enc" / "w.npy"
    with open(tensor, "wb") as f:  # complex128: safetensors has no such dtype
        np.save(f, np.ones(3, dtype=np.complex128))
        with pytest.raises(OSError) as refused:
            f.close()
    assert refused.value.errno == errno.EINVAL
    problem = os.getxattr(tensor, "user.ckptfs.problem").decode()
    assert problem == "enc.w: NPY dtype '<c16' cannot be stored in safetensors"
    np.save(tensor, np.ones(3, dtype=np.float32))  # fixed: the close succeeds and the problem is gone
    assert "user.ckptfs.problem" not in os.listxattr(tensor)
    with open(tensor, "r+b") as f:  # a size that does not match the shape
        f.truncate(f.seek(0, os.SEEK_END) - 4)
        with pytest.raises(OSError):
            f.close()
    assert os.getxattr(tensor, "user.ckptfs.problem").endswith(b"8 bytes of data, but shape [3] of float32 needs 12")
    np.save(tensor, np.zeros((2, 2), dtype=np.float16))
    staged = mnt / "staged.npy.part"
    staged.write_bytes(b"not yet npy")  # a name no writer reads: not checked
    os.rename(staged, mnt / "staged.npy")  # moved into place: checked, with a warning (a rename cannot fail for it)
    assert "not an NPY file" in os.getxattr(mnt / "staged.npy", "user.ckptfs.problem").decode()
    os.unlink(mnt / "staged.npy")
    assert umount(mnt).returncode == 0
    assert _read_safetensors(model)[0]["enc.w"].dtype == np.float16


def test_a_source_changed_under_the_mount_is_not_overwritten(mount, model):
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "new.npy", np.ones(2))
    with open(model, "ab") as f:
        f.write(b"\0")  # somebody else changes the file
    changed = sha256(model)
    done = umount(mnt)
    assert done.returncode == 1 and "changed since it was mounted" in done.stderr
    assert sha256(model) == changed
    assert run_ckptfs("recover", model, "--discard").returncode == 0


def _nano_edit(path: Path, keys: bytes) -> None:
    """Drive nano on a pseudo-terminal as a user would: wait for its screen,
    type `keys`, write out (^O, Enter) and exit (^X)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the terminal type is set: CI may run without one
        os.execvpe("nano", ["nano", "--ignorercfiles", str(path)], {**os.environ, "TERM": "xterm"})

    def settle(quiet: float = 0.7, timeout: float = 60) -> None:
        """Read nano's output until it has drawn something and then been
        quiet for `quiet` seconds: its screen is up."""
        deadline, last = time.monotonic() + timeout, None
        while last is None or time.monotonic() - last < quiet:
            assert time.monotonic() < deadline, "nano never settled"
            if select.select([fd], [], [], 0.05)[0]:
                os.read(fd, 65536)
                last = time.monotonic()

    try:
        settle()
        os.write(fd, keys)
        os.write(fd, b"\x0f")  # ^O: write out
        settle()
        os.write(fd, b"\r")  # keep the file name
        settle()
        os.write(fd, b"\x18")  # ^X
        deadline = time.monotonic() + 60
        while not os.waitpid(pid, os.WNOHANG)[0]:
            assert time.monotonic() < deadline, "nano did not exit"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    os.read(fd, 65536)
                except OSError:
                    pass
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_tools_on_a_nemo_nano_dd_truncate_mv_and_rm_r(mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    mnt = mount(nemo)
    _nano_edit(mnt / "model_config.yaml", b"# nano was here\r")
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'blob.bin'}", "bs=1k", "count=64", "status=none"], check=True,
                   timeout=TIMEOUT)
    subprocess.run(["dd", f"of={mnt / 'blob.bin'}", "bs=1", "seek=100", "conv=notrunc", "status=none"],
                   input=b"PATCH", check=True, timeout=TIMEOUT)
    subprocess.run(["truncate", "-s", "1000", mnt / "blob.bin"], check=True, timeout=TIMEOUT)
    with open(mnt / "log.txt", "a") as f:
        f.write("one\n")
    with open(mnt / "log.txt", "a") as f:
        f.write("two\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("moved in\n")
    shutil.move(outside, mnt / "moved.txt")
    (mnt / "many").mkdir()
    for i in range(2000):
        (mnt / "many" / f"{i}.txt").write_text(str(i))
    assert len(os.listdir(mnt / "many")) == 2000
    subprocess.run(["rm", "-r", mnt / "many"], check=True, timeout=120)
    shutil.move(mnt / "moved.txt", tmp_path / "back.txt")  # and out again
    assert (tmp_path / "back.txt").read_text() == "moved in\n"
    os.chmod(mnt / "log.txt", 0o600)
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    members = tar_members(nemo)
    assert members["./model_config.yaml"].startswith(b"# nano was here\n")
    blob = members["./blob.bin"]
    assert len(blob) == 1000 and blob[100:105] == b"PATCH" and blob.count(0) == 995
    assert members["./log.txt"] == b"one\ntwo\n"
    assert not [n for n in members if "many" in n or "moved" in n]


def test_kill_during_repack_leaves_the_source_and_recover_finishes(mount, tmp_path):
    import threading
    import time

    path = tmp_path / "big.safetensors"
    save_file({"a": np.zeros(1 << 26, dtype=np.float32), "b": np.ones(4, dtype=np.float32)}, str(path))  # 256 MiB
    digest = sha256(path)
    mnt = mount(path, log_errors_expected=True)
    np.save(mnt / "b.npy", np.full(4, 3, dtype=np.float32))
    pid = daemon_pid(mnt)
    unmounting = threading.Thread(target=umount, args=(mnt,))
    unmounting.start()
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".ckptfs-new") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, "the repack never started"
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    unmounting.join(timeout=90)
    assert sha256(path) == digest
    done = run_ckptfs("recover", path, "--resume")
    assert done.returncode == 0, done.stderr
    assert not [p for p in tmp_path.iterdir() if "ckptfs" in p.name]
    tensors, _ = _read_safetensors(path)
    assert tensors["b"].tolist() == [3, 3, 3, 3] and tensors["a"].shape == (1 << 26,)


@pytest.fixture
def small_fs(tmp_path):
    """A 40 MiB tmpfs, unmounted after the test."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", where], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, f"cannot mount a tmpfs (the tests run as root): {done.stderr.strip()}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], capture_output=True, timeout=TIMEOUT)


def test_a_full_disk_during_repack_leaves_the_source_and_the_edits(mount, small_fs):
    path = small_fs / "m.safetensors"
    save_file({"a": np.zeros(10 << 18, dtype=np.float32)}, str(path))  # 10 MiB
    digest = sha256(path)
    mnt = mount(path, log_errors_expected=True)
    np.save(mnt / "extra.npy", np.ones(12 << 18, dtype=np.float32))  # 12 MiB more: 22 MiB to write, 18 free
    done = umount(mnt)
    assert done.returncode == 1 and "No space left on device" in done.stderr, done.stderr
    assert sha256(path) == digest
    assert not [p for p in small_fs.iterdir() if p.name.endswith(".ckptfs-new")]
    assert (small_fs / ".m.safetensors.ckptfs" / "journal").exists()
    assert run_ckptfs("recover", path, "--discard").returncode == 0


def test_patching_tensors_of_a_pt_and_of_the_ckpt_inside_a_nemo(mount, tmp_path):
    import torch

    pt = tmp_path / "model.pt"
    state = {"layer": {"w": torch.arange(12.0).reshape(3, 4), "b": torch.zeros(4)}, "step": 3}
    torch.save(state, pt)
    mnt = mount(pt)
    w = np.load(mnt / "layer" / "w.npy", mmap_mode="r+")
    w[1, 2] = -1.0  # an mmap write
    w.flush()
    del w
    np.save(mnt / "layer" / "b.npy", np.full(4, 0.5, dtype=np.float32))  # a rewrite, same shape and dtype
    assert umount(mnt).returncode == 0
    for loaded in (torch.load(pt, weights_only=True), torch.load(pt, weights_only=True, mmap=True)):
        expected = torch.arange(12.0).reshape(3, 4)
        expected[1, 2] = -1
        assert torch.equal(loaded["layer"]["w"], expected) and loaded["layer"]["b"].tolist() == [0.5] * 4
        assert loaded["step"] == 3

    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    original = tar_members(nemo)
    mnt = mount(nemo)
    tensor = next(p for p in sorted((mnt / "model_weights.ckpt").rglob("*.npy")) if np.load(p).dtype == np.float32)
    values = np.load(tensor)
    np.save(tensor, values + 1)
    assert umount(mnt).returncode == 0
    members = tar_members(nemo)
    assert [n for n in members if members[n] != original[n]] == ["./model_weights.ckpt"]
    weights = torch.load(io.BytesIO(members["./model_weights.ckpt"]), weights_only=False)
    before = torch.load(io.BytesIO(original["./model_weights.ckpt"]), weights_only=False)
    changed = [k for k in before if not torch.equal(before[k], weights[k])]
    assert len(changed) == 1 and torch.equal(weights[changed[0]], before[changed[0]] + 1)


def test_hugging_face_directory_edits_go_back_to_their_shards(mount, tmp_path):
    import json

    model = tmp_path / "bert"
    shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    names_before = sorted(index["weight_map"])
    first, gone = names_before[0], names_before[1]
    untouched_shard = sorted(set(index["weight_map"].values()))[0]
    inode = os.stat(model / untouched_shard).st_ino
    mnt = mount(model)
    parts = first.split(".")
    path = mnt.joinpath(*parts[:-1], parts[-1] + ".npy")
    values = np.load(path)
    np.save(path, values * 2)
    gone_parts = gone.split(".")
    os.unlink(mnt.joinpath(*gone_parts[:-1], gone_parts[-1] + ".npy"))
    np.save(mnt / "extra_head.npy", np.arange(4, dtype=np.float32))
    config = json.loads((mnt / "config.json").read_text())
    config["num_labels"] = 7
    (mnt / "config.json").write_text(json.dumps(config))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    new_index = json.loads((model / "model.safetensors.index.json").read_text())
    assert sorted(new_index["weight_map"]) == sorted(set(names_before) - {gone} | {"extra_head"})
    loaded = {}
    for shard in sorted(set(new_index["weight_map"].values())):
        with safe_open(str(model / shard), "np") as f:
            loaded.update({k: f.get_tensor(k) for k in f.keys()})
    assert sorted(loaded) == sorted(new_index["weight_map"])
    assert np.array_equal(loaded[first], values * 2) and loaded["extra_head"].tolist() == [0, 1, 2, 3]
    assert json.loads((model / "config.json").read_text())["num_labels"] == 7
    if "total_size" in index.get("metadata", {}):
        assert new_index["metadata"]["total_size"] == sum(t.nbytes for t in loaded.values())
    if index["weight_map"][first] != untouched_shard and index["weight_map"][gone] != untouched_shard:
        assert os.stat(model / untouched_shard).st_ino == inode  # unchanged shards are hard links of the old
    assert not [p for p in tmp_path.iterdir() if "ckptfs" in p.name]


def test_commit_writes_now_and_the_mount_goes_on_with_the_new_checkpoint(mount, model):
    import errno

    mnt = mount(model)
    np.save(mnt / "enc" / "w.npy", np.full((2, 2), 5, dtype=np.float32))
    reader = open(mnt / "big.npy", "rb")  # open across the commit: reads stay consistent
    writer = open(mnt / "enc" / "w.npy", "r+b", buffering=0)
    first = reader.read(1 << 20)
    done = run_ckptfs("commit", mnt)
    assert done.returncode == 0, done.stderr
    assert _read_safetensors(model)[0]["enc.w"].tolist() == [[5, 5], [5, 5]]
    assert not (model.parent / ".model.safetensors.ckptfs").exists()
    reader.seek(0)
    assert reader.read(1 << 20) == first and len(reader.read()) > 0
    reader.close()
    with pytest.raises(OSError) as err:
        writer.write(b"x" * 10)
    assert err.value.errno == errno.ESTALE  # its edits were written by the commit
    writer.close()
    assert np.load(mnt / "enc" / "w.npy").tolist() == [[5, 5], [5, 5]]  # served from the new file
    np.save(mnt / "new.npy", np.arange(3, dtype=np.int8))  # and writable again
    assert umount(mnt).returncode == 0
    tensors, _ = _read_safetensors(model)
    assert tensors["new"].tolist() == [0, 1, 2] and tensors["enc.w"].tolist() == [[5, 5], [5, 5]]


def test_listings_follow_the_commit_though_the_kernel_caches_them(mount, model):
    """Folders are opened without asking the daemon (zero-message opendir),
    so the kernel keeps their listings; after a commit the root's shows what
    the repack kept: an editor's swap file and an empty folder are not packed."""
    mnt = mount(model)
    (mnt / ".w.npy.swp").write_bytes(b"vim")
    (mnt / "empty").mkdir()
    np.save(mnt / "new.npy", np.arange(3, dtype=np.int8))
    before = sorted(os.listdir(mnt))
    assert {".w.npy.swp", "empty", "new.npy", "enc"} <= set(before)
    assert sorted(os.listdir(mnt)) == sorted(os.listdir(mnt))  # listed twice: the second from the kernel's cache
    done = run_ckptfs("commit", mnt)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(mnt)) == [n for n in before if n not in (".w.npy.swp", "empty")]
    assert sorted(os.listdir(mnt / "enc")) == ["b.npy", "w.npy"]


@pytest.mark.parametrize("kind", ["safetensors", "nemo"])
def test_forced_commits_without_edits_load_equal_and_repeat_byte_for_byte(mount, model, tmp_path, kind):
    source = model if kind == "safetensors" else tmp_path / "model.nemo"
    if kind == "nemo":
        shutil.copy(NEMO, source)
    before = _read_safetensors(source)[0] if kind == "safetensors" else tar_members(source)
    mnt = mount(source)
    digests = []
    for _ in range(2):
        done = run_ckptfs("commit", "--force", mnt)
        assert done.returncode == 0, done.stderr
        digests.append(sha256(source))
    assert digests[0] == digests[1]
    if kind == "safetensors":
        after = _read_safetensors(source)[0]
        assert sorted(after) == sorted(before) and all(np.array_equal(after[k], before[k]) for k in before)
    else:
        assert tar_members(source) == before
    assert umount(mnt).returncode == 0


def test_readers_of_members_after_an_edited_one_read_consistent_data_across_commit(mount, tmp_path):
    nemo = tmp_path / "model.nemo"
    shutil.copy(NEMO, nemo)
    mnt = mount(nemo)
    tensors = sorted((mnt / "model_weights.ckpt").rglob("*.npy"))
    expected = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tensors}
    handles = {p: open(p, "rb") for p in tensors}
    halves = {p: f.read(max(1, os.path.getsize(p) // 2)) for p, f in handles.items()}
    (mnt / "model_config.yaml").write_text("# a longer config moves every member after it\n" * 50)
    assert run_ckptfs("commit", mnt).returncode == 0
    for p, f in handles.items():
        assert hashlib.sha256(halves[p] + f.read()).hexdigest() == expected[p]
        f.close()
    for p in tensors:  # opened again: the new file, same tensors
        assert hashlib.sha256(p.read_bytes()).hexdigest() == expected[p]
    assert umount(mnt).returncode == 0


def test_overwritten_column_sharded_tensor_is_split_back_into_its_chunks(mount, tmp_path):
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    ckpt = tmp_path / "fsdp2"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", ckpt)
    ref = torch.load(FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", weights_only=False)
    mnt = mount(ckpt)
    new = np.arange(60, dtype=np.float32).reshape(10, 6) * -1
    np.save(mnt / "extra" / "colsharded.npy", new)  # Shard(1): each rank's chunk is a column block
    weight = np.load(mnt / "model" / "0" / "weight.npy")
    array = np.load(mnt / "model" / "0" / "weight.npy", mmap_mode="r+")
    array[15, 3] = 99.0  # in rank 1's row shard, through mmap
    array.flush()
    del array
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    state = {
        "extra": {"colsharded": torch.zeros(10, 6)},
        "model": {name: torch.zeros_like(t) for name, t in ref["model"].items()},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(ckpt))
    assert state["extra"]["colsharded"].numpy().tolist() == new.tolist()
    weight[15, 3] = 99.0
    assert np.array_equal(state["model"]["0.weight"].numpy(), weight)
    for name, tensor in ref["model"].items():
        if name != "0.weight":
            assert torch.equal(state["model"][name], tensor), name


def test_removing_the_optimizer_state_of_a_distributed_checkpoint_shrinks_it(mount, tmp_path):
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    ckpt = tmp_path / "fsdp2"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", ckpt)
    ref = torch.load(FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", weights_only=False)
    size_before = sum(p.stat().st_size for p in ckpt.glob("*.distcp"))
    mnt = mount(ckpt)
    shutil.rmtree(mnt / "optim")
    os.unlink(mnt / "extra" / "note.yaml")
    new = np.arange(60, dtype=np.float32).reshape(10, 6)
    np.save(mnt / "extra" / "colsharded.npy", new)  # a patch in the same repack
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert sum(p.stat().st_size for p in ckpt.glob("*.distcp")) < size_before
    keys = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    assert not [k for k in keys if k.startswith("optim.") or k == "extra.note"]
    assert "model.0.weight" in keys and "extra.step" in keys
    state = {
        "extra": {"colsharded": torch.zeros(10, 6), "step": 0},
        "model": {name: torch.zeros_like(t) for name, t in ref["model"].items()},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(ckpt))
    assert state["extra"]["colsharded"].numpy().tolist() == new.tolist()
    for name, tensor in ref["model"].items():
        assert torch.equal(state["model"][name], tensor), name
    mnt = mount(ckpt)  # and ckptfs reads it back
    assert not (mnt / "optim").exists() and (mnt / "model" / "0" / "weight.npy").exists()


def test_tensors_added_and_reshaped_in_a_distributed_checkpoint(mount, tmp_path):
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    ckpt = tmp_path / "fsdp2"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", ckpt)
    ref = torch.load(FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", weights_only=False)
    mnt = mount(ckpt)
    wider = np.arange(72, dtype=np.float64).reshape(12, 6)
    np.save(mnt / "extra" / "colsharded.npy", wider)  # a new shape and dtype: stored whole
    np.save(mnt / "model" / "new.npy", np.arange(3, dtype=np.int16))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__0_1.distcp", "__1_0.distcp"]
    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata()
    assert metadata.planner_data["model.new"] == ("model", "new")
    state = {
        "extra": {"colsharded": torch.zeros(12, 6, dtype=torch.float64)},
        "model": {**{name: torch.zeros_like(t) for name, t in ref["model"].items()}, "new": torch.zeros(3, dtype=torch.int16)},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(ckpt))
    assert state["extra"]["colsharded"].numpy().tolist() == wider.tolist()
    assert state["model"]["new"].tolist() == [0, 1, 2]
    assert all(torch.equal(state["model"][name], tensor) for name, tensor in ref["model"].items())
    mnt = mount(ckpt)
    assert np.load(mnt / "extra" / "colsharded.npy").tolist() == wider.tolist()


@pytest.mark.parametrize("mode", ["w:", "w:gz"], ids=["tar", "gzip"])
def test_a_distributed_checkpoint_inside_a_nemo_takes_patches_and_removals(mount, tmp_path, mode):
    import tarfile
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    ref = torch.load(FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", weights_only=False)
    config = tmp_path / "model_config.yaml"
    config.write_text("precision: bf16-mixed\n")
    nemo = tmp_path / "megatron.nemo"
    with tarfile.open(nemo, mode) as tf:  # NeMo's layout: the weights as a DCP folder in the tar
        tf.add(config, arcname="./model_config.yaml")
        tf.add(FIXTURES / "dcp" / "fsdp2_2rank", arcname="./model_weights")
    original = tar_members(nemo)
    mnt = mount(nemo)
    weights = mnt / "model_weights"
    new = np.arange(60, dtype=np.float32).reshape(10, 6)
    np.save(weights / "extra" / "colsharded.npy", new)
    shutil.rmtree(weights / "optim")
    np.save(weights / "model" / "added.npy", np.ones(2, dtype=np.float32))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    members = tar_members(nemo)
    assert list(members) == list(original) + ["./model_weights/__0_1.distcp"]  # the new tensor's shard at the end
    assert members["./model_config.yaml"] == original["./model_config.yaml"]
    assert len(members["./model_weights/__0_0.distcp"]) < len(original["./model_weights/__0_0.distcp"])
    unpacked = tmp_path / "unpacked"
    with tarfile.open(nemo) as tf:
        tf.extractall(unpacked, filter="data")
    state = {"extra": {"colsharded": torch.zeros(10, 6)},
             "model": {**{name: torch.zeros_like(t) for name, t in ref["model"].items()}, "added": torch.zeros(2)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(unpacked / "model_weights"))
        keys = dcp.FileSystemReader(str(unpacked / "model_weights")).read_metadata().state_dict_metadata
    assert not [k for k in keys if k.startswith("optim.")]
    assert state["extra"]["colsharded"].numpy().tolist() == new.tolist()
    assert state["model"]["added"].tolist() == [1, 1]
    assert (nemo.read_bytes()[:2] == b"\x1f\x8b") == (mode == "w:gz")  # a gzip .nemo stays gzip
    assert all(torch.equal(state["model"][name], tensor) for name, tensor in ref["model"].items())


def test_backup_keeps_the_original_beside_the_new_checkpoint(mount, model, tmp_path):
    digest = sha256(model)
    mnt = mount(model)
    os.unlink(mnt / "big.npy")
    assert umount(mnt, "--backup").returncode == 0
    assert sha256(model.with_name("model.safetensors.orig")) == digest
    assert "big" not in _read_safetensors(model)[0]
    model_dir = tmp_path / "bert"
    shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", model_dir)
    mnt = mount(model_dir)
    (mnt / "config.json").write_text("{}")
    done = run_ckptfs("commit", "--backup", mnt)
    assert done.returncode == 0, done.stderr
    assert (model_dir / "config.json").read_text() == "{}"
    assert (tmp_path / "bert.orig" / "config.json").read_text() != "{}"
    assert umount(mnt).returncode == 0


def test_a_source_on_a_read_only_filesystem_mounts_read_only_and_says_so(mnt, small_fs, model):
    shutil.copy(model, small_fs / "m.safetensors")
    done = subprocess.run(["mount", "-o", "remount,ro", small_fs], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    done = run_ckptfs("mount", small_fs / "m.safetensors", mnt)
    assert done.returncode == 0
    reason = f"{small_fs}: not writable, so edits cannot be kept beside the source"
    assert done.stderr == f"ckptfs: {reason}; mounted read-only\n"
    assert os.getxattr(mnt, "user.ckptfs.read_only").decode() == reason
    with pytest.raises(OSError):
        np.save(mnt / "x.npy", np.ones(1))
    assert np.load(mnt / "enc" / "w.npy").shape == (3, 4)
    assert umount(mnt).returncode == 0
