"""Side-by-side benchmark of a JAX Orbax checkpoint (issue 30).

    .venv/bin/python bench/orbax_load.py [--rounds 3] [--workdir DIR]

Writes a 1 GiB Orbax checkpoint with orbax-checkpoint on CPU JAX (OCDBT,
Orbax's default; 16 float32 arrays of 4096 x 4096 in a list of dicts, one
chunk each as Orbax makes them for one device, and a few small arrays), then
measures in one run: a mount + `find` + a read of every `.npy` through it,
against Orbax's restore of the whole tree (PyTreeCheckpointer, every array
brought to the host), and `ckptfs export --to safetensors` of it; seconds
and peak RSS of each (the mount's: its daemon's). Prints Markdown
(docs/benchmarks.md), also kept in bench/out/orbax.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scale import daemon_pid  # bench/ is the script's folder
from tools import median, rounds_and_folder, run

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent
LAYERS, WIDTH = 16, 4096

#: Orbax's restore of every array to host memory, in a process of its own
RESTORE = """
import os, sys, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, numpy as np, orbax.checkpoint as ocp
start = time.perf_counter()
restored = ocp.PyTreeCheckpointer().restore(sys.argv[1])
total = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(restored))
print(time.perf_counter() - start, total, file=sys.stderr)
"""


def write_checkpoint(path: Path) -> None:
    """The checkpoint, written by Orbax in a process of its own (tensorstore's
    threads in this one would not survive the fork of the next command)."""
    code = f"""
import os, sys
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
rng = np.random.default_rng(0)
tree = {{"layers": [{{"w": rng.standard_normal(({WIDTH}, {WIDTH}), dtype=np.float32),
                     "b": np.zeros({WIDTH}, np.float32)}} for _ in range({LAYERS})],
        "embed": {{"scale": jnp.ones(16, jnp.bfloat16)}}, "step": jnp.array(1000, jnp.int32)}}
ocp.PyTreeCheckpointer().save(sys.argv[1], tree)
"""
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=3600, stderr=subprocess.DEVNULL)


def mount_find_read(ckpt: Path, mnt: Path, cache: Path) -> tuple[float, float]:
    """(seconds of mount + `find` + reading every .npy, the daemon's peak RSS in MiB)."""
    start = time.perf_counter()
    subprocess.run([*CKPTFS, "mount", "-o", "ro", "--cache-dir", cache, ckpt, mnt], check=True, timeout=600)
    try:
        found = subprocess.run(["find", mnt, "-name", "*.npy"], check=True, capture_output=True, text=True,
                               timeout=600).stdout.split()
        for name in found:
            with open(name, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass
        seconds = time.perf_counter() - start
        status = Path(f"/proc/{daemon_pid(mnt, b'ckptfs')}/status").read_text()
        rss = int(status.split("VmHWM:")[1].split()[0]) / 1024
    finally:
        subprocess.run([*CKPTFS, "umount", mnt], check=True, timeout=600)
    return seconds, rss


def main() -> None:
    args, work, temporary = rounds_and_folder(__doc__, "orbax")
    ckpt, mnt, cache, out = work / "ckpt", work / "mnt", work / "cache", work / "out.safetensors"
    mnt.mkdir(exist_ok=True)
    try:
        if not (ckpt / "_METADATA").exists():
            write_checkpoint(ckpt)
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        run("cat", *sorted(f for f in ckpt.rglob("*") if f.is_file()))  # warm: every contender reads from memory
        mounted, restored, exported = [], [], []
        for _ in range(args.rounds):
            mounted.append(mount_find_read(ckpt, mnt, cache))
            restored.append(run(sys.executable, "-c", RESTORE, ckpt))
            out.unlink(missing_ok=True)
            exported.append(run(*CKPTFS, "export", ckpt, out))
        lines = _table(size, args.rounds, {
            "ckptfs mount + `find` + read of every `.npy` (the daemon's RSS)": mounted,
            "Orbax `PyTreeCheckpointer().restore` of the whole tree, every array on the host": restored,
            "`ckptfs export --to safetensors` of it": exported,
        })
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "orbax.md").write_text(text)


def _table(size: int, rounds: int, results: dict[str, list[tuple[float, float]]]) -> list[str]:
    ref = next(name for name in results if name.startswith("Orbax"))
    ref_s, ref_rss = median(s for s, _ in results[ref]), median(r for _, r in results[ref])
    lines = [f"## JAX Orbax checkpoints (`bench/orbax_load.py`, {time.strftime('%Y-%m-%d %H:%M')})", "",
             f"A {size / 2**30:.2f} GiB OCDBT checkpoint written by orbax-checkpoint on CPU JAX: {LAYERS} float32 "
             f"arrays of {WIDTH} x {WIDTH} (one chunk each) and a few small ones.", "",
             "| | s | ÷ Orbax | peak RSS, MiB | ÷ Orbax |", "| --- | --- | --- | --- | --- |"]
    for name, values in results.items():
        seconds, rss = median(s for s, _ in values), median(r for _, r in values)
        lines.append(f"| {name} | {seconds:.2f} | {seconds / ref_s:.2f}x | {rss:.0f} | {rss / ref_rss:.2f}x |")
    lines += ["", f"Medians of {rounds} interleaved rounds, page cache warm; every contender's time includes "
              "Python's start (Orbax's, importing JAX). RSS is each process's peak (`wait4`; the mount's: its "
              f"daemon's VmHWM). CPU count: {os.cpu_count()}."]
    return lines


if __name__ == "__main__":
    main()
