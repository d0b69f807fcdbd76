"""mount / umount lifecycle through the CLI: readiness, exit status, signals,
a killed daemon, foreground mode, the mount(8) calling convention."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptfs.mount import mounts

from .conftest import CKPTFS, TIMEOUT, daemon_pid, is_mounted, reap, run_ckptfs


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(10, dtype=torch.float32)}, str(path))
    return path


def _wait(predicate, timeout=TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_version_and_help():
    from ckptfs import __version__

    done = run_ckptfs("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ckptfs {__version__}"
    helped = run_ckptfs("mount", "--help")
    assert helped.returncode == 0
    for word in ("SOURCE".lower(), "mountpoint", "--foreground", "allow_other", "-o"):
        assert word in helped.stdout.lower()


def test_mount_is_usable_on_return_and_umount_waits_for_the_daemon(source, mnt):
    done = run_ckptfs("mount", source, mnt)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert os.listdir(mnt) == [".ckptfs", "w.npy"] or sorted(os.listdir(mnt)) == [".ckptfs", "w.npy"]
    pid = daemon_pid(mnt)
    assert os.getppid() != pid
    done = run_ckptfs("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mnt)
    assert not _alive(pid)  # umount returned only after the daemon exited
    again = run_ckptfs("umount", mnt)
    assert again.returncode == 1 and again.stderr.strip() == f"ckptfs: {mnt}: not mounted"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(source, mnt, signum):
    assert run_ckptfs("mount", source, mnt).returncode == 0
    pid = daemon_pid(mnt)
    os.kill(pid, signum)
    assert _wait(lambda: not is_mounted(mnt) and not _alive(pid))
    assert os.listdir(mnt) == []  # no dead mount left behind
    done = run_ckptfs("umount", mnt)  # still reports the daemon's exit status
    assert done.returncode == 0, done.stderr


def test_killed_daemon_leaves_a_stale_mount_that_umount_clears(source, mnt):
    assert run_ckptfs("mount", source, mnt).returncode == 0
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: not _alive(pid))
    with pytest.raises(OSError) as err:
        os.listdir(mnt)
    assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # a dead mount, as the kernel says it
    done = run_ckptfs("umount", mnt)
    assert done.returncode == 1
    assert "died" in done.stderr and "stale mount cleared" in done.stderr
    assert not is_mounted(mnt) and os.listdir(mnt) == []
    assert run_ckptfs("mount", source, mnt).returncode == 0  # the mount point is usable again
    assert run_ckptfs("umount", mnt).returncode == 0


def test_foreground_serves_until_unmounted(source, mnt, tmp_path):
    log = tmp_path / "fg.log"
    proc = subprocess.Popen(
        CKPTFS + ["mount", "--foreground", "--debug", "--log-file", str(log), str(source), str(mnt)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert _wait(lambda: is_mounted(mnt))
        assert (mnt / "w.npy").stat().st_size > 0
        assert run_ckptfs("umount", mnt).returncode == 0
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        reap(proc)
        proc.stdout.close()
        proc.stderr.close()
    assert "mounted at" in log.read_text() and "unmounted" in log.read_text()


def test_mount_helper_calling_convention_and_fstab_options(source, mnt):
    done = run_ckptfs(source, mnt, "-o", "ro,defaults,noauto,nofail,_netdev,x-systemd.automount,nosuid,nodev")
    assert done.returncode == 0, done.stderr
    options = next(line for line in Path("/proc/self/mounts").read_text().splitlines() if f" {mnt} " in line)
    assert " fuse.ckptfs " in options and "ro," in options and "nosuid" in options
    assert run_ckptfs("umount", mnt).returncode == 0


def test_mount_fuse3_helper(source, mnt):
    """What `mount -t fuse.ckptfs SRC MNT -o ro` runs (mount(8) itself resets
    PATH, so there ckptfs must be installed on the system PATH)."""
    helper = shutil.which("mount.fuse3") or shutil.which("mount.fuse3", path="/sbin:/usr/sbin")
    assert helper, "mount.fuse3 comes with Debian's fuse3 package"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(
        [helper, str(source), str(mnt), "-o", "ro", "-t", "fuse.ckptfs"], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert is_mounted(mnt) and (mnt / "w.npy").exists()
    assert run_ckptfs("umount", mnt).returncode == 0


def test_umount_refuses_what_is_not_ckptfs(tmp_path):
    done = run_ckptfs("umount", "/proc")
    assert done.returncode == 1 and "not a ckptfs mount" in done.stderr


def test_busy_mount_says_so_and_lazy_unmount_detaches(source, mnt):
    assert run_ckptfs("mount", source, mnt).returncode == 0
    pid = daemon_pid(mnt)
    with open(mnt / "w.npy", "rb") as held:
        done = run_ckptfs("umount", mnt)
        assert done.returncode == 1 and "busy" in done.stderr
        assert is_mounted(mnt)
        done = run_ckptfs("umount", "--lazy", mnt)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)
        assert held.read(6) == b"\x93NUMPY"
    assert _wait(lambda: not _alive(pid))
    done = run_ckptfs("umount", mnt)  # collects the detached daemon's exit status, and its state files
    assert done.returncode == 0, done.stderr
    assert not list(Path(mounts.state_dir()).glob(mounts.escaped_path(str(mnt)) + ".*"))
