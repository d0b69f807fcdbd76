"""pyfuse3's session loop as vendor/pyfuse3/fast-loop.patch makes it, through
real FUSE: requests read one after another without going back to trio,
handlers run inline until one waits (then another worker reads on), and
trio's other tasks (signals, threads' results, commits) still run while the
loop is busy."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyfuse3
import pytest
from safetensors.numpy import load_file, save_file

from .conftest import daemon_pid, is_mounted, run_ckptfs
from .test_hostile_remote import READ, drip, wait_for  # noqa: F401 (drip: a fixture)

BOUND = 120


@pytest.fixture
def model(tmp_path) -> Path:
    """120 small tensors, each in a folder of its own, as models name them."""
    rng = np.random.default_rng(31)
    tensors = {f"layers.{i}.mlp.w": rng.standard_normal(16 + i).astype(np.float32) for i in range(120)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


def _files(mnt: Path) -> list[Path]:
    return sorted(mnt.glob("layers/*/mlp/w.npy"))


def _in_threads(count: int, work) -> list[BaseException]:
    """`work(i)` in `count` threads at once: what each raised."""
    failures: list[BaseException] = []

    def run(i):
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    assert not any(thread.is_alive() for thread in threads), "a reader never ended"
    return failures


def test_the_installed_pyfuse3_has_the_fast_loop():
    assert getattr(pyfuse3, "FAST_LOOP", False), "pyfuse3 lacks vendor/pyfuse3's fast-loop.patch: run install.sh"


def test_many_concurrent_readers_each_get_their_own_bytes(mount, model):
    mnt = mount(model, "-o", "ro")
    expected = load_file(str(model))

    def reader(i):
        order = _files(mnt)
        random.Random(i).shuffle(order)
        for path in order:
            name = ".".join(path.relative_to(mnt).with_suffix("").parts)
            assert np.array_equal(np.load(path), expected[name]), path
        assert sum(len(files) for _, _, files in os.walk(mnt / "layers")) == len(expected)

    assert _in_threads(8, reader) == []


def test_a_read_that_waits_on_the_network_leaves_other_requests_answered(tmp_path, drip, mount):  # noqa: F811
    """A remote read that waits (one byte a second) suspends its handler;
    the walk and the other tensor's read are answered meanwhile, and the
    waiting read, interrupted by its reader's death, ends at once."""
    served = drip("http", pace=(1, 1.0))
    mnt = mount(served.url, "-o", "stall_timeout=60")
    process = subprocess.Popen([sys.executable, "-c", READ, str(mnt / "slow.npy")], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: served.server.began, "the reader's read reaches the server", bound=BOUND)
        for _ in range(3):
            assert sorted(os.listdir(mnt / ".ckptfs")) and sorted(os.listdir(mnt))[:1] == [".ckptfs"]
            assert np.array_equal(np.load(mnt / "fast.npy"), served.tensors["fast"])
        assert process.poll() is None  # still waiting for its bytes
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL  # its read answered EINTR long before the stall timeout
    finally:
        process.kill()
        process.wait(timeout=BOUND)
    assert np.array_equal(np.load(mnt / "fast.npy"), served.tensors["fast"])


def test_sigterm_while_readers_walk_unmounts(mnt, model):
    assert run_ckptfs("mount", model, mnt, "-o", "ro").returncode == 0
    pid = daemon_pid(mnt)
    started = threading.Barrier(5, timeout=BOUND)

    def walker(i):
        started.wait()
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            try:
                for path in _files(mnt):
                    path.read_bytes()
            except OSError:  # the mount went
                return
            if not is_mounted(mnt):
                return

    failures: list[BaseException] = []
    threads = threading.Thread(target=lambda: failures.extend(_in_threads(4, walker)))
    threads.start()
    started.wait()
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    threads.join(BOUND)
    assert not threads.is_alive() and failures == []
    wait_for(lambda: not is_mounted(mnt) and not os.path.exists(f"/proc/{pid}"), "the daemon unmounted and exited",
             bound=BOUND)
    assert os.listdir(mnt) == []


def test_a_commit_while_a_find_runs(mount, model):
    """`ckptfs commit` (SIGUSR1 to the daemon, a trio task) is served while
    `find` keeps the loop busy, and the walks see the tree before or after."""
    mnt = mount(model)
    np.save(mnt / "layers/3/mlp/w.npy", np.full(19, 7, dtype=np.float32))
    stop = threading.Event()
    walks: list[subprocess.CompletedProcess] = []

    def walk(i):
        while not stop.is_set():
            walks.append(subprocess.run(["find", mnt], capture_output=True, text=True, timeout=BOUND))

    finder = threading.Thread(target=lambda: _in_threads(2, walk))
    finder.start()
    try:
        wait_for(lambda: len(walks) >= 2, "two walks", bound=BOUND)
        done = run_ckptfs("commit", mnt)
        assert done.returncode == 0, done.stderr
        count = len(walks)
        wait_for(lambda: len(walks) >= count + 2, "two walks after the commit", bound=BOUND)
    finally:
        stop.set()
        finder.join(BOUND)
    assert walks and all(w.returncode == 0 and f"{mnt}/layers/119/mlp/w.npy" in w.stdout for w in walks)
    assert load_file(str(model))["layers.3.mlp.w"].tolist() == [7.0] * 19
