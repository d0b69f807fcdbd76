"""The hostile corpus's servers: a web server and an S3 endpoint on
loopback that drip one byte a second, or never answer (docs/remote.md,
"Stalls"). A read of what they serve fails with EIO once the transfer has
made no progress for `-o stall_timeout` twice, on two connections; a
server that is slow but keeps sending is read whole; a reader killed while
its read waits is gone at once (the kernel's FUSE_INTERRUPT is honoured),
and the mount unmounts, and serves its other files meanwhile. Reads that
could hang run in child processes, so that every wait here is bounded."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyfuse3
import pytest

from ckptfs.errors import CkptfsError
from ckptfs.mount.options import MountOptions, parse

from .conftest import is_mounted, run_ckptfs, write_safetensors
from .remote_servers import DripServer

#: bytes of the file before its slow tensor: ranges that start here or later are slow
FAST = 1 << 20
#: bounds of the waits below: far above what each should take (seconds), far below aiohttp's 300 s
BOUND = 60
NAME = "m.safetensors"
#: reads a file in a child: prints "ok" and the bytes' SHA-256, or "errno N"
READ = """import hashlib, sys
try:
    data = open(sys.argv[1], "rb").read()
except OSError as e:
    print("errno", e.errno)
else:
    print("ok", hashlib.sha256(data).hexdigest())
