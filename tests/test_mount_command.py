"""mount(8), fstab and automount: `ckptfs install-helper`, then real
`mount -t fuse.ckptfs` and `mount -T FSTAB` runs with mount(8)'s own bare
environment, and a mount over an autofs entry made the way systemd makes
it, with the test playing systemd's automounter."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from .conftest import CKPTFS, FIXTURES, TIMEOUT, force_unmount, is_mounted, mountinfo, run_ckptfs

#: what mount(8) runs a helper with when started by hand or by systemd: no PATH of ours
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
#: linux/auto_fs.h: _IO(0x93, 0x60) and 0x61, the automounter's answers to a mount request
AUTOFS_IOC_READY, AUTOFS_IOC_FAIL = 0x9360, 0x9361


@pytest.fixture
def nemo(tmp_path):
    path = tmp_path / "model.nemo"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", path)
    return path


def _mount_options(mnt: Path) -> tuple[list[str], list[str]]:
    """The kernel's per-mount flags and the superblock options of the top mount at `mnt`."""
    found = None
    for fields in mountinfo():
        if fields[4] == str(mnt):
            sep = fields.index("-")
            found = fields[5].split(","), fields[sep + 3].split(",") + [fields[sep + 1]]
    assert found, f"nothing mounted at {mnt}"
    return found


def test_install_helper_is_idempotent_refuses_foreign_files_and_uninstalls(tmp_path):
    root = tmp_path / "root"
    first = run_ckptfs("install-helper", "--root", root)
    assert first.returncode == 0 and first.stderr.count(": written") == 4, first.stderr
    helper = root / "sbin/mount.fuse.ckptfs"
    assert os.access(helper, os.X_OK)
    ckptfs = Path(CKPTFS[0]).parent / "ckptfs"
    assert f"exec {ckptfs} " in helper.read_text()  # this installation's, by its absolute path
    assert (root / "usr/local/share/man/man1/ckptfs.1").read_text().startswith('.\\" made from')
    again = run_ckptfs("install-helper", "--root", root)
    assert again.returncode == 0 and again.stderr.count(": up to date") == 4, again.stderr
    helper.chmod(0o644)  # its text right, its mode lost: mount(8) could not run it
    mended = run_ckptfs("install-helper", "--root", root)
    assert mended.returncode == 0 and f"{helper}: written" in mended.stderr and os.access(helper, os.X_OK)
    helper.write_text("#!/bin/sh\nexec /opt/other/ckptfs \"$@\"\n")  # somebody else's helper
    refused = run_ckptfs("install-helper", "--root", root)
    assert refused.returncode == 1 and "was not written by ckptfs install-helper" in refused.stderr
    assert "/opt/other" in helper.read_text()
    gone = run_ckptfs("install-helper", "--root", root, "--uninstall")
    assert gone.returncode == 0 and "left alone" in gone.stderr and gone.stderr.count(": removed") == 3
    assert helper.exists() and not (root / "usr/local/share/man/man1/ckptfs.1").exists()


def test_mount_t_fuse_ckptfs_with_mounts_own_environment(installed_helper, nemo, mnt):
    done = subprocess.run(["mount", "-t", "fuse.ckptfs", str(nemo), str(mnt), "-o", "ro,allow_other"],
                          capture_output=True, text=True, env=BARE_ENV, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    flags, options = _mount_options(mnt)
    assert {"ro", "nosuid", "nodev"} <= set(flags) and "allow_other" in options and "fuse.ckptfs" in options
    with tarfile.open(nemo) as tf:
        assert (mnt / "model_config.yaml").read_bytes() == tf.extractfile("./model_config.yaml").read()
    umount = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, env=BARE_ENV, timeout=TIMEOUT)
    assert umount.returncode == 0, umount.stderr
    assert not is_mounted(mnt)


def test_fstab_line_with_mount_T(installed_helper, nemo, mnt, tmp_path):
    """The line of docs/operations.md, fstab bookkeeping options and all,
    writable: the edit is written back when mount(8)'s umount unmounts."""
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# ckptfs\n{nemo} {mnt} fuse.ckptfs noauto,nofail,x-systemd.automount,_netdev 0 0\n")
    done = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True, env=BARE_ENV,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    flags, _ = _mount_options(mnt)
    assert {"rw", "nosuid", "nodev"} <= set(flags)
    config = mnt / "model_config.yaml"
    config.write_text(config.read_text() + "# from fstab\n")
    status = run_ckptfs("status", mnt)
    assert status.returncode == 0 and "edits waiting" in status.stdout, status.stdout
    assert run_ckptfs("umount", mnt).returncode == 0
    with tarfile.open(nemo) as tf:
        assert tf.extractfile("./model_config.yaml").read().endswith(b"# from fstab\n")


