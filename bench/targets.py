"""The targets of issue 31, every row measured side by side in one run.

    .venv/bin/python bench/targets.py [--quick] [--only ROW ...] [--before PATH [--before-python PY]]
                                      [--ratarmount PATH] [--workdir DIR] [--keep] [--plot PNG [--full]]

Each row of the issue's table is measured against its reference in the
same run: the sides take turns round by round (which goes first alternates),
and a row's ratio is the median of the rounds' ratios. Prints one Markdown
table (also kept in bench/out/targets.md). With `--before PATH` (a checkout
of an older commit) every ckptfs measurement is made twice a round, once
with PYTHONPATH=PATH (and `--before-python`, when that commit needs another
pyfuse3 build) and once with this tree, and the table shows both.

Read rows use read-only mounts (`-o ro`), the repack a writable one; every
mount is fresh unless the row says otherwise, and every source is in the
page cache. `--plot` adds mount time, `find` time and RSS against the
tensor count (1k to 1M) for ckptfs and ratarmount; the walk of a million
tensors only with `--full` (it takes many minutes through FUSE).
docs/benchmarks.md ("The issue-31 targets") says what each row measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from run import BIG_NAME, npy_path, state_dict, write_nemo  # bench/ is the script's folder
from scale import (
    MiB,
    Mounted,
    _npy_data_start,
    big_tensor,
    many_tensors,
    median,
    moe_names,
    plot,
    preads,
    rows_sum,
    rss_mib,
    sh,
    sparse_safetensors,
    write_safetensors,
)

HERE = Path(__file__).resolve().parent
GiB = 1 << 30


@dataclass
class Sizes:
    """What a run measures: the issue's sizes, or smaller ones for `--quick`."""

    load_gib: float = 2
    seq_mib: int = 1024
    nemo_gib: float = 1
    walk: int = 100_000
    million: int = 1_000_000
    rounds: int = 3
    walk_rounds: int = 2  # a round of the walks is four walks of 100k tensors: minutes
    plot_counts: tuple = (1000, 10_000)


QUICK = Sizes(load_gib=0.25, seq_mib=256, nemo_gib=0.25, walk=10_000, million=100_000, rounds=2, walk_rounds=2,
              plot_counts=(1000,))


@dataclass
class Row:
    """One line of the issue's table. `ratio` is "time" (ckptfs ÷ reference,
    lower is better), "speed" (ckptfs GB/s ÷ reference GB/s) or "" (no
    reference: the value itself is held to the target)."""

    key: str
    what: str
    unit: str
    reference: str
    ratio: str
    target: float
    samples: dict = field(default_factory=dict)  # side name or "ref" -> values, one a round
    failed: str = ""
    note: str = ""

    def add(self, side: str, value: float) -> None:
        self.samples.setdefault(side, []).append(value)


def rows_for(s: Sizes) -> list[Row]:
    k = lambda n: f"{n // 1000:,}k" if n < 1_000_000 else f"{n // 1_000_000}M"  # noqa: E731
    return [
        Row("load-st", f"load every tensor of a {s.load_gib:g} GiB safetensors through a fresh mount, `np.load`",
            "s", "`safetensors.numpy.load_file`", "time", 1.5),
        Row("load-nemo", f"the same for a {s.load_gib:g} GiB `.nemo`", "s",
            "`torch.load(weights_only=True, mmap=True)` + a copy of every tensor", "time", 1.0),
        Row("seq", f"first sequential read (`cat`) of a {s.seq_mib:,} MiB tensor", "GB/s", "`cat` of the source",
            "speed", 0.6),
        Row("cat-first", f"`cat` of every `.npy` of a {s.nemo_gib:g} GB `.nemo` of 1,000 tensors, first pass",
            "GB/s", "`cat` of the source", "speed", 0.4),
        Row("cat-second", "the same, second pass", "GB/s", "`cat` of the source", "speed", 0.8),
        Row("cpu", f"daemon CPU per FUSE request during `find` of {k(s.walk)} tensors", "µs", "", "", 25),
        Row("find-moe", f"`find` of {k(s.walk)} tensors, MoE tree", "s", "ratarmount, tar of the tree", "time", 0.4),
        Row("find-dense", f"`find` of {k(s.walk)} tensors, dense tree", "s", "ratarmount, tar of the tree", "time", 0.4),
        Row("sparse", "mount + `find` of a 100 GB sparse safetensors of 5,000 tensors", "s", "", "", 1.5),
        Row("mount", f"mount of {k(s.walk)} tensors", "s", "", "", 0.8),
        Row("rss", f"RSS after a full walk of {k(s.walk)} tensors", "MiB", "", "", 100),
        Row("million-mount", f"{k(s.million)} tensors: mount", "s", "", "", 8),
        Row("million-rss", f"{k(s.million)} tensors: RSS after mount", "MB", "", "", 600),
        Row("pread-4k", "random 4 KiB `pread`, first pass", "µs", "the source", "time", 10),
        Row("pread-1m", "random 1 MiB `pread`, first pass", "µs", "the source", "time", 2.5),
        Row("mmap", "random `mmap` rows of a tensor, first pass", "s", "the source", "time", 15),
        Row("gzip", f"second mount of a gzip `.nemo` ({s.nemo_gib:g} GB) + `ls -R`", "s", "ratarmount", "time", 1.0),
        Row("repack", f"repack after replacing the largest tensor of a {s.nemo_gib:g} GB `.nemo`", "s",
            "`cp` + `sync`", "time", 1.2),
    ]


