"""What the command line says: one clear line for each mistake, every
fallback said aloud, no signal that kills a daemon, logs that name their
mount and go away when it ends cleanly."""

import logging
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ckptfs.errors import CkptfsError
from ckptfs.humanize import human_size
from ckptfs.mount import daemon, mounts

from .conftest import CKPTFS, FIXTURES, TIMEOUT, is_mounted, run_ckptfs, umount


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, str(path))
    return path


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: "), done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    return lines[0]


def test_commit_of_a_read_only_mount_says_so_and_the_mount_lives_on(mount, model):
    mnt = mount(model, "-o", "ro")
    done = run_ckptfs("commit", mnt)
    assert done.returncode == 1
    assert _one_line(done) == f"ckptfs: {mnt}: mounted read-only; there are no edits to write"
    assert is_mounted(mnt) and np.load(mnt / "w.npy").tolist() == [0, 1, 2, 3, 4, 5]


def test_a_stray_commit_signal_never_kills_a_daemon(mount, model):
    """SIGUSR1 is how `ckptfs commit` wakes a daemon: a read-only one, or one
    that is not asked anything, answers nothing and serves on."""
    for options in (("-o", "ro"), ()):
        mnt = mount(model, *options)
        pid = mounts.MountState(str(mnt)).pid()
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGUSR1)
        assert np.load(mnt / "w.npy").tolist() == [0, 1, 2, 3, 4, 5]
        assert mounts.process_alive(pid) and umount(mnt).returncode == 0


def test_recover_of_a_missing_path_is_one_line_and_every_command_takes_debug(tmp_path):
    missing = tmp_path / "missing.nemo"
    for command in (["recover", missing, "--discard"], ["recover", missing, "--resume", "--debug"]):
        done = run_ckptfs(*command)
        assert done.returncode == 1
        assert _one_line(done) == f"ckptfs: {missing}: no such file or directory"
    for command in (["umount", tmp_path, "--debug"], ["commit", tmp_path, "--debug"], ["mount", missing, tmp_path, "--debug"]):
        done = run_ckptfs(*command)
        assert done.returncode == 1 and "unrecognized arguments" not in done.stderr
        _one_line(done)


def test_an_unknown_command_names_the_commands():
    done = run_ckptfs("bogus")
    assert done.returncode == 2
    assert _one_line(done) == ("ckptfs: unknown command 'bogus' (commands: mount, umount, unmount, commit, recover, "
                               "status, doctor, info, ls, cat, diff, stats, scan, export, install-helper, completion; see 'ckptfs --help')")


def test_help_names_every_format_and_where_the_log_goes():
    top = run_ckptfs("--help").stdout
    for fmt in (".nemo", "torch.save", "Lightning", "legacy", ".safetensors", "Hugging Face", "torch.distributed"):
        assert fmt in " ".join(top.split()), fmt
    mount_help = " ".join(run_ckptfs("mount", "--help").stdout.split())
    assert "/run/ckptfs" in mount_help and "removed when the mount ends cleanly" in mount_help
    assert "-o nonempty" in mount_help and "empty directory" in mount_help


def test_a_mount_point_that_holds_files_is_refused_unless_nonempty(model, mnt):
    (mnt / "mine.txt").write_text("keep me")
    done = run_ckptfs("mount", model, mnt)
    assert done.returncode == 1 and not is_mounted(mnt)
    assert _one_line(done) == (f"ckptfs: {mnt}: mount point is not empty; its files would be hidden "
                               "(-o nonempty mounts anyway)")
    done = run_ckptfs("mount", model, mnt, "-o", "nonempty,ro")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(mnt)) == [".ckptfs", "w.npy"]
    assert umount(mnt).returncode == 0 and (mnt / "mine.txt").read_text() == "keep me"


def test_every_fallback_to_read_only_is_said(tmp_path, mnt):
    repo = tmp_path / "models--org--tiny"  # a Hugging Face cache: snapshots link into the repository's blobs
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    blobs.mkdir(parents=True)
    save_file({"w": np.ones(2, dtype=np.float32)}, str(blobs / "abc"))
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to("../../blobs/abc")
    done = run_ckptfs("mount", snapshot, mnt)
    assert done.returncode == 0
    assert _one_line(done) == (f"ckptfs: {snapshot}: a Hugging Face cache snapshot (symlinks into blobs/): "
                               "copy it to edit; mounted read-only")
    assert os.getxattr(mnt, "user.ckptfs.read_only").decode() in done.stderr
    assert umount(mnt).returncode == 0
    done = run_ckptfs("mount", snapshot, mnt, "-o", "ro")  # asked for: nothing to say
    assert done.returncode == 0 and done.stderr == ""
    assert umount(mnt).returncode == 0


