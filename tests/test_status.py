"""`ckptfs status`: every ckptfs mount with its source, format, mode,
waiting edits, daemon and log; --json; one mount point; a stale mount."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from .conftest import FIXTURES, TIMEOUT, force_unmount, run_ckptfs


def _status(*args) -> list[dict]:
    done = run_ckptfs("status", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_lists_each_mount_with_what_its_daemon_recorded(tmp_path, mount):
    nemo = tmp_path / "model.nemo"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", nemo)
    read_only = mount(FIXTURES / "lightning" / "tiny.ckpt", "-o", "ro")
    writable = mount(nemo)
    found = {m["mountpoint"]: m for m in _status()}
    ro, rw = found[str(read_only)], found[str(writable)]
    assert ro["source"] == str(FIXTURES / "lightning" / "tiny.ckpt") and ro["writable"] is False
    assert rw["source"] == str(nemo) and rw["writable"] is True and rw["edits_waiting"] is False
    assert rw["format"].startswith("nemo") and ro["format"]
    for m in (ro, rw):
        assert m["daemon_running"] is True and m["uid"] == os.getuid()
        assert m["mountpoint"].encode() in Path(f"/proc/{m['pid']}/cmdline").read_bytes()  # the daemon itself
        assert m["log"] == str(tmp_path / f"daemon{0 if m is ro else 1}.log")
    config = writable / "model_config.yaml"
    config.write_text(config.read_text() + "# edited\n")
    assert _status(writable) == [dict(rw, edits_waiting=True)]
    text = run_ckptfs("status", writable).stdout
    assert text.startswith(f"{writable}\n") and "edits waiting" in text and f"source  {nemo}" in text
    assert run_ckptfs("commit", writable).returncode == 0
    assert _status(writable)[0]["edits_waiting"] is False  # written: nothing waits any more


def test_status_of_what_is_not_a_ckptfs_mount(tmp_path):
    done = run_ckptfs("status", tmp_path)
    assert done.returncode == 1 and done.stderr == f"ckptfs: {tmp_path}: not a ckptfs mount\n"


def test_status_names_a_stale_mount_and_how_to_clear_it(tmp_path, mnt):
    assert run_ckptfs("mount", FIXTURES / "lightning" / "tiny.ckpt", mnt, "-o", "ro").returncode == 0
    try:
        pid = _status(mnt)[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        while _status(mnt)[0]["daemon_running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stale = _status(mnt)[0]
        assert stale["daemon_running"] is False and stale["pid"] is None
        assert f"gone: a stale mount (ckptfs umount {mnt} clears it)" in run_ckptfs("status", mnt).stdout
        assert run_ckptfs("umount", mnt).returncode == 1  # clears it, saying the daemon had died
        assert str(mnt) not in [m["mountpoint"] for m in _status()]  # others' mounts may come and go meanwhile
    finally:
        force_unmount(mnt)
