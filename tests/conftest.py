"""Shared test helpers: real FUSE mounts through the CLI, and checkpoint makers."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: checkpoints written by NeMo, Lightning, FSDP2 and transformers, bundled in
#: the repository (samples/README.md); CKPTFS_FIXTURES points the tests at
#: another folder of the same layout
FIXTURES = Path(os.environ.get("CKPTFS_FIXTURES") or REPO / "samples")
CKPTFS = [sys.executable, "-m", "ckptfs"]
TIMEOUT = 60
#: for a module whose shared (module- or session-scoped) fixture is written by
#: programs it runs, each bounded by a timeout of its own (minutes on a busy
#: machine): the per-test limit (120 s, pyproject.toml) then times each test's
#: body alone, where pytest-timeout would count the build in its first user's time
TIMED_APART = pytest.mark.timeout(func_only=True)


def free_port() -> str:
    """A TCP port on loopback no one listens on now, for a rendezvous of ranks
    (a fixed one could be another suite's, running beside this one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_ckptfs(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(CKPTFS + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def mountinfo() -> list[list[str]]:
    """The fields of each line of /proc/self/mountinfo, read as Python reads
    file names: a mount of a name that is not UTF-8 (another test's, or
    another suite's beside this one) is a line like the others."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [line.split(" ") for line in f.read().splitlines()]


def is_mounted(path: Path) -> bool:
    target = str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    return any(fields[4] == target for fields in mountinfo())


def force_unmount(path: Path) -> None:
    """Last resort for a test that left a mount behind: never leave one."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=TIMEOUT)


def daemon_pid(mnt: Path) -> int:
    """The pid of the daemon serving `mnt`, as it recorded it (`ckptfs status`)."""
    from ckptfs.mount import mounts

    pid = mounts.MountState(str(mnt)).pid()
    assert pid is not None, f"no daemon serves {mnt}"
    return pid


#: how long one of the writer programs below may take: minutes on a busy machine
WRITER_TIMEOUT = 600


@pytest.fixture(scope="session")
def written(tmp_path_factory):
    """`written(MODULE, *ARGS)`: the folder `python -m MODULE OUT *ARGS` wrote
    (tests/*_writer.py: torch ranks on gloo, seconds of CPU each), run once a
    session however many test modules read what it wrote, within
    WRITER_TIMEOUT; a PORT in ARGS becomes a free port. Modules that use it
    are TIMED_APART."""
    made: dict[tuple[str, ...], Path] = {}

    def write(module: str, *args: str) -> Path:
        key = (module, *args)
        if key not in made:
            out = tmp_path_factory.mktemp(module.rsplit(".", 1)[-1]) / "out"
            command = [sys.executable, "-m", module, str(out), *(free_port() if a == "PORT" else a for a in args)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=WRITER_TIMEOUT,
                                  env={**os.environ, "DS_ACCELERATOR": "cpu"})
            assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr[-3000:]}"
            made[key] = out
        return made[key]

    return write


@pytest.fixture(scope="session")
def installed_helper():
    """/sbin/mount.fuse.ckptfs, the man page and the completions, as
    `ckptfs install-helper` writes them for the ckptfs under test; whatever
    was there before is put back afterwards."""
    from ckptfs.commands import install_helper as install

    paths = [Path(p) for p in install._paths("/")]
    before = {p: (p.read_bytes(), p.stat().st_mode) for p in paths if p.is_file()}
    done = run_ckptfs("install-helper")
    assert done.returncode == 0, done.stderr
    yield Path("/", install.HELPER)
    for path in paths:
        if path in before:
            path.write_bytes(before[path][0])
            path.chmod(before[path][1])
        else:
            path.unlink(missing_ok=True)


def reap(proc: subprocess.Popen) -> None:
    """Kill a foreground mount that a failed test left running, and wait for it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def require_fuse() -> None:
    assert os.path.exists("/dev/fuse"), "/dev/fuse is missing: the tests mount through real FUSE"


class Mounts:
    """Mounts made by one test; each is unmounted with `ckptfs umount` at the
    end and the daemon's log checked for errors the test did not expect."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.made: list[tuple[Path, Path, bool]] = []
        self.cache_dir = tmp_path / "cache"

    def __call__(self, source, *extra: str, log_errors_expected: bool = False) -> Path:
        require_fuse()
        n = len(self.made)
        mnt = self.tmp_path / f"mnt{n}"
        mnt.mkdir()
        log = self.tmp_path / f"daemon{n}.log"
        if _in_repository(source) and not _asks_read_only(extra):
            extra = ("-o", "ro", *extra)  # a leaked writable mount of a sample would edit the repository
        done = run_ckptfs("mount", source, mnt, "--log-file", log, "--cache-dir", self.cache_dir, *extra)
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt)
        self.made.append((mnt, log, log_errors_expected))
        return mnt

    def close(self) -> None:
        problems = []
        for mnt, log, errors_expected in self.made:
            if is_mounted(mnt):
                done = run_ckptfs("umount", mnt, "--timeout", "60", timeout=TIMEOUT + 30)
                if done.returncode != 0:
                    problems.append(f"umount {mnt}: {done.stderr.strip()}")
            force_unmount(mnt)
            text = log.read_text() if log.exists() else ""
            if not errors_expected and ("Traceback" in text or " ERROR " in text):
                problems.append(f"unexpected errors in the daemon log of {mnt}:\n{text}")
        assert not problems, "\n".join(problems)


