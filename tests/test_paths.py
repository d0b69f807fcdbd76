"""Paths as Linux holds them: a source and a mount point whose names are
not ASCII, or not UTF-8 at all (Python holds those bytes as surrogate
escapes, os.fsencode gives them back), mount, read, take edits, repack,
show in `ckptfs status`, findmnt and mount(8), and unmount; and a mount
that fails, at whatever stage, leaves nothing beside its source."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load, save

from .conftest import CKPTFS, REPO, TIMEOUT, daemon_pid, force_unmount, is_mounted, require_fuse

#: a folder name with a letter, an emoji, a space, a no-break space (which str.split() splits at), a
#: comma (which separates mount options) and a backslash (which escapes in them and in /proc/self/mountinfo)
FOLDER = "modèle/😀 a\u00a0b,c\\d"
#: a file name that is not UTF-8
RAW_NAME = os.fsdecode(b"\xff\xfe.safetensors")
TENSORS = {"enc.w": np.arange(6, dtype=np.float32).reshape(2, 3), "enc.b": np.ones(3, dtype=np.float16)}


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI with bytes for output: what it prints may hold any byte a name holds."""
    return subprocess.run(CKPTFS + [str(a) for a in args], capture_output=True, timeout=TIMEOUT, env=env)


def listing(folder: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(folder)))


def mountinfo_line(mnt: Path) -> bytes | None:
    """The raw line of /proc/self/mountinfo for `mnt` (its octal escapes as the kernel writes them)."""
    escaped = os.fsencode(mnt).replace(b"\\", b"\\134").replace(b" ", b"\\040")
    with open("/proc/self/mountinfo", "rb") as f:
        found = [line for line in f if line.split(b" ")[4] == escaped]
    return found[-1] if found else None


@pytest.fixture
def place(tmp_path):
    """(the source, a mount point), both named with bytes that are not ASCII or not UTF-8."""
    require_fuse()
    folder = tmp_path / FOLDER
    folder.mkdir(parents=True)
    source = folder / RAW_NAME
    source.write_bytes(save(TENSORS))
    mnt = tmp_path / os.fsdecode(b"mnt \xc3\xa9,\\ \xff")  # a space, an e acute, a comma, a backslash, a lone byte
    mnt.mkdir()
    yield source, mnt
    if is_mounted(mnt):
        run("umount", mnt, "--discard")
    force_unmount(mnt)


def test_a_source_and_mount_point_not_ascii_mount_edit_repack_and_unmount(place, tmp_path):
    source, mnt = place
    assert b"\xff" in os.fsencode(mnt) and b"\xff\xfe" in os.fsencode(source)
    before = listing(source.parent)
    log = tmp_path / "daemon é.log"
    done = run("mount", source, mnt, "--log-file", log)
    assert done.returncode == 0, done.stderr
    # the kernel holds the source as its bytes; findmnt, status and the daemon's records find it by them
    line = mountinfo_line(mnt)
    escaped = os.fsencode(source).replace(b"\\", b"\\134").replace(b" ", b"\\040")
    assert line is not None and b" fuse.ckptfs " + escaped + b" " in line
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--source", str(source)], capture_output=True,
                           timeout=TIMEOUT)
    assert found.returncode == 0 and found.stdout.strip() == b"fuse.ckptfs", found
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    shown = [m for m in json.loads(status.stdout) if m["mountpoint"] == str(mnt)]
    assert [(m["source"], m["format"], m["writable"]) for m in shown] == [(str(source), "safetensors", True)]
    table = run("status", mnt)
    assert table.returncode == 0 and os.fsencode(source) in table.stdout and os.fsencode(mnt) in table.stdout
    # reads, and edits in folders and files named with bytes that are not UTF-8
    assert np.array_equal(np.load(mnt / "enc" / "w.npy"), TENSORS["enc.w"])
    edited = TENSORS["enc.w"] * 3
    np.save(mnt / "enc" / "w.npy", edited)
    overlay = sorted(n for n in listing(source.parent) if n not in before)
    assert overlay == [b".\xff\xfe.safetensors.ckptfs", b".\xff\xfe.safetensors.ckptfs.lock"]
    journal = (source.parent / os.fsdecode(overlay[0]) / "journal").read_bytes()
    assert b'"enc/w.npy"' in journal
    gone = run("umount", mnt, "--timeout", "60")
    assert gone.returncode == 0, gone.stderr
    assert not is_mounted(mnt)
    written = load(source.read_bytes())
    assert np.array_equal(written["enc.w"], edited) and np.array_equal(written["enc.b"], TENSORS["enc.b"])
    assert listing(source.parent) == before
    assert b"Logging error" not in done.stderr + gone.stderr
    assert b"Traceback" not in log.read_bytes() if log.exists() else True