def test_mount_fuse3_route_keeps_nosuid_nodev(nemo, mnt):
    """mount.fuse3 adds suid,dev for root when the options do not say
    otherwise; ckptfs mounts nosuid,nodev all the same."""
    helper = shutil.which("mount.fuse3", path="/sbin:/usr/sbin")
    env = dict(BARE_ENV, PATH=f"{Path(CKPTFS[0]).parent}:{BARE_ENV['PATH']}")
    done = subprocess.run([helper, str(nemo), str(mnt), "-o", "ro", "-t", "fuse.ckptfs"], capture_output=True,
                          text=True, env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    flags, _ = _mount_options(mnt)
    assert {"nosuid", "nodev"} <= set(flags), flags
    assert run_ckptfs("umount", mnt).returncode == 0


class _Automounter:
    """What systemd does for an .automount unit: an autofs `direct` mount at
    the mount point, whose kernel side writes a packet to a pipe when a
    process walks into it; the automounter then runs mount(8) in its own
    process group (systemd's mount units have same_pgrp) and answers the
    packet's token with AUTOFS_IOC_READY."""

    def __init__(self, where: Path, mount_command: list[str]):
        self.where, self.mount_command = where, mount_command
        read_end, write_end = os.pipe()
        options = f"fd={write_end},pgrp={os.getpgrp()},minproto=5,maxproto=5,direct"
        subprocess.run(["mount", "-t", "autofs", "-o", options, "ckptfs-test", str(where)], check=True,
                       pass_fds=(write_end,), timeout=TIMEOUT)
        os.close(write_end)
        self.packets = read_end
        self.ioctl_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)  # our process group: no trigger
        self.mount_result: subprocess.CompletedProcess | None = None
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        packet = os.read(self.packets, 512)
        if not packet:
            return
        _version, _type, token = struct.unpack_from("iiI", packet)
        self.mount_result = subprocess.run(self.mount_command, capture_output=True, text=True, env=BARE_ENV,
                                           timeout=TIMEOUT)
        fcntl.ioctl(self.ioctl_fd, AUTOFS_IOC_READY if self.mount_result.returncode == 0 else AUTOFS_IOC_FAIL, token)

    def close(self) -> None:
        os.close(self.ioctl_fd)
        os.close(self.packets)
        self.thread.join(timeout=TIMEOUT)
        force_unmount(self.where)  # the ckptfs mount, if the test left it
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True, timeout=TIMEOUT)


def _kernel_has_autofs() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "autofs" for line in f if line.strip())


@pytest.mark.skipif(not _kernel_has_autofs(), reason="this kernel has no autofs (CONFIG_AUTOFS_FS is not set): "
                                                    "systemd's .automount units cannot work on it either")
def test_automount_mounts_over_the_autofs_entry_on_first_access(installed_helper, nemo, mnt):
    automounter = _Automounter(mnt, ["mount", "-t", "fuse.ckptfs", str(nemo), str(mnt), "-o", "ro"])
    try:
        assert _mount_options(mnt)[1][-1] == "autofs"
        # a user's first look, from another session, is what triggers the mount
        listing = subprocess.run(["ls", str(mnt)], capture_output=True, text=True, timeout=TIMEOUT,
                                 start_new_session=True)
        assert automounter.mount_result is not None and automounter.mount_result.returncode == 0, \
            automounter.mount_result and automounter.mount_result.stderr
        assert listing.returncode == 0 and "model_config.yaml" in listing.stdout.split()
        flags, options = _mount_options(mnt)
        assert "fuse.ckptfs" in options and {"ro", "nosuid", "nodev"} <= set(flags)
        assert run_ckptfs("umount", mnt).returncode == 0
        assert _mount_options(mnt)[1][-1] == "autofs"  # the automount point stays for the next access
    finally:
        automounter.close()
    assert not is_mounted(mnt)