# ---------------------------------------------------------------- sides and mounts


@dataclass
class Side:
    """A ckptfs to measure: this tree ("after"), or `--before PATH`."""

    name: str
    python: str
    path: Path

    def env(self) -> dict:
        # PYTHONSAFEPATH: `python -m ckptfs` would put the working folder
        # first on sys.path, and run the ckptfs found there, not PYTHONPATH's
        return dict(os.environ, PYTHONPATH=str(self.path), PYTHONSAFEPATH="1")


class Bench:
    """Where a run keeps its files and mounts, and the cleanup of both."""

    def __init__(self, args, sizes: Sizes):
        self.sizes, self.ratarmount, self.mode = sizes, args.ratarmount, args.mode
        self.work = args.workdir
        self.inputs, self.scratch, self.mnt = (self.work / d for d in ("inputs", "scratch", "mnt"))
        for d in (self.inputs, self.scratch, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        after = Side("after", sys.executable, HERE.parent)
        self.sides = [Side("before", args.before_python, args.before.resolve()), after] if args.before else [after]
        self.counter = 0
        self.pids: list[int] = []
        self.only = set(args.only or [])
        self.points: dict[int, dict[str, list]] = {}  # the plot's: count -> "ckptfs"/"ratarmount" -> (mount, find, RSS)

    def record(self, count: int, how: str, mount_s: float, find_s: float | None, rss: float) -> None:
        self.points.setdefault(count, {}).setdefault(how, []).append((mount_s, find_s, rss))

    def wants(self, *keys: str) -> bool:
        return not self.only or bool(self.only.intersection(keys))

    def turns(self, round_: int) -> list:
        """The sides and the reference ("ref"), in an order that alternates round by round."""
        order = [*self.sides, "ref"]
        return order if round_ % 2 == 0 else order[::-1]

    @contextmanager
    def mount(self, side: Side | None, source: Path, how: str = "", extra: tuple = ()):
        """A fresh ckptfs mount of `side` (how: "ro", "rw"; default the run's
        --mode), or ratarmount with side None; unmounted and reaped after."""
        self.counter += 1
        where = self.mnt / f"m{self.counter}"
        if side is None:
            m = Mounted("ratarmount", source, where, self.ratarmount, extra=extra)
        else:
            m = Mounted(how or self.mode, source, where, ckptfs=[side.python, "-m", "ckptfs"], env=side.env(),
                        extra=extra)
        self.pids.append(m.pid)
        try:
            yield m
        finally:
            m.close_seconds = timed(m.close)  # a writable mount's repack is in it
            wait_gone(m.pid, 60)
            where.rmdir()  # raises if anything is left in it, or mounted on it

    def input(self, name: str, make) -> Path:
        """inputs/NAME, made by make(path) unless a run with --keep left it."""
        path = self.inputs / name
        if not path.exists():
            partial = self.inputs / f"partial-{name}"
            if partial.is_dir():
                shutil.rmtree(partial)
            partial.unlink(missing_ok=True)
            make(partial)
            partial.rename(path)
        return path

    def unmount_all(self) -> None:
        """Lazily unmount whatever is left mounted below mnt/ (after a failure)."""
        for where in sorted(self.mnt.iterdir()) if self.mnt.is_dir() else []:
            subprocess.run(["fusermount3", "-u", "-z", str(where)], capture_output=True, timeout=60)

    def cleanup(self, keep: bool) -> None:
        self.unmount_all()
        for pid in self.pids:
            if not wait_gone(pid, 30) and self.serves_here(pid):
                os.kill(pid, signal.SIGTERM)  # a daemon this run started
                wait_gone(pid, 30)
        shutil.rmtree(self.mnt, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def serves_here(self, pid: int) -> bool:
        """Whether pid is still a daemon of one of this run's mount points (not a process that took its number)."""
        try:
            return str(self.mnt).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while Path(f"/proc/{pid}").exists():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def warm(path: Path) -> None:
    """The file in the page cache."""
    sh("sh", "-c", f"cat '{path}' > /dev/null")


def npy_files(root: Path) -> list[Path]:
    """Every tensor's .npy below root, ckptfs's own .ckptfs/ aside."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".ckptfs")
        found += [Path(folder, f) for f in sorted(files) if f.endswith(".npy")]
    return found


def find(where: Path) -> float:
    return timed(lambda: sh("find", where))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of pid, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- inputs


def safetensors_and_nemo(b: Bench, gib: float) -> tuple[Path, Path, Path]:
    """A safetensors, a torch.save file and a .nemo of it, `gib` GiB of 1,000
    float32 tensors, half the bytes in one (bench/run.py's state dict)."""
    def make(folder: Path) -> None:
        import torch
        from safetensors.numpy import save_file

        folder.mkdir()
        tensors = state_dict(gib, 1000, small=False)
        save_file(tensors, str(folder / "model.safetensors"))
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "model.pt")
        write_nemo(folder / "model.nemo", folder / "model.pt")

    folder = b.input(f"model-{gib:g}GiB", make)
    return folder / "model.safetensors", folder / "model.pt", folder / "model.nemo"


def dense_names(count: int) -> list[str]:
    """A dense transformer's names: a folder per tensor, nine to a layer."""
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
    return [f"model.layers.{i // len(parts)}.{parts[i % len(parts)]}.weight" for i in range(count)]


def names_of(kind: str, count: int) -> list[str]:
    """The tensor names of a tree, sorted: "moe" (bench/scale.py's), "dense",
    or "short" (moe without `model.` and `.weight`: the safetensors library,
    and ckptfs, refuse a header over 100 MB, which a million of the long
    names take)."""
    if kind == "dense":
        return sorted(dense_names(count))
    if kind == "short":
        return sorted(n.removeprefix("model.").removesuffix(".weight") for n in moe_names(count))
    return sorted(moe_names(count))


def tree_safetensors(b: Bench, kind: str, count: int) -> Path:
    """`count` float32 tensors of 4 elements, the i-th (by name) all i (bench/scale.py's many_tensors)."""
    if kind == "moe":
        return b.input(f"moe-{count}.safetensors", lambda p: many_tensors(p, count))
    return b.input(f"{kind}-{count}.safetensors", lambda p: write_safetensors(
        p, {n: ("F32", [4], np.full(4, i, np.float32).tobytes()) for i, n in enumerate(names_of(kind, count))}))


def tree_tar(b: Bench, kind: str, count: int) -> tuple[Path, Path]:
    """The tensors' tree as ckptfs shows it (a folder per name part, the
    tensors as .npy) packed as a tar, and ratarmount's index of it (built
    here, so that the timed mounts only load it)."""
    names = names_of(kind, count)

    def make(folder: Path) -> None:
        folder.mkdir()
        header = npy_header(np.zeros(4, np.float32))
        made: set[str] = set()
        with open(folder / "tree.tar", "wb") as tar:
            for i, name in enumerate(names):
                parts = name.split(".")
                for depth in range(1, len(parts)):
                    folder_name = "/".join(parts[:depth]) + "/"
                    if folder_name not in made:
                        made.add(folder_name)
                        tar.write(ustar_header(folder_name, 0))
                data = header + np.full(4, i, np.float32).tobytes()
                tar.write(ustar_header("/".join(parts) + ".npy", len(data)) + data + bytes(-len(data) % 512))
            tar.write(bytes(1024))
        index = folder / "tree.tar.index.sqlite"
        where = b.scratch / f"index-{kind}-{count}"
        Mounted("ratarmount", folder / "tree.tar", where, b.ratarmount, extra=("--index-file", index)).close()
        where.rmdir()

    folder = b.input(f"tar-{kind}-{count}", make)
    return folder / "tree.tar", folder / "tree.tar.index.sqlite"


def ustar_header(name: str, size: int) -> bytes:
    """A POSIX tar header: a folder when the name ends in "/", else a file
    of `size` bytes (tarfile takes 20 times longer for a million entries)."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"{name}: longer than a tar header's 100 bytes")
    folder = name.endswith("/")
    head = bytearray(512)
    head[: len(encoded)] = encoded
    head[100:148] = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (0o755 if folder else 0o644, 0, 0, size, 0)
    head[148:156] = b" " * 8
    head[156:157] = b"5" if folder else b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


def npy_header(array: np.ndarray) -> bytes:
    import io

    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()[: -array.nbytes]


def gzip_nemo(b: Bench, nemo: Path) -> Path:
    def make(path: Path) -> None:
        with open(path, "wb") as out:
            subprocess.run(["gzip", "-1", "-c", str(nemo)], stdout=out, check=True, timeout=1800)

    return b.input(f"{nemo.parent.name}.gz.nemo", make)


# ---------------------------------------------------------------- the rows


def measure_loads(b: Bench, rows: dict) -> None:
    """A model loaded into memory: every .npy through a fresh mount against
    the libraries' own loaders of the source."""
    import torch
    from safetensors.numpy import load_file

    st, pt, nemo = safetensors_and_nemo(b, b.sizes.load_gib)
    for path in (st, pt, nemo):
        warm(path)
    expected = sum(a.nbytes for a in load_file(str(st)).values())

    def through_mount(side: Side, source: Path) -> float:
        start = time.perf_counter()
        with b.mount(side, source) as m:
            arrays = [np.load(p) for p in npy_files(m.where)]
            seconds = time.perf_counter() - start
        assert sum(a.nbytes for a in arrays) == expected, f"{len(arrays)} arrays read through the mount"
        return seconds

    def torch_load() -> None:
        loaded = torch.load(pt, weights_only=True, mmap=True)
        [t.clone() for t in loaded.values()]

    torch_load()  # untimed: torch.load's first call (load_file ran just above)

    for i in range(b.sizes.rounds):
        for side in b.turns(i):
            for key, source, reference in (("load-st", st, lambda: load_file(str(st))), ("load-nemo", nemo, torch_load)):
                if b.wants(key):
                    rows[key].add(*(("ref", timed(reference)) if side == "ref" else
                                    (side.name, through_mount(side, source))))


def cat_rate(files: list[Path]) -> float:
    """GB/s of `cat` of the files (one `cat`, its output to /dev/null)."""
    size = sum(f.stat().st_size for f in files)
    with open(os.devnull, "wb") as null:
        seconds = timed(lambda: subprocess.run(["cat", *map(str, files)], stdout=null, check=True, timeout=1800))
    return size / seconds / 1e9


def measure_cat(b: Bench, rows: dict) -> None:
    """`cat` of a big tensor, and of every .npy of a .nemo, through a fresh mount."""
    seq = b.input(f"seq-{b.sizes.seq_mib}", lambda p: (p.mkdir(), big_tensor(p, b.sizes.seq_mib))) / "big.safetensors"
    _, _, nemo = safetensors_and_nemo(b, b.sizes.nemo_gib)
    warm(seq)
    warm(nemo)
    for i in range(b.sizes.rounds):
        for side in b.turns(i):
            if side == "ref":
                rate = cat_rate([seq]), cat_rate([nemo])
                for key, value in (("seq", rate[0]), ("cat-first", rate[1]), ("cat-second", rate[1])):
                    if b.wants(key):
                        rows[key].add("ref", value)
                continue
            if b.wants("seq"):
                with b.mount(side, seq) as m:
                    rows["seq"].add(side.name, cat_rate([m.where / "w.npy"]))
            if b.wants("cat-first", "cat-second"):
                with b.mount(side, nemo) as m:
                    files = npy_files(m.where)  # listed before the timed reads
                    for key in ("cat-first", "cat-second"):
                        rate = cat_rate(files)
                        if b.wants(key):
                            rows[key].add(side.name, rate)


def measure_random(b: Bench, rows: dict) -> None:
    """1,000 random 4 KiB and 1 MiB preads of a tensor, and 1% of its rows
    through np.load(mmap_mode="r"), each a first pass through a fresh mount,
    against the same ranges of the source (in the page cache)."""
    import random

    folder = b.input(f"seq-{b.sizes.seq_mib}", lambda p: (p.mkdir(), big_tensor(p, b.sizes.seq_mib)))
    source = folder / "big.safetensors"
    warm(source)
    with open(source, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    nrows = b.sizes.seq_mib * MiB // 4096
    rng = random.Random(1)
    for i in range(b.sizes.rounds):
        offsets = {n: [rng.randrange(0, nrows * 4096 - n) for _ in range(1000)] for n in (4096, MiB)}
        picks = [rng.randrange(nrows) for _ in range(max(1, nrows // 100))]
        for side in b.turns(i):
            for key, length in (("pread-4k", 4096), ("pread-1m", MiB)):
                if b.wants(key):
                    rows[key].add(*random_preads(b, side, source, data_start, offsets[length], length))
            if b.wants("mmap"):
                if side == "ref":
                    array = np.memmap(source, np.float32, "r", offset=data_start, shape=(nrows, 1024))
                    rows["mmap"].add("ref", rows_sum(array, picks))
                    del array
                    continue
                with b.mount(side, source) as m:
                    array = np.load(m.where / "w.npy", mmap_mode="r")
                    rows["mmap"].add(side.name, rows_sum(array, picks))
                    del array


def random_preads(b: Bench, side, source: Path, data_start: int, offsets: list, length: int) -> tuple[str, float]:
    """(side, µs a pread) of the source or of w.npy through a fresh mount."""
    if side == "ref":
        fd = os.open(source, os.O_RDONLY)
        try:
            return "ref", preads(fd, [o + data_start for o in offsets], length) * 1e6
        finally:
            os.close(fd)
    with b.mount(side, source) as m:
        npy = m.where / "w.npy"
        header = _npy_data_start(npy)
        fd = os.open(npy, os.O_RDONLY)
        try:
            return side.name, preads(fd, [o + header for o in offsets], length) * 1e6
        finally:
            os.close(fd)


def measure_walks(b: Bench, rows: dict) -> None:
    """Mount, `find`, RSS after the walk and the daemon's CPU over it, for an
    MoE tree and a dense tree of the same count, against ratarmount on a tar
    of each tree; then a pass under strace that counts the requests."""
    count = b.sizes.walk
    sources = {kind: tree_safetensors(b, kind, count) for kind in ("moe", "dense")}
    tars = {kind: tree_tar(b, kind, count) for kind in ("moe", "dense")}
    cpu: dict[str, list[float]] = {}
    for i in range(b.sizes.walk_rounds):
        for side in b.turns(i):
            for kind in ("moe", "dense"):
                if side == "ref":
                    tar, index = tars[kind]
                    with b.mount(None, tar, extra=("--index-file", index)) as m:
                        rows[f"find-{kind}"].add("ref", find(m.where))
                        if kind == "moe":
                            b.record(count, "ratarmount", m.mount_seconds, rows["find-moe"].samples["ref"][-1],
                                     rss_mib(m.pid))
                    continue
                with b.mount(side, sources[kind]) as m:
                    before = cpu_seconds(m.pid)
                    rows[f"find-{kind}"].add(side.name, find(m.where))
                    if kind == "moe":
                        cpu.setdefault(side.name, []).append(cpu_seconds(m.pid) - before)
                        rows["mount"].add(side.name, m.mount_seconds)
                        rows["rss"].add(side.name, rss_mib(m.pid))
                        if side is b.sides[-1]:
                            b.record(count, "ckptfs", m.mount_seconds, rows["find-moe"].samples[side.name][-1],
                                     rows["rss"].samples[side.name][-1])
    if b.wants("cpu"):
        notes = []
        for side in b.sides:
            requests, counter = count_requests(b, side, sources["moe"])
            rows["cpu"].samples[side.name] = [c / requests * 1e6 for c in cpu[side.name]]
            notes.append(f"{side.name + ': ' if b.sides[1:] else ''}{requests:,} requests, counted by {counter}")
        rows["cpu"].note = "; ".join(notes)


def count_requests(b: Bench, side: Side, source: Path) -> tuple[int, str]:
    """The FUSE requests of a `find` through a fresh mount, and what counted
    them: the daemon's successful read(2)s of its /dev/fuse descriptor, by
    perf's syscall tracepoints where they work (no slower than a plain walk),
    else by strace attached to the daemon (several times slower). A pass of
    its own, so that no tracer is in the timed walks."""
    if shutil.which("perf"):
        with b.mount(side, source) as m:
            count = perf_reads(b, m)
        if count is not None:
            return count, "perf"
    if not shutil.which("strace"):
        raise RuntimeError("neither perf's syscall tracepoints nor strace to count requests with")
    with b.mount(side, source) as m:
        return strace_reads(b, m), "strace"


def fuse_fd(pid: int) -> str:
    return next(f.name for f in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(f) == "/dev/fuse")


def perf_reads(b: Bench, m: Mounted) -> int | None:
    """`perf stat -p DAEMON -- find MOUNT`: reads of the /dev/fuse descriptor
    less the daemon's failed reads; None where perf cannot count them."""
    out = b.scratch / "perf.csv"
    done = subprocess.run(["perf", "stat", "-x,", "-o", str(out), "-e", "syscalls:sys_enter_read", "--filter",
                           f"fd == {fuse_fd(m.pid)}", "-e", "syscalls:sys_exit_read", "--filter", "ret < 0",
                           "-p", str(m.pid), "--", "find", str(m.where)],
                          capture_output=True, text=True, timeout=3600)
    counts = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        cells = line.split(",")
        if len(cells) > 2 and cells[0].isdigit():
            counts[cells[2]] = int(cells[0])
    if done.returncode or len(counts) != 2:
        return None
    return counts["syscalls:sys_enter_read"] - counts["syscalls:sys_exit_read"]


def strace_reads(b: Bench, m: Mounted) -> int:
    """The successful reads of /dev/fuse in `strace -f -p DAEMON`'s log over a `find`."""
    log, fd = b.scratch / "strace.txt", fuse_fd(m.pid)
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=read", "-e", "status=successful",
                               "-e", "signal=none", "-s", "0", "-o", str(log), "-p", str(m.pid)])
    try:
        deadline = time.time() + 30
        while any("TracerPid:\t0\n" in (t / "status").read_text() for t in Path(f"/proc/{m.pid}/task").iterdir()):
            if time.time() > deadline or tracer.poll() is not None:
                raise RuntimeError("strace did not attach to the daemon")
            time.sleep(0.05)
        find(m.where)
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(60)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(10)
    return sum(f" read({fd}," in line or line.startswith(f"read({fd},") for line in log.read_text().splitlines())


def measure_sparse(b: Bench, rows: dict) -> None:
    """Mount + `find` of a 100 GB safetensors of 5,000 tensors (no data on disk)."""
    source = b.input("sparse.safetensors", sparse_safetensors)
    for i in range(b.sizes.rounds):
        for side in b.turns(i):
            if side != "ref":
                with b.mount(side, source) as m:
                    rows["sparse"].add(side.name, m.mount_seconds + find(m.where))


def measure_million(b: Bench, rows: dict) -> None:
    """Mount time and RSS after the mount of a safetensors of a million (--quick: 100k) tensors."""
    source = tree_safetensors(b, million_kind(b), b.sizes.million)
    warm(source)
    for i in range(b.sizes.rounds):
        for side in b.turns(i):
            if side != "ref":
                with b.mount(side, source) as m:
                    rows["million-mount"].add(side.name, m.mount_seconds)
                    rows["million-rss"].add(side.name, rss_mib(m.pid) * MiB / 1e6)
                    if side is b.sides[-1]:
                        b.record(b.sizes.million, "ckptfs", m.mount_seconds, None, rss_mib(m.pid))


def million_kind(b: Bench) -> str:
    """The names of the million's tree: the short ones where the long ones would not fit a header."""
    return "short" if b.sizes.million >= 500_000 else "moe"


def measure_gzip(b: Bench, rows: dict) -> None:
    """The second mount of a gzip .nemo (seek index and caches from the
    first) + `ls -R`, against ratarmount's second mount (its index from the first) + `ls -R`."""
    _, _, nemo = safetensors_and_nemo(b, b.sizes.nemo_gib)
    gz = gzip_nemo(b, nemo)
    warm(gz)
    index = b.scratch / "gz.index.sqlite"
    extra = {side.name: ("--cache-dir", b.scratch / f"gzcache-{side.name}") for side in b.sides}
    for side in b.sides:  # the first mounts, untimed
        with b.mount(side, gz, extra=extra[side.name]):
            pass
    with b.mount(None, gz, extra=("--index-file", index)):
        pass
    for i in range(b.sizes.rounds):
        for side in b.turns(i):
            start = time.perf_counter()
            with b.mount(None if side == "ref" else side, gz,
                         extra=("--index-file", index) if side == "ref" else extra[side.name]) as m:
                sh("ls", "-R", m.where)
                seconds = time.perf_counter() - start
            rows["gzip"].add("ref" if side == "ref" else side.name, seconds)


def measure_repack(b: Bench, rows: dict) -> None:
    """The largest tensor of a .nemo replaced through a writable mount by one
    of its shape: `ckptfs umount` (the repack) + `sync`, against `cp` + `sync`
    of the file. Each round first makes an untimed `cp` + `sync` (the first
    large write after a setup runs slower whoever makes it: bench/run.py)."""
    _, _, nemo = safetensors_and_nemo(b, b.sizes.nemo_gib)
    big = lambda where: npy_path(where / "model_weights.ckpt", BIG_NAME)  # noqa: E731
    for i in range(b.sizes.rounds):
        copy = b.scratch / "cp.nemo"
        shutil.copy(nemo, copy)
        sh("sync")
        for side in b.turns(i):
            if side == "ref":
                copy.unlink()
                rows["repack"].add("ref", timed(lambda: (sh("cp", nemo, copy), sh("sync"))))  # noqa: B023
                continue
            edited = b.scratch / f"edit-{side.name}.nemo"
            shutil.copy(nemo, edited)
            sh("sync")
            with b.mount(side, edited, how="rw") as m:
                shape = np.load(big(m.where), mmap_mode="r").shape
                np.save(big(m.where), np.full(shape, 7, np.float32))
            rows["repack"].add(side.name, m.close_seconds + timed(lambda: sh("sync")))
            if i == 0:
                with b.mount(side, edited, how="ro") as m:
                    assert np.load(big(m.where), mmap_mode="r")[-1, -1] == 7, "the repacked tensor"
            edited.unlink()
        copy.unlink(missing_ok=True)


def draw(b: Bench, png: Path, full: bool) -> None:
    """The plot: the walks of the smaller counts measured here, the walk row's
    count and ckptfs's mount of the million from their rows; with `full`,
    the million mounted and walked by both."""
    after = b.sides[-1]
    for count in b.sizes.plot_counts:
        source, (tar, index) = tree_safetensors(b, "moe", count), tree_tar(b, "moe", count)
        for i in range(b.sizes.rounds):
            for side in (after, None) if i % 2 == 0 else (None, after):
                with b.mount(side, source if side else tar, extra=() if side else ("--index-file", index)) as m:
                    seconds = find(m.where)
                    b.record(count, "ckptfs" if side else "ratarmount", m.mount_seconds, seconds, rss_mib(m.pid))
    if full:  # ratarmount's index of a million tensors alone takes many minutes
        tar, index = tree_tar(b, million_kind(b), b.sizes.million)
        for side, source, extra in ((None, tar, ("--index-file", index)),
                                    (after, tree_safetensors(b, million_kind(b), b.sizes.million), ())):
            with b.mount(side, source, extra=extra) as m:
                seconds = find(m.where)
                b.record(b.sizes.million, "ckptfs" if side else "ratarmount", m.mount_seconds, seconds, rss_mib(m.pid))
    rows = {}
    million = b.sizes.million
    for count, hows in b.points.items():
        rows[count] = {}
        for how, points in hows.items():
            walked = [p for p in points if p[1] is not None] or points  # RSS after a walk where there was one
            rows[count][how] = [median(c) if None not in c else None for c in zip(*walked)]
    plot(rows, png, {"ckptfs": "ckptfs -o ro", "ratarmount": "ratarmount (tar of the tree)"},
         "RSS after the walk, MiB" if full else f"RSS, MiB (after the walk; {million:,}: the mount)")


GROUPS = [
    (("load-st", "load-nemo"), measure_loads),
    (("seq", "cat-first", "cat-second"), measure_cat),
    (("cpu", "find-moe", "find-dense", "mount", "rss"), measure_walks),
    (("sparse",), measure_sparse),
    (("million-mount", "million-rss"), measure_million),
    (("pread-4k", "pread-1m", "mmap"), measure_random),
    (("gzip",), measure_gzip),
    (("repack",), measure_repack),
]


# ---------------------------------------------------------------- the table


def ratios(row: Row, side: str) -> list[float]:
    """The rounds' ratios of `side` to the reference (speed rows: ckptfs's
    rate over the reference's; time rows: ckptfs's time over the reference's)."""
    return [a / r for a, r in zip(row.samples.get(side, []), row.samples.get("ref", []))]


def judged(row: Row, side: str) -> float | None:
    """What the target holds the side to: the median ratio, or the median value."""
    values = ratios(row, side) if row.ratio else row.samples.get(side, [])
    return median(values) if values else None


def met(row: Row, side: str) -> str:
    value = judged(row, side)
    if value is None:
        return "—"
    return "yes" if (value >= row.target if row.ratio == "speed" else value <= row.target) else "no"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 0.1 else 3
    return f"{value:,.{digits}f}{' ' + unit if unit else ''}"


def table(rows: list[Row], sides: list[str]) -> list[str]:
    before = len(sides) == 2
    head = ["row", *(["before", "after"] if before else ["ckptfs"]), "reference",
            *(["ratio before", "ratio after", "after ÷ before"] if before else ["ratio"]), "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        what = row.what + (f" ({row.note})" if row.note else "")
        if row.failed:
            lines.append(f"| {what} | failed: {row.failed} |" + " |" * (len(head) - 2))
            continue
        values = [fmt(median(row.samples[s]) if row.samples.get(s) else None, row.unit) for s in sides]
        ref = f"{row.reference} {fmt(median(row.samples['ref']), row.unit)}" if row.ratio else "—"
        shown = [f"{fmt(judged(row, s))}×" if row.ratio and judged(row, s) is not None else "—" for s in sides]
        if before:
            a, b = (median(row.samples[s]) if row.samples.get(s) else None for s in sides)
            shown.append(f"{fmt(b / a)}×" if a and b is not None else "—")
        sign = "≥" if row.ratio == "speed" else "≤"
        target = f"{sign} {fmt(row.target)}×" if row.ratio else f"{sign} {fmt(row.target, row.unit)}"
        lines.append(f"| {what} | " + " | ".join([*values, ref, *shown, target, met(row, sides[-1])]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller files and trees, fewer rounds: a few minutes")
    keys = [row.key for row in rows_for(Sizes())]
    parser.add_argument("--rounds", type=int, help="rounds of every row, the walks' too (default 3, walks 2)")
    parser.add_argument("--only", nargs="+", choices=keys, metavar="ROW", help="these rows: " + ", ".join(keys))
    parser.add_argument("--before", type=Path, help="a checkout of an older commit, measured beside this tree")
    parser.add_argument("--before-python", default=sys.executable, help="the interpreter of the --before side")
    parser.add_argument("--mode", choices=["ro", "rw"], default="ro", help="how the read rows mount (default ro)")
    parser.add_argument("--ratarmount", default=shutil.which("ratarmount"), help="the peer (default: on PATH)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/ckptfs-bench-targets"))
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints for the next run")
    parser.add_argument("--plot", type=Path, help="draw mount, walk and RSS against the tensor count as a PNG")
    parser.add_argument("--full", action="store_true", help="with --plot: walk the million tensors too")
    args = parser.parse_args()
    if args.before and not (args.before / "ckptfs" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no ckptfs/ there (a checkout of the repository)")
    sizes = QUICK if args.quick else Sizes()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds, walk_rounds=args.rounds)
    b = Bench(args, sizes)
    rows = rows_for(sizes)
    by_key = {row.key: row for row in rows}
    started = time.time()
    try:
        for keys_, measure in GROUPS:
            if b.wants(*keys_):
                run_group(b, keys_, measure, by_key)
        if args.plot:
            run_group(b, ("plot",), lambda b, _: draw(b, args.plot, args.full), by_key)
    finally:
        b.cleanup(args.keep)
    lines = [f"bench/targets.py{' --quick' if args.quick else ''}: medians of {sizes.rounds} rounds "
             f"({sizes.walk_rounds} for the walks), {(time.time() - started) / 60:.1f} minutes", "",
             *table([r for r in rows if b.wants(r.key)], [s.name for s in b.sides])]
    print("\n".join(lines), flush=True)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "targets.md").write_text("\n".join(lines) + "\n")


def run_group(b: Bench, keys: tuple, measure, by_key: dict) -> None:
    """One group of rows; a failure marks its rows failed with a one-line reason, and the run goes on."""
    start = time.time()
    print(f"== {', '.join(keys)}", file=sys.stderr, flush=True)
    try:
        measure(b, by_key)
    except Exception as e:  # noqa: BLE001 - the row says why, the other rows go on
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
        if isinstance(e, subprocess.CalledProcessError):
            reason = f"{Path(str(e.cmd[0])).name} {e.cmd[1] if len(e.cmd) > 1 else ''} exited {e.returncode}: " \
                     + ((e.stderr or "").strip().splitlines() or [""])[-1][:120]
        if keys == ("plot",):
            print(f"the plot failed: {reason}", flush=True)
        for key in set(keys) & set(by_key):
            by_key[key].failed = f"{type(e).__name__}: {reason}".replace("|", "/")
        b.unmount_all()
    print(f"   {time.time() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
