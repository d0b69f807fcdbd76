"""Every piece of advice ckptfs prints is a command that works in the state
it is printed in: each test below takes the commands out of the message and
runs them."""

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ckptfs.mount import mounts

from .conftest import FIXTURES, is_mounted, run_ckptfs, sha256, umount, write_refused

COMMAND = re.compile(r"ckptfs (?:mount|umount|commit|recover)\b[^,;()]*")


def advised(message: str, **placeholders: Path) -> list[list[str]]:
    """The commands a message advises, as argument lists after `ckptfs`,
    with the placeholders it names (NEW, MOUNTPOINT) filled in."""
    found = []
    for text in COMMAND.findall(message):
        words = text.split()[1:]
        found.append([str(placeholders.get(w, w)) for w in words])
    assert found, f"no advice in {message!r}"
    return found


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32), "b": np.ones(2, dtype=np.int64)}, str(path))
    return path


def _with_a_refused_edit(mount, model) -> Path:
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "kept.npy", np.full(3, 5, dtype=np.int16))  # a good edit, to be kept
    write_refused(mnt / "w.npy", b"not npy")
    return mnt


def test_a_refused_repack_can_be_fixed_in_a_resumed_mount(mount, model, tmp_path):
    digest = sha256(model)
    mnt = _with_a_refused_edit(mount, model)
    done = umount(mnt)
    assert done.returncode == 1 and not is_mounted(mnt) and sha256(model) == digest
    resume, discard = advised(done.stderr)
    assert resume == ["mount", "--resume", str(model), str(mnt)] and discard == ["recover", str(model), "--discard"]
    # without --resume, a mount is read-only and says how to take the edits up
    again = run_ckptfs("mount", model, mnt)
    assert again.returncode == 0 and "mounted read-only" in again.stderr
    assert advised(again.stderr, MOUNTPOINT=mnt) == [resume, discard]
    assert umount(mnt).returncode == 0
    taken_up = run_ckptfs(*resume, "--log-file", tmp_path / "resumed.log")
    assert taken_up.returncode == 0, taken_up.stderr
    assert "edits waiting" in run_ckptfs("status", mnt).stdout  # waiting from the start, before any new edit
    assert (mnt / "w.npy").read_bytes() == b"not npy"  # the edits are there, to be fixed
    assert np.load(mnt / "kept.npy").tolist() == [5, 5, 5]
    np.save(mnt / "w.npy", np.zeros(2, dtype=np.float32))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    tensors = load_file(str(model))
    assert tensors["w"].tolist() == [0, 0] and tensors["kept"].tolist() == [5, 5, 5]


def test_the_discard_advice_of_a_refused_repack_works(mount, model):
    digest = sha256(model)
    done = umount(_with_a_refused_edit(mount, model))
    for command in advised(done.stderr):
        if command[0] == "recover":
            assert run_ckptfs(*command).returncode == 0
    assert sha256(model) == digest and not (model.parent / ".model.safetensors.ckptfs").exists()


def test_recover_of_a_refused_edit_advises_a_resumed_mount(mount, model, tmp_path):
    umount(_with_a_refused_edit(mount, model))
    done = run_ckptfs("recover", model, "--resume")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    where = tmp_path / "fix"
    where.mkdir()
    resume = next(c for c in advised(done.stderr, MOUNTPOINT=where) if c[0] == "mount")
    assert run_ckptfs(*resume).returncode == 0 and is_mounted(where)
    (where / "w.npy").unlink()  # the fix: drop the bad edit's file
    assert umount(where).returncode == 0
    assert sorted(load_file(str(model))) == ["b", "kept"]


def test_edits_on_a_changed_source_can_be_written_beside_it(mount, model, tmp_path):
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "w.npy", np.full(2, 9, dtype=np.float32))
    save_file({"w": np.arange(6, dtype=np.float32), "b": np.zeros(2, dtype=np.int64), "c": np.ones(1)}, str(model))
    changed = sha256(model)
    done = umount(mnt)
    assert done.returncode == 1 and "changed since it was mounted" in done.stderr
    new = tmp_path / "edited.safetensors"
    write, discard = advised(done.stderr, NEW=new)
    assert write[:2] == ["recover", str(model)] and "--output" in write
    # a resumed mount would apply them to bytes they were not made on: refused, with advice that works
    refused = run_ckptfs("mount", "--resume", model, mnt)
    assert refused.returncode == 1 and not is_mounted(mnt) and "--output NEW" in refused.stderr
    written = run_ckptfs(*write)
    assert written.returncode == 0, written.stderr
    assert sha256(model) == changed  # the source as the other writer left it
    edited = load_file(str(new))
    assert edited["w"].tolist() == [9, 9] and edited["c"].tolist() == [1]  # the edit, on the new content
    assert run_ckptfs(*discard).returncode == 1  # nothing left to drop: the edits were written
    assert not (model.parent / ".model.safetensors.ckptfs").exists()


