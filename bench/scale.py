"""Scale and random access, side by side (issue 13).

    .venv/bin/python bench/scale.py [--quick] [--workdir DIR] [--ratarmount PATH] [--plot PNG]

For safetensors files of many small tensors named as Mixture-of-Experts
models name them (`model.layers.L.mlp.experts.E.gate_proj.weight`: three
tensors to a folder), in interleaved rounds:

- mount and `find` through ckptfs, read-only and writable (the default);
- the same tree as a tar under ratarmount (its index already built), and
  extracted on the local disk;
- the parse such a mount needs: `json.loads` of the header, and
  `safe_open(...).keys()`;
- the daemons' resident memory after the walk.

Then a 100 GB sparse safetensors of 5,000 tensors, mounted and walked. Then
one big tensor: 1,000 random `pread`s of 4 KiB and of 1 MiB through a
fresh mount against the same ranges of the source file (in the page cache),
random rows of it through `np.load(mmap_mode="r")`, first and second pass,
against a `np.memmap` of the source; and reading every `.npy` of a
1,000-tensor file a second time against `cat` of the source.

`--quick` runs 1,000 and 10,000 tensors and a 256 MiB tensor; the full run
10,000 and 100,000 (plus 1,000 for the plot) and a 2 GiB tensor. Prints
Markdown (docs/benchmarks.md keeps it); `--plot` draws mount time, `find`
time and memory against the tensor count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

CKPTFS = [sys.executable, "-m", "ckptfs"]
MiB = 1 << 20
PROJECTIONS = ("down_proj", "gate_proj", "up_proj")


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, timeout=3600, **kw)


def median(values) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------- checkpoints


def moe_names(count: int, experts: int = 64) -> list[str]:
    names = []
    layer = 0
    while len(names) < count:
        for expert in range(experts):
            for proj in PROJECTIONS:
                names.append(f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight")
        layer += 1
    return names[:count]


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """tensors: name -> (safetensors dtype, shape, bytes), in name order."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, data in tensors.values():
            f.write(data)


def many_tensors(path: Path, count: int) -> None:
    """`count` float32 tensors of 4 elements each."""
    write_safetensors(path, {n: ("F32", [4], np.full(4, i, np.float32).tobytes())
                             for i, n in enumerate(sorted(moe_names(count)))})


def tar_of_tree(mountpoint: Path, tar_path: Path, extract_to: Path) -> None:
    """The tree a mount shows, copied to the local disk and packed as a tar."""
    shutil.copytree(mountpoint, extract_to, ignore=shutil.ignore_patterns(".ckptfs"))
    with tarfile.open(tar_path, "w") as tar:
        for entry in sorted(os.listdir(extract_to)):
            tar.add(extract_to / entry, arcname=entry)


# ---------------------------------------------------------------- mounts


def daemon_pid(mountpoint: Path, marker: bytes) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mountpoint).encode() in argv and any(marker in a for a in argv):
                return int(entry)
    raise RuntimeError(f"no daemon serves {mountpoint}")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


