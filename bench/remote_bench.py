"""Side-by-side benchmark of remote sources on loopback (issue 17).

    .venv/bin/python bench/remote_bench.py [--rounds 3] [--workdir DIR]

A 10 GB sparse safetensors of 1,000 tensors (the first, 256 MiB, with
data) served by the ranged web server of tests/remote_servers.py, and a
safetensors of that one tensor in moto's S3 server, both on 127.0.0.1. In
one run:
- mount + the first MiB of the first tensor of the remote 10 GB file, with
  an empty disk cache (the issue's target: under 1 s);
- mount + `find` of the remote 10 GB file against the same file local;
- a sequential read (`cat`) of the 256 MiB tensor through a mount of the S3
  object against s3fs's `cat_file` of the same bytes into a file, each cold;
- an edit of the S3 object written to a new key (mount `--output s3://...`,
  add a tensor, unmount) against what users do today: s3fs `get_file` of
  the object to local disk and `put_file` of it to a new key.

Prints Markdown (docs/benchmarks.md), also kept in bench/out/remote.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.remote_servers import FileServer, S3Server  # noqa: E402

CKPTFS = [sys.executable, "-m", "ckptfs"]
COUNT, EACH = 1000, 10_000_000
BIG = 256 << 20  # the tensor with data, read sequentially


def write_checkpoint(path: Path, count: int) -> tuple[int, int]:
    """A sparse safetensors of `count` tensors, the first `big` with data;
    (its offset in the file, its length)."""
    header, offset = {}, 0
    header["big"] = {"dtype": "F32", "shape": [BIG // 4], "data_offsets": [0, BIG]}
    offset = BIG
    for i in range(count - 1):
        header[f"layers.{i}.weight"] = {"dtype": "F32", "shape": [EACH // 4], "data_offsets": [offset, offset + EACH]}
        offset += EACH
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        start = f.tell()
        block = os.urandom(1 << 20)
        for _ in range(BIG >> 20):
            f.write(block)
        f.truncate(start + offset)
    return start, BIG


def with_s3fs(code: str) -> float:
    """Seconds a fresh Python takes to run `code` with an s3fs filesystem `fs`."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import s3fs\nfs = s3fs.S3FileSystem(skip_instance_cache=True)\n" + code],
                   check=True, timeout=300)
    return time.perf_counter() - began


