"""What checking a gzip .nemo costs: two ckptfs trees, side by side (issue 26).

    .venv/bin/python bench/gzip_check.py --before DIR [--rounds 3] [--workdir DIR] [--gib 1]

Writes a gzip .nemo (`gzip -1`) of a config and GIB GiB of float32 values,
then, alternating the ckptfs in DIR (`git archive COMMIT | tar -x -C DIR`)
with this one, measures each round: the first mount (a fresh index cache:
the stream inflated whole), a sequential read of the member in 1 MiB
requests, and the daemon's peak RSS. Prints Markdown (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
MEMBER = "model_weights.bin"


def write_nemo(path: Path, gib: float) -> None:
    plain = path.with_suffix(".tar")
    rng = np.random.default_rng(0)
    block = rng.standard_normal(1 << 24).astype(np.float32).tobytes()  # 64 MiB, repeated
    size = int(gib * (1 << 30)) // len(block) * len(block)
    with tarfile.open(plain, "w:") as tf:
        config = b"precision: 32\n"
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = len(config)
        tf.addfile(info, io.BytesIO(config))
        info = tarfile.TarInfo(f"./{MEMBER}")
        info.size = size
        tf.addfile(info, _Repeated(block, size))
    with open(path, "wb") as out:
        subprocess.run(["gzip", "-1", "-c", str(plain)], stdout=out, check=True)
    plain.unlink()


class _Repeated(io.RawIOBase):
    """`size` bytes of `block` over and over, read in pieces."""

    def __init__(self, block: bytes, size: int):
        self.block, self.pos, self.size = block, 0, size

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < n:
            start = self.pos % len(self.block)
            piece = self.block[start:start + n - len(out)]
            out += piece
            self.pos += len(piece)
        return bytes(out)


def one_round(tree: Path, nemo: Path, work: Path) -> tuple[float, float, float]:
    """(first mount s, sequential read s, daemon peak RSS MiB) with the ckptfs in `tree`."""
    ckptfs = [sys.executable, "-m", "ckptfs"]
    mnt, cache = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    subprocess.run([*ckptfs, "mount", "-o", "ro", "--cache-dir", cache, nemo, mnt], cwd=tree, check=True, timeout=1800)
    mounted = time.perf_counter() - start
    try:
        start = time.perf_counter()
        with open(mnt / MEMBER, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        read = time.perf_counter() - start
        pid = int(subprocess.run(["pgrep", "-n", "-f", f"ckptfs mount .* {mnt}"], capture_output=True, text=True)
                  .stdout.split()[0])
        rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM")) / 1024
    finally:
        subprocess.run([*ckptfs, "umount", mnt], cwd=tree, check=True, timeout=600)
    return mounted, read, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a tree of the ckptfs to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-gzip-"))
    work.mkdir(parents=True, exist_ok=True)
    nemo = work / "big.gz.nemo"
    if not nemo.exists():
        write_nemo(nemo, args.gib)
    subprocess.run(["cat", nemo], check=True, stdout=subprocess.DEVNULL)  # warm: both read from the page cache
    results: dict[str, list] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name, tree in (("before", args.before), ("after", HERE)):
            results[name].append(one_round(tree, nemo, work))
    size = os.path.getsize(nemo) / 1e9
    print(f"| gzip .nemo ({size:.2f} GB compressed), median of {args.rounds} | before | after | after ÷ before |")
    print("| --- | --- | --- | --- |")
    for i, what in enumerate(("first mount, s (inflates once, writes the index)",
                              f"sequential read of `{MEMBER}`, s", "daemon peak RSS, MiB")):
        before, after = (statistics.median(r[i] for r in results[k]) for k in ("before", "after"))
        print(f"| {what} | {before:.2f} | {after:.2f} | {after / before:.2f} |")
    for name in results:
        print(f"{name}: " + ", ".join(f"{m:.2f}/{r:.2f}" for m, r, _ in results[name]) + " (mount/read s per round)")


if __name__ == "__main__":
    main()