def test_a_failed_commit_advises_what_works_while_mounted(mount, model):
    digest = sha256(model)
    mnt = _with_a_refused_edit(mount, model)
    done = run_ckptfs("commit", mnt)
    assert done.returncode == 1 and is_mounted(mnt) and sha256(model) == digest
    commit, discard = advised(done.stderr)
    assert commit == ["commit", str(mnt)] and discard == ["umount", str(mnt), "--discard"]
    assert "recover" not in done.stderr  # it refuses while mounted
    np.save(mnt / "w.npy", np.ones(6, dtype=np.float32))  # the fix
    again = run_ckptfs(*commit)
    assert again.returncode == 0, again.stderr
    assert load_file(str(model))["kept"].tolist() == [5, 5, 5]
    write_refused(mnt / "more.npy", b"bad again")
    assert run_ckptfs(*discard).returncode == 0 and not is_mounted(mnt)
    assert sorted(load_file(str(model))) == ["b", "kept", "w"]


def test_a_commit_on_a_changed_source_advises_unmounting_then_writing_beside_it(mount, model, tmp_path):
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "w.npy", np.full(2, 3, dtype=np.float32))
    save_file({"w": np.arange(6, dtype=np.float32), "b": np.ones(2, dtype=np.int64), "c": np.ones(1)}, str(model))
    done = run_ckptfs("commit", mnt)
    assert done.returncode == 1 and is_mounted(mnt) and len(done.stderr.strip().splitlines()) == 1
    new = tmp_path / "edited.safetensors"
    unmount, write = advised(done.stderr, NEW=new)
    assert unmount == ["umount", str(mnt)]
    assert run_ckptfs(*unmount).returncode == 1 and not is_mounted(mnt)  # the repack is refused again: kept
    assert run_ckptfs(*write).returncode == 0
    assert load_file(str(new))["w"].tolist() == [3, 3] and "c" in load_file(str(new))


def test_what_an_interrupted_repack_left_is_cleared_by_resume_and_by_discard(mount, tmp_path):
    """A crash during a repack leaves a half-written file, or for a directory
    format a half-built directory, beside the source."""
    import shutil

    model = Path(shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", tmp_path / "bert"))
    for ending in ("resume", "discard"):
        mnt = mount(model, log_errors_expected=True)
        np.save(mnt / f"{ending}.npy", np.ones(2, dtype=np.float32))
        os.kill(mounts.MountState(str(mnt)).pid(), signal.SIGKILL)
        assert umount(mnt).returncode == 1  # clears the dead mount
        half_built = tmp_path / ".bert.x1y2.ckptfs-new"
        (half_built / "sub").mkdir(parents=True)
        (half_built / "sub" / "model-00001-of-00004.safetensors").write_bytes(b"half")
        done = run_ckptfs("recover", model, f"--{ending}")
        assert done.returncode == 0, done.stderr
        assert not half_built.exists() and not (tmp_path / ".bert.ckptfs").exists()
        weight_map = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
        assert (ending in weight_map) == (ending == "resume")
        mnt.rmdir()


def test_edits_that_cannot_be_read_back_can_still_be_dropped(mount, model):
    """A full disk can cut the overlay's state file short: resuming says so
    in one line and advises dropping the edits, which then works."""
    digest = sha256(model)
    mnt = mount(model, log_errors_expected=True)
    np.save(mnt / "w.npy", np.zeros(6, dtype=np.float32))
    os.kill(mounts.MountState(str(mnt)).pid(), signal.SIGKILL)
    assert umount(mnt).returncode == 1  # clears the dead mount
    (model.parent / ".model.safetensors.ckptfs" / "state.json").write_text('{"dev": 1')
    done = run_ckptfs("recover", model, "--resume")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "internal error" not in done.stderr
    (discard,) = advised(done.stderr)
    assert discard == ["recover", str(model), "--discard"] and run_ckptfs(*discard).returncode == 0
    assert sha256(model) == digest and not (model.parent / ".model.safetensors.ckptfs").exists()