def _in_repository(source) -> bool:
    return isinstance(source, (str, Path)) and "://" not in str(source) and Path(source).resolve().is_relative_to(REPO)


def _asks_read_only(extra) -> bool:
    return any(a == "-o" and "ro" in str(b).split(",") for a, b in zip(extra, extra[1:]))


@pytest.fixture
def mnt(tmp_path):
    """An empty mount point for a test that mounts with the CLI itself;
    whatever is left mounted there is unmounted after the test."""
    require_fuse()
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    force_unmount(path)


@pytest.fixture
def mount(tmp_path):
    mounts = Mounts(tmp_path)
    try:
        yield mounts
    finally:
        mounts.close()


def write_safetensors(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    """A safetensors file from a header dict and raw data, as the reference
    writer lays it out (header padded with spaces to a multiple of 8)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    n = len(text) if header_len is None else header_len
    path.write_bytes(n.to_bytes(8, "little") + text + data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def umount(mnt: Path, *extra: str) -> subprocess.CompletedProcess:
    """`ckptfs umount`, which repacks the edits (or not, with --discard)."""
    return run_ckptfs("umount", mnt, "--timeout", "60", *extra, timeout=TIMEOUT + 30)


def pretrained_state(folder) -> tuple[dict, object]:
    """The state dict and config transformers' AutoModel.from_pretrained
    loads from `folder`, copied: the model's tensors map its safetensors
    file, which would keep a mount busy."""
    import gc

    import transformers

    model = transformers.AutoModel.from_pretrained(folder)
    state, config = {k: v.clone() for k, v in model.state_dict().items()}, model.config
    del model
    gc.collect()
    return state, config


def tar_members(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()}


def write_refused(path: Path, data: bytes) -> None:
    """Writes `data`, whose close the mount must refuse (EINVAL) as an edit
    it cannot write back; the bytes stay, for the user to fix."""
    import errno

    with pytest.raises(OSError) as refused:
        path.write_bytes(data)
    assert refused.value.errno == errno.EINVAL


# -- users other than root (tests/test_users.py, and the hostile corpus's second user)

@pytest.fixture(scope="module")
def users():
    """Two unprivileged users made for the test, removed after it."""
    made = []
    for _ in range(2):
        name = f"ckptfs-{uuid.uuid4().hex[:8]}"
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", "--user-group", name], check=True,
                       timeout=TIMEOUT)
        made.append(pwd.getpwnam(name))
    yield made
    for user in made:
        subprocess.run(["userdel", user.pw_name], timeout=TIMEOUT)


@pytest.fixture(scope="module")
def shared_dir():
    """A folder every user can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ckptfs-users-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for mnt in path.glob("*/mnt*"):
        force_unmount(mnt)
    shutil.rmtree(path, ignore_errors=True)


def user_home(shared_dir: Path, user: pwd.struct_passwd) -> Path:
    """A folder of `user`'s own in `shared_dir`, 0700."""
    home = shared_dir / user.pw_name
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, user.pw_uid, user.pw_gid)
    return home


def as_user(user: pwd.struct_passwd, command: list, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`command` run as `user`, with no groups but theirs and a bare environment."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run([str(c) for c in command], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          env={**base, **(env or {})}, capture_output=True, text=True, errors="surrogateescape",
                          timeout=TIMEOUT, **kwargs)


def write_cut_gguf(path: Path) -> None:
    """A GGUF of three float32 tensors (a, b, c) cut inside the second, as
    an interrupted download leaves one: two of the three are missing."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    whole = path.with_name("whole.gguf")
    w = GGUFWriter(str(whole), "llama")
    for name in ("a", "b", "c"):
        w.add_tensor(name, np.full((4, 8), ord(name), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    path.write_bytes(whole.read_bytes()[:GGUFReader(str(whole)).tensors[1].data_offset + 16])
    whole.unlink()