def test_edits_of_a_source_not_utf8_survive_a_crash_and_are_resumed_by_that_name(place):
    """A daemon killed leaves the edits in `.NAME.ckptfs`, whose journal
    names files as JSON (surrogate escapes for bytes that are not UTF-8);
    `mount --resume` finds and replays them by the source's own bytes."""
    source, mnt = place
    done = run("mount", source, mnt)
    assert done.returncode == 0, done.stderr
    os.mkdir(mnt / os.fsdecode(b"d\xe9j\xe0"))  # a folder named in Latin-1: refused at repack, kept till then
    np.save(mnt / "enc" / "w.npy", TENSORS["enc.w"] + 1)
    os.kill(daemon_pid(mnt), signal.SIGKILL)
    stale = run("umount", mnt)
    assert stale.returncode == 1 and not is_mounted(mnt), stale.stderr
    assert b".\xff\xfe.safetensors.ckptfs" in listing(source.parent)
    resumed = run("mount", "--resume", source, mnt)
    assert resumed.returncode == 0, resumed.stderr
    assert os.listdir(os.fsencode(mnt)) and b"d\xe9j\xe0" in os.listdir(os.fsencode(mnt))
    assert np.array_equal(np.load(mnt / "enc" / "w.npy"), TENSORS["enc.w"] + 1)
    os.rmdir(mnt / os.fsdecode(b"d\xe9j\xe0"))
    gone = run("umount", mnt, "--timeout", "60")
    assert gone.returncode == 0, gone.stderr
    assert np.array_equal(load(source.read_bytes())["enc.w"], TENSORS["enc.w"] + 1)
    assert listing(source.parent) == [b"\xff\xfe.safetensors"]


def _fuse_unusable(command: list[str]) -> list[str]:
    """`command` in a mount namespace of its own where /dev/fuse is /dev/null:
    libfuse opens it, and the kernel refuses the mount (EINVAL)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind /dev/null /dev/fuse && exec "$@"', "sh", *command]


@pytest.mark.parametrize("stage", ["bad file", "bad option", "mount point busy", "mount point a file",
                                   "fuse refuses the mount", "fuse refuses a foreground mount"])
def test_a_failed_mount_says_one_line_and_leaves_nothing_beside_the_source(place, tmp_path, stage):
    source, mnt = place
    if stage == "bad file":
        source.write_bytes(source.read_bytes()[:40])  # its header runs past the end
    extra: list[str] = []
    command = None
    if stage == "bad option":
        extra = ["-o", "uid=nobody"]
    elif stage == "mount point busy":
        other = tmp_path / "autre é"
        other.mkdir()
        shutil.copyfile(source, other / "m.safetensors")
        first = run("mount", other / "m.safetensors", mnt, "-o", "ro")
        assert first.returncode == 0, first.stderr
    elif stage == "mount point a file":
        mnt.rmdir()
        mnt.write_bytes(b"")
    elif stage.startswith("fuse refuses"):
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) (util-linux) for a mount namespace of its own")
        command = _fuse_unusable(CKPTFS + ["mount", str(source), str(mnt)] +
                                 (["--foreground"] if "foreground" in stage else []))
    before = listing(source.parent)
    if command is None:
        done = run("mount", source, mnt, *extra)
    else:
        done = subprocess.run(command, capture_output=True, timeout=TIMEOUT)
    try:
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        said = b" ERROR ckptfs: mount refused: " if "foreground" in stage else b"ckptfs: "  # its log is stderr
        assert len(lines) == 1 and said in lines[0] and lines[0].index(said) < 30, done.stderr
        assert b"Error" not in lines[0] and b"Traceback" not in done.stderr
        done.stderr.decode("utf-8")  # text: a byte of a name that is not UTF-8 is said as its escape
        if stage.startswith("fuse refuses"):
            assert b"cannot mount: fuse: mount failed: Invalid argument" in lines[0]
        assert listing(source.parent) == before
        if stage != "mount point busy":
            assert not is_mounted(mnt)
    finally:
        if stage == "mount point busy":
            assert run("umount", mnt).returncode == 0


def test_mount_8_and_umount_8_find_a_mount_by_a_source_not_ascii(installed_helper, place):
    """mount(8) runs the helper with the source's bytes; `umount SOURCE`
    finds the mount by the source the kernel shows."""
    source, mnt = place
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(["mount", "-t", "fuse.ckptfs", str(source), str(mnt), "-o", "ro"], capture_output=True,
                          env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(mnt / "enc" / "b.npy"), TENSORS["enc.b"])
    gone = subprocess.run(["umount", str(source)], capture_output=True, env=env, timeout=TIMEOUT)
    assert gone.returncode == 0, gone.stderr
    assert not is_mounted(mnt)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_source_named_near_the_name_limit_mounts_writable_and_repacks(tmp_path, mnt, kind):
    """`.NAME.ckptfs`, `.NAME.ckptfs.lock` and the repack's `.NAME.*.ckptfs-new`
    pass 255 bytes for a name of 252 (84 letters of three bytes): they are
    named after its head and a hash instead, and the mount is writable."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    name = "模" * 80 + ("·model" if kind == "folder" else ".safetensors")
    assert 245 < len(os.fsencode(name)) <= 255
    source = folder / name
    if kind == "file":
        source.write_bytes(save(TENSORS))
    else:
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 3}))
        (source / "model.safetensors").write_bytes(save(TENSORS))
    before = listing(folder)
    done = run("mount", source, mnt)
    assert done.returncode == 0 and b"read-only" not in done.stderr, done.stderr
    np.save(mnt / "enc" / "w.npy", TENSORS["enc.w"] - 5)  # a Hugging Face folder's tensors too are at the top
    kept = [n for n in listing(folder) if n not in before]
    assert len(kept) == 2 and all(len(n) <= 255 and n.startswith(b".\xe6\xa8\xa1") for n in kept), kept
    gone = run("umount", mnt, "--timeout", "60")
    assert gone.returncode == 0, gone.stderr
    written = load((source / "model.safetensors" if kind == "folder" else source).read_bytes())
    assert np.array_equal(written["enc.w"], TENSORS["enc.w"] - 5)
    assert listing(folder) == before