"""
#: a reader that waits in a FUSE read of its own: a page fault in a mapping
#: with MADV_RANDOM is one read request, which the faulting process waits for
#: (a read() waits, killable, for the kernel's read-ahead, which no reader owns)
FAULT = """import mmap, sys
with open(sys.argv[1], "rb") as f:
    view = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    view.madvise(mmap.MADV_RANDOM)
    print(view[len(view) // 2])
"""


class Served:
    """A checkpoint on a DripServer: tensor `fast` in its first FAST bytes,
    `slow` (of `slow_bytes`) after them, served at `pace` or held (`hold`:
    paths never answered). `url` is http://.../m.safetensors, or for
    `kind` "s3" s3://bucket/m.safetensors through the same server speaking
    S3, boto pointed at it."""

    def __init__(self, root: Path, kind: str, monkeypatch, slow_bytes: int = 1 << 20,
                 pace: tuple[int, float] | None = None, hold: tuple[str, ...] = ()):
        folder = root if kind == "http" else root / "bucket"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(7)
        self.tensors = {"fast": rng.integers(0, 256, 256 << 10, dtype=np.uint8),
                        "pad": np.zeros(FAST - (256 << 10), dtype=np.uint8),
                        "slow": rng.integers(0, 256, slow_bytes, dtype=np.uint8)}
        header, offset = {}, 0
        for name, array in self.tensors.items():
            header[name] = {"dtype": "U8", "shape": [array.size], "data_offsets": [offset, offset + array.size]}
            offset += array.size
        write_safetensors(folder / NAME, header, b"".join(a.tobytes() for a in self.tensors.values()))
        path = "/" + NAME if kind == "http" else f"/bucket/{NAME}"
        self.server = DripServer(root, {path: pace} if pace else {}, after=FAST, hold=hold)
        self.url = self.server.url + NAME if kind == "http" else f"s3://bucket/{NAME}"
        for name, value in {"AWS_ENDPOINT_URL": self.server.url.rstrip("/"), "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "HF_ENDPOINT": self.server.url.rstrip("/")}.items():
            monkeypatch.setenv(name, value)

    def ended(self, count: int) -> list[tuple[str, str, int, str]]:
        """The slow requests, once `count` of them have ended (the server
        sees a client hang up at its next write, a second later at most; a
        busy machine's daemon may take longer to hang up)."""
        wait_for(lambda: len(self.server.slow) >= count, f"{count} slow requests ended", bound=30.0)
        return list(self.server.slow)


@pytest.fixture
def drip(tmp_path, monkeypatch):
    made: list[Served] = []

    def make(kind: str, **options) -> Served:
        made.append(Served(tmp_path / "www", kind, monkeypatch, **options))
        return made[-1]

    yield make
    for served in made:
        served.server.close()


def in_child(script: str, path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=BOUND)
    return done.stdout.strip()


def wait_for(condition, what: str, bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound} s: {what}"
        time.sleep(0.1)


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " ERROR " in line]


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_dripping_server_fails_the_read_with_eio_after_one_retry(tmp_path, drip, mount, kind):
    served = drip(kind, pace=(1, 1.0))  # one byte a second
    mnt = mount(served.url, "-o", "stall_timeout=2", log_errors_expected=True)
    assert in_child(READ, mnt / "slow.npy") == f"errno {errno.EIO}"

    # asked twice, though the kernel asked again once its read-ahead failed
    # (the pages' failure is kept), each time on a connection of its own,
    # which ckptfs closed
    assert len(served.server.began) == 2, served.server.began
    (_, first, port, ended), (_, second, other_port, other_ended) = served.ended(2)
    assert first == second and port != other_port and ended == other_ended == "hung up"
    start, end = map(int, first.split("-"))
    errors = error_lines(tmp_path / "daemon0.log")
    assert len(errors) == 1, errors
    assert f"{served.url}: bytes {start}-{end - 1}: no progress for 2 s, twice" in errors[0]

    # the rest of the mount is served
    assert np.array_equal(np.load(mnt / "fast.npy"), served.tensors["fast"])


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_slow_server_that_keeps_sending_is_read_whole(drip, mount, kind):
    """6 MiB at 32 KiB every 0.05 s: one request of about 10 s, longer than
    the stall timeout (4 s), never without progress for a fortieth of it
    (the margin a busy machine needs)."""
    served = drip(kind, slow_bytes=6 << 20, pace=(32 << 10, 0.05))
    mnt = mount(served.url, "-o", "stall_timeout=4")
    assert in_child(READ, mnt / "slow.npy").startswith("ok ")
    assert np.array_equal(np.load(mnt / "slow.npy"), served.tensors["slow"])
    assert [ended for *_, ended in served.ended(1)] == ["sent"]  # one request, never asked again


@pytest.mark.parametrize("reader", [FAULT, READ], ids=["its own read", "the kernel's read-ahead"])
def test_a_reader_killed_while_its_read_waits_is_gone_at_once(tmp_path, drip, mount, reader):
    """A process killed in a FUSE read of its own stays (state D) until
    the daemon answers; with FUSE_INTERRUPT honoured the read is answered
    EINTR at once, long before the stall timeout would end it. One killed
    while it waits for the kernel's read-ahead is gone at once anyway: that
    request, which no reader owns, is dropped when the mount goes."""
    assert getattr(pyfuse3, "READ_INTERRUPTS", False), "pyfuse3 lacks vendor/pyfuse3's patches: run install.sh"
    served = drip("http", pace=(1, 1.0))
    mnt = mount(served.url, "-o", "stall_timeout=60")
    process = subprocess.Popen([sys.executable, "-c", reader, str(mnt / "slow.npy")], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: served.server.began, "the reader's read reaches the server", bound=BOUND)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL  # long before the stall timeout (60 s) would end it
    finally:
        process.kill()
        process.wait(timeout=BOUND)

    assert served.server.slow == []  # its fetch still drips (for the next read of those bytes)
    assert np.array_equal(np.load(mnt / "fast.npy"), served.tensors["fast"])
    done = run_ckptfs("umount", mnt, "--timeout", "60", timeout=BOUND + 30)
    assert done.returncode == 0 and not is_mounted(mnt), done.stderr
    assert error_lines(tmp_path / "daemon0.log") == []


@pytest.mark.parametrize("kind, url, hold, asked", [
    ("http", "{server}" + NAME, ("/" + NAME,), "{server}" + NAME),  # its HEAD
    ("s3", f"s3://bucket/{NAME}", (f"/bucket/{NAME}",), f"s3://bucket/{NAME}"),  # its HeadObject
    ("s3", "s3://bucket/", ("/bucket?",), "s3://bucket/"),  # the LIST of a prefix
    ("http", "hf://org/model", ("/api/",), "{server}api/models/org/model/revision/main?blobs=true"),  # the Hub's API
])
def test_a_server_that_never_answers_is_refused_in_one_line(drip, mnt, kind, url, hold, asked):
    served = drip(kind, hold=hold)
    url, asked = url.format(server=served.server.url), asked.format(server=served.server.url)
    done = run_ckptfs("mount", url, mnt, "-o", "stall_timeout=1", timeout=BOUND)
    assert done.returncode == 1 and not is_mounted(mnt)
    assert done.stderr.strip() == f"ckptfs: {asked}: no progress for 1 s, twice (the second time on another connection)"
    requests = served.ended(2)
    assert len({port for _, _, port, _ in requests}) == 2 and {ended for *_, ended in requests} == {"hung up"}


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", ""])
def test_stall_timeout_takes_seconds_above_zero(value):
    assert parse(["stall_timeout=2.5"], MountOptions()).remote == {"stall": 2.5}
    with pytest.raises(CkptfsError, match="needs a number of seconds above 0"):
        parse([f"stall_timeout={value}"], MountOptions())
