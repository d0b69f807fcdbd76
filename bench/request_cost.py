"""Daemon CPU per FUSE request during `find`, builds side by side (issue 31).

    python bench/request_cost.py COUNT ROUNDS NAME=PYTHON:PYTHONPATH ... [NAME=ratarmount]
        [--requests N] [--workdir DIR] [--ratarmount PATH]

Mounts bench/scale.py's MoE safetensors of COUNT tensors (`-o ro`) with each
PYTHON and PYTHONPATH in turn, ROUNDS times alternating (each its own
pyfuse3 build: give each its own virtualenv), walks it with `find`, and
prints the walk's time and the daemon's CPU (utime + stime of
/proc/PID/stat) over it; with `--requests` (count them once with
`strace -c -f -p DAEMON`: `read`s of /dev/fuse), the CPU per request. A
variant `NAME=ratarmount` walks the same tree as a tar under ratarmount
(made from a mount, its index built, on first use).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scale import daemon_pid, many_tensors, tar_of_tree  # bench/ is the script's folder
from targets import cpu_seconds


def make_tar(source: Path, tar: Path, work: Path, ratarmount: str) -> None:
    where = work / "mnt-tar"
    where.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "ckptfs", "mount", "-o", "ro", source, where], check=True)
    try:
        tar_of_tree(where, tar, work / "tree")
    finally:
        subprocess.run([sys.executable, "-m", "ckptfs", "umount", where], check=True)
    shutil.rmtree(work / "tree")
    subprocess.run([ratarmount, tar, where], check=True, capture_output=True)  # builds its index
    subprocess.run(["fusermount3", "-u", where], check=True)


def walk(spec: str, source: Path, tar: Path, where: Path, ratarmount: str) -> tuple[float, float]:
    """(`find` seconds, daemon CPU seconds) of one fresh mount."""
    where.mkdir(exist_ok=True)
    if spec == "ratarmount":
        subprocess.run([ratarmount, tar, where], check=True, capture_output=True)
        pid = daemon_pid(where, b"ratarmount")
        unmount = ["fusermount3", "-u", where]
        env = None
    else:
        python, path = spec.split(":")
        env = dict(os.environ, PYTHONPATH=path)
        subprocess.run([python, "-m", "ckptfs", "mount", "-o", "ro", source, where], check=True, env=env)
        pid = daemon_pid(where, b"ckptfs")
        unmount = [python, "-m", "ckptfs", "umount", where]
    before, start = cpu_seconds(pid), time.perf_counter()
    subprocess.run(["find", where], check=True, capture_output=True)
    seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - before
    subprocess.run(unmount, check=True, env=env)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int)
    parser.add_argument("rounds", type=int)
    parser.add_argument("variants", nargs="+", help="NAME=PYTHON:PYTHONPATH or NAME=ratarmount")
    parser.add_argument("--requests", type=int, help="requests of one walk, to print µs per request")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/ckptfs-bench/requests"))
    parser.add_argument("--ratarmount", default=shutil.which("ratarmount") or "ratarmount")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    source, tar = work / f"moe-{args.count}.safetensors", work / f"moe-{args.count}.tar"
    if not source.exists():
        many_tensors(source, args.count)
    variants = [v.split("=", 1) for v in args.variants]
    if any(spec == "ratarmount" for _, spec in variants) and not tar.exists():
        make_tar(source, tar, work, args.ratarmount)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    per = (lambda cpu: f", {cpu / args.requests * 1e6:.1f} µs per request") if args.requests else (lambda cpu: "")
    for i in range(args.rounds):
        for name, spec in variants:
            seconds, cpu = walk(spec, source, tar, work / f"mnt-{name}", args.ratarmount)
            results[name].append((seconds, cpu))
            print(f"round {i} {name}: find {seconds:.2f} s, daemon CPU {cpu:.2f} s{per(cpu)}", flush=True)
    for name, runs in results.items():
        cpu = statistics.median(c for _, c in runs)
        print(f"{name}: medians: find {statistics.median(s for s, _ in runs):.2f} s, daemon CPU {cpu:.2f} s{per(cpu)}")


if __name__ == "__main__":
    main()