def test_names_kept_beside_a_source_fit_and_belong_to_it_alone(tmp_path):
    """Overlay, lock and temp names stay within 255 bytes for any name a
    folder holds, and a repack's leftovers are told apart by the whole
    name: those of `a.b` are not `a`'s."""
    from ckptfs.pack.output import TEMP_SUFFIX
    from ckptfs.sources.pathnames import NAME_MAX, beside, temp_prefix
    from ckptfs.write.session import remove_stale_temp_files

    for name in ("m.nemo", "é" * 127, os.fsdecode(b"\xff" * 255), "模" * 85, "x" * 240 + "模" * 5):
        assert len(os.fsencode(name)) <= NAME_MAX
        for tail in (".ckptfs", ".ckptfs.lock"):
            assert len(os.fsencode(beside(name, tail))) <= NAME_MAX and beside(name, tail).endswith(tail)
        assert len(os.fsencode(temp_prefix(name, TEMP_SUFFIX))) + 8 + len(TEMP_SUFFIX) <= NAME_MAX
    assert beside("m.nemo", ".ckptfs") == ".m.nemo.ckptfs"  # a short name is kept whole, as before
    assert beside("é" * 127, ".ckptfs") != beside("é" * 126 + "e", ".ckptfs")
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "a.b").write_bytes(b"")
    mine, theirs = tmp_path / ".a.k3j_9xq2.ckptfs-new", tmp_path / ".a.b.p0w8ma7z.ckptfs-new"
    mine.write_bytes(b"half")
    theirs.write_bytes(b"half")  # a repack of a.b, perhaps running now
    remove_stale_temp_files(str(tmp_path / "a"))
    assert not mine.exists() and theirs.exists()


def test_systemd_hears_of_a_source_not_utf8_in_utf8(tmp_path):
    """STATUS= names the source; systemd reads UTF-8, so a byte that is not
    is sent as an escape rather than failing the daemon as it starts."""
    import socket
    import sys

    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(tmp_path / "notify"))
    listening.settimeout(10)
    with listening:
        sent = subprocess.run([sys.executable, "-c", "import sys; from ckptfs.mount.sdnotify import Notifier; "
                               "print(Notifier(sys.argv[1]).send('READY=1', 'STATUS=serving ' + sys.argv[2]))",
                               str(tmp_path / "notify"), f"/data/{RAW_NAME} at /mnt/m"],
                              capture_output=True, timeout=TIMEOUT)
        assert sent.stdout == b"True\n", sent.stderr
        message = listening.recv(4096)
    assert message == b"READY=1\nSTATUS=serving /data/\\udcff\\udcfe.safetensors at /mnt/m\n"
    message.decode("utf-8")


@pytest.mark.parametrize("to", ["safetensors", "hf"])
def test_an_export_to_a_name_near_the_limit_is_written(tmp_path, to):
    """The export's temporary name beside OUT fits in 255 bytes too (it was
    `.OUT.RANDOM.ckptfs-new`, too long for a name of 252 bytes)."""
    source = tmp_path / "m.safetensors"
    source.write_bytes(save(TENSORS))
    out = tmp_path / ("模" * 84)
    assert len(os.fsencode(out.name)) == 252
    done = run("export", source, out, "--to", to)
    assert done.returncode == 0, done.stderr
    written = load((out / "model.safetensors" if to == "hf" else out).read_bytes())
    assert all(np.array_equal(written[k], v) for k, v in TENSORS.items()) and sorted(written) == sorted(TENSORS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, out.name])
