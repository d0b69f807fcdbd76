"""Side-by-side benchmark of an ONNX model with external data (issue 30).

    .venv/bin/python bench/onnx_load.py [--rounds 3] [--gib 1] [--workdir DIR]

Writes a model of about 1 GiB with the onnx package (`save_as_external_data`,
all tensors in one file: 256 float32 initializers of 4 MiB, a Gemm chain),
then measures in one run: a mount in the foreground + `find` + a read of
every tensor's `.npy` (`cat` of each into /dev/null) against `onnx.load` +
`numpy_helper.to_array` of every initializer in one process: wall time, and
the peak RSS of the mount's daemon and of the loading process (each from
its own rusage, at its exit). Prints Markdown (docs/benchmarks.md), also
kept in bench/out/onnx.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent
TENSOR = (1024, 1024)  # float32: 4 MiB
LOAD = ("import sys, onnx\nfrom onnx import numpy_helper\n"
        "model = onnx.load(sys.argv[1])\n"
        "total = sum(numpy_helper.to_array(t, base_dir=sys.argv[2]).nbytes for t in model.graph.initializer)\n"
        "print(total)")


def write_model(path: Path, gib: float) -> int:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    count = int(gib * 256)
    inits, nodes, last = [], [], "x"
    for i in range(count):
        inits.append(numpy_helper.from_array(rng.standard_normal(TENSOR, dtype=np.float32),
                                             f"layers.{i}.weight"))
        nodes.append(helper.make_node("Gemm", [last, f"layers.{i}.weight"], [f"h{i}"], transB=1))
        last = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, 1024])], inits)
    onnx.save_model(helper.make_model(graph), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.data")
    return count


def mount_and_read(model: Path, mnt: Path) -> tuple[float, int]:
    """(seconds for mount + find + every .npy read, the daemon's peak RSS in KiB)."""
    start = time.perf_counter()
    daemon = subprocess.Popen([*CKPTFS, "mount", "-f", "-o", "ro", model, mnt], stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        subprocess.run(["find", mnt], check=True, stdout=subprocess.DEVNULL, timeout=600)
        subprocess.run(f"find '{mnt}' -name '*.npy' -not -path '*/.ckptfs/*' -exec cat {{}} + > /dev/null",
                       shell=True, check=True, timeout=1800)
        elapsed = time.perf_counter() - start
    finally:
        subprocess.run([*CKPTFS, "umount", mnt], timeout=120, stdout=subprocess.DEVNULL)
    _, _, usage = os.wait4(daemon.pid, 0)
    daemon.returncode = 0
    return elapsed, usage.ru_maxrss


def load(model: Path) -> tuple[float, int]:
    """(seconds for onnx.load + to_array of every initializer, its peak RSS in KiB)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", LOAD, model, model.parent], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    assert status == 0, f"onnx.load exited with {status}"
    return time.perf_counter() - start, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        print(write_model(args.write, args.gib))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-onnx-"))
    try:
        text = measure(work, args.rounds, args.gib)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(text)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "onnx.md").write_text(text)


def measure(work: Path, rounds: int, gib: float) -> str:
    """The benchmark's Markdown, the model written in `work` unless it is there."""
    work.mkdir(parents=True, exist_ok=True)
    model, mnt = work / "model.onnx", work / "mnt"
    mnt.mkdir(exist_ok=True)
    count = None
    if not model.exists():  # in a process of its own: a child forked from this one would start with its memory
        done = subprocess.run([sys.executable, __file__, "--write", str(model), "--gib", str(gib)], check=True,
                              capture_output=True, text=True, timeout=3600)
        count = int(done.stdout)
    subprocess.run(["cat", model, work / "model.data"], check=True, stdout=subprocess.DEVNULL)  # warm for both
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(mount_and_read(model, mnt))
        theirs.append(load(model))
    median = statistics.median
    t_ours, t_theirs = median(t for t, _ in ours), median(t for t, _ in theirs)
    rss_ours, rss_theirs = max(r for _, r in ours) / 1024, max(r for _, r in theirs) / 1024
    size = (work / "model.data").stat().st_size / 2**30
    lines = [f"## ONNX with external data (`bench/onnx_load.py`, {time.strftime('%Y-%m-%d %H:%M')})", "",
             f"A model of {size:.2f} GiB written by `onnx.save_model(..., save_as_external_data=True)`"
             + (f" ({count} float32 initializers of 4 MiB in one `model.data`)" if count else "") + ".", "",
             "| | s | ratio | peak RSS (MiB) | ratio |", "| --- | --- | --- | --- | --- |",
             f"| ckptfs mount + `find` + `cat` of every `.npy` | {t_ours:.2f} | {t_ours / t_theirs:.2f}x | "
             f"{rss_ours:.0f} (the daemon) | {rss_ours / rss_theirs:.2f}x |",
             f"| `onnx.load` + `numpy_helper.to_array` of every initializer | {t_theirs:.2f} | 1.00x | "
             f"{rss_theirs:.0f} | 1.00x |",
             "", f"Medians of {rounds} interleaved rounds (peak RSS: the largest), page cache warm, a fresh "
             "mount each round, Python's start included on both sides."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