def test_an_overwritten_yaml_view_is_logged_once_and_only_when_wrong(mount, tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    ckpt.write_bytes((FIXTURES / "lightning" / "tiny.ckpt").read_bytes())
    log = tmp_path / "daemon0.log"
    mnt = mount(ckpt)
    view = mnt / "epoch.yaml"

    def shell(command: str) -> None:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr  # bash does not report a failed close of a redirection

    def problems() -> list[str]:
        return [line for line in log.read_text().splitlines() if "would change its type" in line]

    shell(f"echo 7 > {view}")  # bash first closes a dup'd, still empty descriptor: no problem to log
    shell(f"echo seven > {view}")  # a real one, logged when the file is released (after close returns)
    shell(f"echo 7 > {view}")
    assert umount(mnt, "--discard").returncode == 0  # the daemon has logged all it will: no wait to guess
    assert len(problems()) == 1 and "'seven'" in problems()[0], log.read_text()


def test_sizes_are_said_in_units_that_fit(model, mnt):
    assert human_size(0) == "0 bytes" and human_size(999) == "999 bytes"
    assert human_size(38_536) == "38.5 kB" and human_size(1_500_000) == "1.5 MB"
    assert human_size(250e6) == "250 MB" and human_size(2.1e9) == "2.1 GB" and human_size(3e15) == "3,000 TB"
    # the repack's progress, as `umount` shows it on a terminal (script(1) gives it one)
    assert run_ckptfs("mount", model, mnt).returncode == 0
    np.save(mnt / "w.npy", np.ones(6, dtype=np.float32))
    command = " ".join([*map(shlex.quote, CKPTFS), "umount", shlex.quote(str(mnt))])
    shown = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout
    progress = re.search(r"writing the checkpoint: (.*?) of about (.*?)\x1b", shown.stdout)
    assert progress and progress[1].endswith(" bytes") and progress[2] == f"{model.stat().st_size} bytes", shown.stdout
    assert "MB" not in shown.stdout


def test_a_log_is_named_after_its_mount_point_and_removed_after_a_clean_end(model, mnt):
    log = Path(mounts.state_dir()) / f"{mounts.escaped_path(str(mnt))}.log"
    assert log.name.startswith("tmp-") and log.name.endswith("-mnt.log")
    assert run_ckptfs("mount", model, mnt).returncode == 0
    assert log.exists() and "mounted at" in log.read_text()
    assert umount(mnt).returncode == 0
    assert not log.exists()
    assert not list(Path(mounts.state_dir()).glob(mounts.escaped_path(str(mnt)) + ".*"))
    # one that did not end cleanly is kept, for the user to read
    assert run_ckptfs("mount", model, mnt).returncode == 0
    (mnt / "notes.txt").write_text("not a tensor")  # safetensors holds tensors only: the repack refuses it
    done = umount(mnt)
    assert done.returncode == 1 and log.exists() and "notes.txt" in log.read_text()
    assert run_ckptfs("recover", model, "--discard").returncode == 0
    log.unlink()


def test_a_daemon_that_fails_says_where_its_log_is(tmp_path):
    """The daemon half of a mount, forked for real: a failure before it is
    ready reaches the user with the path of the log that tells more."""
    log = tmp_path / "daemon.log"
    state = mounts.MountState(str(tmp_path / "nowhere"))

    def fail(notify):
        raise CkptfsError("the mount failed for a reason")

    handler = logging.FileHandler(log)  # set up before the fork, as `ckptfs mount` does
    logging.getLogger().addHandler(handler)

    def end_log(code):
        logging.getLogger().removeHandler(handler)
        handler.close()

    record = mounts.Record(str(tmp_path / "x"), "safetensors", False, str(log))
    try:
        with pytest.raises(CkptfsError) as failed:
            daemon.spawn(fail, state, record, end_log, str(log))
    finally:
        end_log(1)
    assert str(failed.value) == f"the mount failed for a reason (its log: {log})"
    assert "the mount failed for a reason" in log.read_text()
    deadline = time.monotonic() + TIMEOUT
    while state.exit_code() is None and time.monotonic() < deadline:  # the daemon's last word, then it exits
        time.sleep(0.01)
    assert state.exit_code() == 1
    state.clear()