class Mounted:
    """A ckptfs (`how` = "ro" or "rw") or ratarmount mount: (mount s, find s, RSS MiB after the walk).

    `ckptfs` and `env` run another ckptfs (bench/targets.py's `--before`:
    another interpreter, another PYTHONPATH); `extra` goes before the
    source on the mount's command line (`--cache-dir DIR`, `--index-file F`)."""

    def __init__(self, how: str, source: Path, where: Path, ratarmount: str | None = None,
                 ckptfs: list[str] = CKPTFS, env: dict | None = None, extra: tuple = ()):
        self.how, self.where, self.ckptfs, self.env = how, where, ckptfs, env
        where.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if how == "ratarmount":
            sh(ratarmount, *extra, source, where)
            self.pid = daemon_pid(where, b"ratarmount")
        else:
            sh(*ckptfs, "mount", *extra, source, where, *(["-o", "ro"] if how == "ro" else []), env=env)
            self.pid = daemon_pid(where, b"ckptfs")
        self.mount_seconds = time.perf_counter() - start

    def find(self) -> tuple[float, int]:
        start = time.perf_counter()
        entries = len(sh("find", self.where).stdout.splitlines())
        return time.perf_counter() - start, entries

    def close(self) -> None:
        if self.how == "ratarmount":
            for _ in range(20):  # busy for a moment after a walk when the machine is loaded
                if subprocess.run(["fusermount3", "-u", str(self.where)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                sh("fusermount3", "-u", self.where)  # the error, said
            deadline = time.time() + 60
            while Path(f"/proc/{self.pid}").exists() and time.time() < deadline:
                time.sleep(0.05)
        else:
            sh(*self.ckptfs, "umount", self.where, env=self.env)


def in_process_parse(path: Path, cache: Path) -> tuple[float, float, float | None]:
    """Seconds of `json.loads` of the header, of ckptfs's parse and tree
    (what a mount does before it serves), and of `safe_open(...).keys()`."""
    code = f"""
import json, struct, time
with open({str(path)!r}, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; raw = f.read(n)
t = time.perf_counter(); json.loads(raw); parse = time.perf_counter() - t
import gc
from ckptfs.formats import open_checkpoint
gc.disable()  # as ckptfs mount parses
t = time.perf_counter(); open_checkpoint({str(path)!r}, {str(cache)!r}); tree = time.perf_counter() - t
try:
    from safetensors import safe_open
except ImportError:
    print(parse, tree, "nan")
else:
    t = time.perf_counter()
    with safe_open({str(path)!r}, "np") as f:
        f.keys()
    print(parse, tree, time.perf_counter() - t)
"""
    parse, tree, keys = sh(sys.executable, "-c", code).stdout.split()
    return float(parse), float(tree), None if keys == "nan" else float(keys)


# ---------------------------------------------------------------- walks


def report_walks(counts, rounds, work, ratarmount, out) -> dict:
    """Mount, find and RSS for each count; returns the medians for the plot."""
    rows = {}
    for count in counts:
        source = work / f"moe-{count}.safetensors"
        many_tensors(source, count)
        peers = ["ro", "rw"]
        if ratarmount:
            m = Mounted("ro", source, work / "mnt-copy")
            tar_of_tree(m.where, work / f"moe-{count}.tar", work / f"tree-{count}")
            m.close()
            Mounted("ratarmount", work / f"moe-{count}.tar", work / "mnt-index", ratarmount).close()  # builds its index
            peers.append("ratarmount")
        results: dict[str, list[tuple[float, float, float]]] = {p: [] for p in peers}
        local, parse, tree, keys = [], [], [], []
        entries = {}
        for i in range(rounds):  # interleaved, so that noise falls on every row alike
            for how in peers:
                m = Mounted(how, work / f"moe-{count}.tar" if how == "ratarmount" else source,
                            work / f"mnt-{how}-{count}-{i}", ratarmount)
                find_seconds, entries[how] = m.find()
                results[how].append((m.mount_seconds, find_seconds, rss_mib(m.pid)))
                m.close()
            if ratarmount:
                start = time.perf_counter()
                sh("find", work / f"tree-{count}")
                local.append(time.perf_counter() - start)
            p, t, k = in_process_parse(source, work / "cache")
            parse.append(p)
            tree.append(t)
            if k is not None:
                keys.append(k)
        med = {how: [median(col) for col in zip(*runs)] for how, runs in results.items()}
        rows[count] = med
        out(f"**{count:,} tensors** ({entries['ro']:,} entries; medians of {rounds} interleaved rounds)")
        out()
        out("| | mount s | `find` s | µs per entry | RSS after the walk, MiB | `find` ÷ ratarmount's |")
        out("| --- | --- | --- | --- | --- | --- |")
        label = {"ro": "ckptfs `-o ro`", "rw": "ckptfs (writable, the default)", "ratarmount": "ratarmount, same tree as a tar"}
        for how in peers:
            mount_s, find_s, rss = med[how]
            ratio = f"{find_s / med['ratarmount'][1]:.2f}" if ratarmount else "—"
            out(f"| {label[how]} | {mount_s:.2f} | {find_s:.2f} | {find_s / entries[how] * 1e6:.0f} | {rss:.0f} | {ratio} |")
        if local:
            out(f"| `find` of the extracted tree on local disk | — | {median(local):.2f} | "
                f"{median(local) / entries['ro'] * 1e6:.0f} | — | {median(local) / med['ratarmount'][1]:.2f} |")
        parse_s, tree_s = median(parse), median(tree)
        out()
        out(f"Parse: `json.loads` of the header {parse_s:.3f} s ({parse_s / count * 1e6:.1f} µs per tensor); "
            f"ckptfs's parse and tree {tree_s:.3f} s ({tree_s / count * 1e6:.1f} µs per tensor, "
            f"{tree_s / parse_s:.1f}x `json.loads`)"
            + (f"; `safe_open(...).keys()` {median(keys):.3f} s" if keys else "") + ".")
        out()
    return rows


def sparse_safetensors(path: Path, count: int = 5000, each: int = 20_000_000) -> None:
    """A safetensors of `count` float32 tensors of `each` bytes (5,000 x 20 MB = 100 GB) with no data on disk."""
    header, offset = {}, 0
    for name in sorted(moe_names(count)):
        header[name] = {"dtype": "F32", "shape": [each // 4], "data_offsets": [offset, offset + each]}
        offset += each
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)


def report_sparse(work: Path, rounds: int, out) -> None:
    """Mount + `find` of a 100 GB safetensors of 5,000 tensors (sparse: no data on disk)."""
    path = work / "sparse.safetensors"
    sparse_safetensors(path)
    totals: dict[str, list[float]] = {"ro": [], "rw": []}
    for i in range(rounds):
        for how in totals:
            m = Mounted(how, path, work / f"mnt-sparse-{how}-{i}")
            find_seconds, _ = m.find()
            totals[how].append(m.mount_seconds + find_seconds)
            m.close()
    out(f"**A {path.stat().st_size / 1e9:.0f} GB sparse safetensors of 5,000 tensors**: mount + `find` "
        f"{median(totals['ro']):.2f} s read-only, {median(totals['rw']):.2f} s writable (medians of {rounds}).")
    out()


# ---------------------------------------------------------------- random access


def big_tensor(work: Path, mib: int) -> tuple[Path, int, int]:
    """A safetensors of one float32 tensor of `mib` MiB, 4 KiB rows; (path,
    data offset in the file, rows)."""
    path = work / "big.safetensors"
    rows = mib * MiB // 4096
    header = {"w": {"dtype": "F32", "shape": [rows, 1024], "data_offsets": [0, rows * 4096]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        chunk = np.random.default_rng(0).random(MiB // 4, dtype=np.float32).tobytes()
        for _ in range(mib):
            f.write(chunk)
    return path, 8 + len(text), rows


def preads(fd: int, offsets, length: int) -> float:
    start = time.perf_counter()
    for offset in offsets:
        os.pread(fd, length, offset)
    return (time.perf_counter() - start) / len(offsets)


def rows_sum(array: np.ndarray, rows) -> float:
    start = time.perf_counter()
    total = 0.0
    for r in rows:
        total += float(array[r, 0])  # touches one page of the row
    return time.perf_counter() - start


def report_random(work: Path, mib: int, rounds: int, out) -> None:
    source, data_start, nrows = big_tensor(work, mib)
    sh("sh", "-c", f"cat '{source}' > /dev/null")  # the source in the page cache
    rng = random.Random(1)
    cells: dict[str, list[float]] = {}

    def add(key, value):
        cells.setdefault(key, []).append(value)

    for i in range(rounds):
        for length in (4096, MiB):
            offsets = [rng.randrange(0, nrows * 4096 - length) for _ in range(1000)]
            m = Mounted("ro", source, work / f"mnt-rand-{length}-{i}")
            npy = m.where / "w.npy"
            header = _npy_data_start(npy)
            fd = os.open(npy, os.O_RDONLY)
            add(f"mount {length}", preads(fd, [o + header for o in offsets], length))
            os.close(fd)
            m.close()
            fd = os.open(source, os.O_RDONLY)
            add(f"source {length}", preads(fd, [o + data_start for o in offsets], length))
            os.close(fd)
        rows = [rng.randrange(nrows) for _ in range(max(1, nrows // 100))]
        m = Mounted("ro", source, work / f"mnt-mmap-{i}")
        array = np.load(m.where / "w.npy", mmap_mode="r")
        add("mmap mount first", rows_sum(array, rows))
        add("mmap mount second", rows_sum(array, rows))
        del array
        m.close()
        array = np.memmap(source, np.float32, "r", offset=data_start, shape=(nrows, 1024))
        add("mmap source first", rows_sum(array, rows))
        add("mmap source second", rows_sum(array, rows))
        del array
    med = {k: median(v) for k, v in cells.items()}
    out(f"**Random access to a {mib} MiB tensor** (source file in the page cache, a fresh mount each time; "
        f"medians of {rounds})")
    out()
    out("| | ckptfs `.npy` | source file | ratio |")
    out("| --- | --- | --- | --- |")
    for length, label in ((4096, "4 KiB"), (MiB, "1 MiB")):
        a, b = med[f"mount {length}"], med[f"source {length}"]
        out(f"| 1,000 random {label} `pread`s, µs each | {a * 1e6:.1f} | {b * 1e6:.1f} | {a / b:.1f}x |")
    for npass in ("first", "second"):
        a, b = med[f"mmap mount {npass}"], med[f"mmap source {npass}"]
        out(f"| `mmap`, 1% of the rows at random, {npass} pass, s | {a:.3f} | {b:.3f} | {a / b:.1f}x |")
    out()


def _npy_data_start(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(12)
    return 10 + int.from_bytes(head[8:10], "little")


def report_second_read(work: Path, rounds: int, out) -> None:
    """Every `.npy` of 1,000 tensors of 1 MiB read a second time, against `cat` of the source."""
    source = work / "files.safetensors"
    write_safetensors(source, {f"model.layers.{i // 10}.w{i % 10}": ("F32", [MiB // 4], bytes(MiB))
                               for i in range(1000)})
    sh("sh", "-c", f"cat '{source}' > /dev/null")
    mount_rates, cat_rates = [], []
    buffer = bytearray(MiB)
    for i in range(rounds):
        m = Mounted("ro", source, work / f"mnt-files-{i}")
        files = sorted(p for p in m.where.rglob("*.npy"))
        read_files(files, buffer)
        mount_rates.append(read_files(files, buffer))
        m.close()
        cat_rates.append(read_files([source], buffer))
    a, b = median(mount_rates), median(cat_rates)
    out(f"**Every `.npy` of 1,000 tensors of 1 MiB, read a second time** (medians of {rounds}): "
        f"ckptfs {a:.2f} GB/s, reading the source file {b:.2f} GB/s: {a / b:.2f}x.")
    out()


def read_files(files: list[Path], buffer: bytearray) -> float:
    """GB/s of reading every file whole, 1 MiB a call, as `cat` does."""
    start, total = time.perf_counter(), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total / (time.perf_counter() - start) / 1e9


# ---------------------------------------------------------------- plot


def plot(rows: dict, png: Path, labels: dict | None = None, rss_title: str = "RSS after the walk, MiB") -> None:
    """rows: count -> how -> (mount s, find s, RSS MiB); a None is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = ("mount, s", "`find`, s", rss_title)
    labels = labels or {"ro": "ckptfs -o ro", "rw": "ckptfs (writable)", "ratarmount": "ratarmount (tar of the tree)"}
    for col, (ax, title) in enumerate(zip(axes, titles)):
        for how, label in labels.items():
            points = [(c, rows[c][how][col]) for c in counts if how in rows[c] and rows[c][how][col] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tensors")
        ax.set_title(title.replace("`", ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k tensors, a 256 MiB tensor, fewer rounds")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/ckptfs-bench"))
    parser.add_argument("--ratarmount", default=shutil.which("ratarmount"), help="the peer (default: on PATH)")
    parser.add_argument("--plot", type=Path, help="draw the walks as a PNG here")
    parser.add_argument("--only", choices=["walks", "sparse", "random", "reread"], help="run one part")
    args = parser.parse_args()
    counts = (1000, 10000) if args.quick else (1000, 10000, 100000)
    rounds = 3
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    lines: list[str] = []
    out = lambda text="": (print(text, flush=True), lines.append(text))  # noqa: E731
    try:
        if not args.ratarmount and args.only in (None, "walks"):
            out("ratarmount not found: its rows are left out (make bench installs it in .venv-ratarmount).")
            out()
        rows = report_walks(counts, rounds, work, args.ratarmount, out) if args.only in (None, "walks") else {}
        if args.only in (None, "sparse"):
            report_sparse(work, rounds, out)
        if args.only in (None, "random"):
            report_random(work, 256 if args.quick else 2048, rounds, out)
        if args.only in (None, "reread"):
            report_second_read(work, rounds, out)
        if args.plot and rows:
            plot(rows, args.plot)
            out(f"Plot: {args.plot}")
    finally:
        for m in work.glob("mnt*"):
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    Path(__file__).with_name("out").mkdir(exist_ok=True)
    Path(__file__).with_name("out").joinpath("scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
