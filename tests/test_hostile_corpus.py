"""The hostile corpus: files of a few kilobytes made to hang a mount, take
gigabytes or break more than their own part, each mounted by a daemon
under a memory cap (RLIMIT_AS, set in the child) and a timeout. The
contract (docs/security.md): a file is refused with one line naming it and
nothing stays mounted, or it is served, every file of the tree readable or
its own EIO, within the budgets. The cases are in tests/hostile/, a module
for each kind of input."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
from pathlib import Path

import pytest

from .conftest import CKPTFS, force_unmount, is_mounted, require_fuse, run_ckptfs
from .hostile import corpus

#: what a daemon may use: far above a real mount of these files (about 120 MB,
#: 1.3 GB of address space with rapidgzip's threads), far below what they ask for
MEMORY_CAP = 2 << 30
#: seconds a mount, or reading every file of it, may take
TIME_CAP = 60
READ_BYTES = 1 << 16


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _mount_capped(source: Path, mnt: Path, *options: str) -> subprocess.CompletedProcess:
    require_fuse()
    mnt.mkdir()
    return subprocess.run([*CKPTFS, "mount", str(source), str(mnt), "-o", "ro", *options], capture_output=True,
                          text=True, timeout=TIME_CAP, preexec_fn=_cap_memory)


def _read_everything(mnt: Path) -> dict[str, str]:
    """Read the start of every file of the mount, links left unfollowed;
    returns the files that answered EIO, with their `user.ckptfs.problem`."""
    failed = {}
    for folder, _, files in os.walk(mnt):
        for name in files:
            path = Path(folder, name)
            if path.is_symlink():
                continue
            try:
                with open(path, "rb") as f:
                    f.read(READ_BYTES)
            except OSError as e:
                assert e.errno == errno.EIO, f"{path}: {e}"
                failed[str(path.relative_to(mnt))] = os.getxattr(path, "user.ckptfs.problem").decode()
    return failed


CORPUS = corpus()


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_hostile_file_is_refused_in_one_line_or_served_within_budget(name, tmp_path):
    case = CORPUS[name]
    source = case.make(tmp_path)
    before = source.read_bytes()
    mnt = tmp_path / "mnt"
    try:
        done = _mount_capped(source, mnt, *case.options)
        if case.outcome == "refused":
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, done.stderr
            assert lines[0].startswith(f"ckptfs: {source}") and "internal error" not in lines[0], lines[0]
            assert case.says is None or case.says in lines[0], lines[0]
            assert not is_mounted(mnt)
        else:
            assert done.returncode == 0, done.stderr
            failed = _read_everything(mnt)
            assert not failed, failed
            if case.says is not None:
                assert any(case.says in p.read_text() for p in mnt.rglob("*.yaml") if not p.is_symlink())
            if case.check is not None:
                case.check(mnt, source)
            assert run_ckptfs("umount", mnt, timeout=TIME_CAP).returncode == 0
        assert source.read_bytes() == before
    finally:
        force_unmount(mnt)


def test_a_shared_graph_is_shown_as_a_graph(tmp_path, mount):
    mnt = mount(CORPUS["30 levels of a list held twice"].make(tmp_path), "-o", "ro")
    assert os.readlink(mnt / "a" / "1") == "0" and os.readlink(mnt / "a" / "0" / "0" / "1") == "0"
    leaf = mnt / "a" / Path(*["1"] * 30) / "0.npy"  # through 30 links, to the one tensor
    assert leaf.read_bytes() == (mnt / "a" / Path(*["0"] * 30) / "0.npy").read_bytes()
    folders = [f for f, _, _ in os.walk(mnt / "a")]
    assert len(folders) == 31