def median(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    www = work / "www"
    www.mkdir(exist_ok=True)
    local = www / "model.safetensors"
    write_checkpoint(local, COUNT)
    start, length = write_checkpoint(work / "big.safetensors", 1)
    web = FileServer(www)
    url = web.url + "model.safetensors"
    server = S3Server()
    os.environ.update(server.env)
    server.client().create_bucket(Bucket="bench")
    server.client().upload_file(str(work / "big.safetensors"), "bench", "big.safetensors")
    s3_url = "s3://bench/big.safetensors"
    lines: list[str] = []
    local_gb = local.stat().st_size / 1e9

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    def mounted(source, name: str, options: str = "ro", *extra):
        mnt = work / name
        mnt.mkdir(exist_ok=True)
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        began = time.perf_counter()
        subprocess.run([*CKPTFS, "mount", source, mnt, "-o", options, "--cache-dir", cache, *extra], check=True,
                       timeout=300, stderr=subprocess.DEVNULL)
        return mnt, began

    def unmount(mnt: Path) -> None:
        subprocess.run([*CKPTFS, "umount", mnt], check=True, timeout=300)

    results: dict[str, list[float]] = {k: [] for k in ("first", "first_requests", "find_remote", "find_local",
                                                        "cat", "cat64", "s3fs", "edit", "get_put")}
    try:
        for i in range(args.rounds):
            web.counts.reset()
            mnt, began = mounted(url, f"first{i}")
            (mnt / "big.npy").open("rb").read(1 << 20)
            results["first"].append(time.perf_counter() - began)
            results["first_requests"].append(web.counts.reset()[0])
            unmount(mnt)
            for name, source in (("find_remote", url), ("find_local", local)):
                mnt, began = mounted(source, f"{name}{i}")
                subprocess.run(["find", mnt], check=True, stdout=subprocess.DEVNULL, timeout=300)
                results[name].append(time.perf_counter() - began)
                unmount(mnt)
            for key, options in (("cat", "ro"), ("cat64", "ro,block_size=64M")):
                mnt, _ = mounted(s3_url, f"{key}{i}", options)
                began = time.perf_counter()
                subprocess.run(["cat", mnt / "big.npy"], check=True, stdout=subprocess.DEVNULL, timeout=300)
                results[key].append(time.perf_counter() - began)
                unmount(mnt)
            target = work / "s3fs.bin"
            results["s3fs"].append(with_s3fs(f"data = fs.cat_file({s3_url!r}, start={start}, end={start + length})\n"
                                             f"open({str(target)!r}, 'wb').write(data)\n"))
            target.unlink()
            mnt, began = mounted(s3_url, f"edit{i}", "rw", "--output", f"s3://bench/edited{i}.safetensors",
                                 "--overlay-dir", work / "edits")
            np.save(mnt / "added.npy", np.zeros(4, dtype=np.float32))
            unmount(mnt)
            results["edit"].append(time.perf_counter() - began)
            results["get_put"].append(with_s3fs(f"fs.get_file({s3_url!r}, {str(target)!r})\n"
                                                f"fs.put_file({str(target)!r}, 's3://bench/copied{i}.safetensors')\n"))
            target.unlink()
    finally:
        server.close()
        web.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    mib = length / 2**20
    out(f"## Remote sources (`bench/remote_bench.py`, {time.strftime('%Y-%m-%d %H:%M')})")
    out()
    out(f"On loopback: a {local_gb:.0f} GB sparse safetensors of {COUNT:,} tensors from a ranged "
        f"web server, and a {mib:.0f} MiB tensor from moto's S3. Medians of {args.rounds} rounds, each with an "
        "empty disk cache.")
    out()
    out("| | s | ratio |")
    out("| --- | --- | --- |")
    out(f"| mount + first 1 MiB of the first tensor, remote ({median(results['first_requests']):.0f} requests) "
        f"| {median(results['first']):.2f} | |")
    find_local = median(results["find_local"])
    out(f"| mount + `find`, remote | {median(results['find_remote']):.2f} | "
        f"{median(results['find_remote']) / find_local:.2f}x |")
    out(f"| mount + `find`, local file | {find_local:.2f} | 1.00x |")
    s3fs_seconds = median(results["s3fs"])
    out(f"| `cat` of the {mib:.0f} MiB tensor through a mount of the S3 object ({mib / median(results['cat']):.0f} MiB/s) | "
        f"{median(results['cat']):.2f} | {median(results['cat']) / s3fs_seconds:.2f}x |")
    out(f"| the same with `-o block_size=64M` ({mib / median(results['cat64']):.0f} MiB/s) | "
        f"{median(results['cat64']):.2f} | {median(results['cat64']) / s3fs_seconds:.2f}x |")
    out(f"| s3fs `cat_file` of the same bytes into a file, a fresh Python ({mib / s3fs_seconds:.0f} MiB/s) | "
        f"{s3fs_seconds:.2f} | 1.00x |")
    get_put = median(results["get_put"])
    out(f"| mount `--output s3://NEW`, add a tensor, unmount: the {mib:.0f} MiB object read, repacked and uploaded "
        f"in parts | {median(results['edit']):.2f} | {median(results['edit']) / get_put:.2f}x |")
    out(f"| s3fs `get_file` of the object to local disk, then `put_file` to a new key, a fresh Python | "
        f"{get_put:.2f} | 1.00x |")
    out()
    results_dir = HERE / "out"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "remote.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
