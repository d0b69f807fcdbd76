"""Users other than root: an unprivileged user mounts, reads, edits and
unmounts their own checkpoint with fusermount3, from a Python of their
own (Debian's /usr/bin/python3 in a virtualenv: the test's Python lives
under /root); their state directory cannot be planted by another user; and
`-o uid=,gid=,umask=` with allow_other decide what a second user reads."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import FIXTURES, REPO, TIMED_APART, TIMEOUT, as_user, force_unmount, is_mounted, run_ckptfs, user_home

DEBIAN_PYTHON = "/usr/bin/python3"
#: the user's virtualenv (pyfuse3 from source) takes minutes, within the timeouts of its own steps
pytestmark = TIMED_APART


@pytest.fixture(scope="module")
def user_ckptfs(shared_dir):
    """ckptfs installed (not editable) into a virtualenv of Debian's python3,
    readable by every user; pyfuse3 built with vendor/pyfuse3's patch."""
    assert os.access(DEBIAN_PYTHON, os.X_OK), "Debian's python3 is missing: make test installs python3-venv"
    venv = shared_dir / "venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    python = str(venv / "bin" / "python")
    subprocess.run(["bash", str(REPO / "vendor/pyfuse3/install.sh"), python], check=True, timeout=600)
    source = shared_dir / "src"  # a copy: the clone may sit in a folder private to root
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv*", ".git", "samples", "tests", "bench", "build"))
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(source)], check=True, timeout=600)
    return venv / "bin" / "ckptfs"


@pytest.fixture
def dev_fuse_for_all():
    """/dev/fuse is 0600 on this machine; Debian's udev makes it 0666."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    yield
    os.chmod("/dev/fuse", mode)


def test_an_unprivileged_user_mounts_edits_and_unmounts_their_checkpoint(users, shared_dir, user_ckptfs,
                                                                         dev_fuse_for_all):
    user = users[0]
    home = user_home(shared_dir, user)
    source, mnt = home / "model.nemo", home / "mnt"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", source)
    mnt.mkdir()
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    for path in (source, mnt, runtime):
        os.chown(path, user.pw_uid, user.pw_gid)
    env = {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)}
    try:
        done = as_user(user, [user_ckptfs, "mount", source, mnt], env)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        table = as_user(user, ["cat", "/proc/self/mountinfo"]).stdout  # any names beside: read with surrogate escapes
        entry = next(m for m in table.splitlines() if f" {mnt} " in m)
        assert f"user_id={user.pw_uid}" in entry and "nosuid,nodev" in entry
        logs = list((runtime / "ckptfs").glob("*.log"))
        assert len(logs) == 1 and "could not raise read_ahead_kb (needs root)" in logs[0].read_text(), logs
        assert stat.S_IMODE(os.stat(runtime / "ckptfs").st_mode) == 0o700
        config = as_user(user, ["cat", mnt / "model_config.yaml"])
        with tarfile.open(source) as tf:
            assert config.stdout.encode() == tf.extractfile("./model_config.yaml").read()
        edit = as_user(user, ["sh", "-c", f"echo '# mine' >> {mnt}/model_config.yaml"])
        assert edit.returncode == 0, edit.stderr
        status = as_user(user, [user_ckptfs, "status", mnt], env)
        assert "edits waiting" in status.stdout and "daemon  unknown" not in status.stdout, status.stdout
        gone = as_user(user, [user_ckptfs, "umount", mnt], env)
        assert gone.returncode == 0, gone.stderr
        with tarfile.open(source) as tf:
            assert tf.extractfile("./model_config.yaml").read().endswith(b"# mine\n")
        assert os.stat(source).st_uid == user.pw_uid
        refused = as_user(user, [user_ckptfs, "install-helper"], env)
        assert refused.returncode == 1 and "run it as root" in refused.stderr, refused.stderr
        other = as_user(user, [user_ckptfs, "mount", source, mnt, "-o", "ro,uid=0"], env)
        assert other.returncode == 1 and "only root may show the files as another user's" in other.stderr
    finally:
        force_unmount(mnt)
    assert not is_mounted(mnt)


def test_a_state_directory_planted_by_another_user_is_refused(users, shared_dir, user_ckptfs, dev_fuse_for_all):
    """Without $XDG_RUNTIME_DIR, state goes to /tmp/ckptfs-UID: if another
    user made that first (here a link to their own folder), the mount is
    refused rather than writing where they can read or redirect."""
    victim, attacker = users
    home = user_home(shared_dir, victim)
    source, mnt = home / "planted.nemo", home / "mnt-planted"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", source)
    mnt.mkdir()
    for path in (source, mnt):
        os.chown(path, victim.pw_uid, victim.pw_gid)
    planted = Path(f"/tmp/ckptfs-{victim.pw_uid}")
    trap = user_home(shared_dir, attacker)
    assert as_user(attacker, ["ln", "-s", trap, planted]).returncode == 0
    try:
        done = as_user(victim, [user_ckptfs, "mount", source, mnt], {"HOME": str(home)})
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"{planted}: not a directory of this user's" in done.stderr
        assert not is_mounted(mnt) and list(trap.iterdir()) == []
    finally:
        planted.unlink()
        force_unmount(mnt)


def test_uid_gid_umask_with_allow_other_decide_what_a_second_user_reads(users, shared_dir):
    owner, stranger = users
    base = shared_dir / "shown"
    base.mkdir(mode=0o755, exist_ok=True)
    source, mnt = base / "model.nemo", base / "mnt"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", source)
    source.chmod(0o644)
    mnt.mkdir()
    options = f"ro,allow_other,uid={owner.pw_uid},gid={owner.pw_gid},umask=027"
    assert run_ckptfs("mount", source, mnt, "-o", options).returncode == 0
    try:
        config = mnt / "model_config.yaml"
        st = os.stat(config)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (owner.pw_uid, owner.pw_gid, 0o440)
        assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o550
        assert as_user(owner, ["cat", config]).returncode == 0
        denied = as_user(stranger, ["cat", config])
        assert denied.returncode == 1 and "Permission denied" in denied.stderr
    finally:
        assert run_ckptfs("umount", mnt).returncode == 0
    # masks only take away: a source only root may read stays so, whatever umask says
    source.chmod(0o600)
    assert run_ckptfs("mount", source, mnt, "-o", "ro,allow_other,umask=000").returncode == 0
    try:
        assert stat.S_IMODE(os.stat(mnt / "model_config.yaml").st_mode) == 0o400
        assert as_user(owner, ["cat", mnt / "model_config.yaml"]).returncode == 1
    finally:
        assert run_ckptfs("umount", mnt).returncode == 0
    # and without allow_other, nobody but root goes in at all
    source.chmod(0o644)
    assert run_ckptfs("mount", source, mnt, "-o", f"ro,uid={owner.pw_uid}").returncode == 0
    try:
        assert as_user(owner, ["ls", mnt]).returncode != 0
    finally:
        assert run_ckptfs("umount", mnt).returncode == 0
