"""Side-by-side benchmark of ckptfs mounts (issue: core read-only mounts).

    .venv/bin/python bench/run.py [--gib 1] [--tensors 1000] [--workdir DIR] [--only core|dcp]

Generates checkpoints of about `--gib` GiB with `--tensors` tensors (one large
tensor, the rest small) as .safetensors, as a plain .nemo tar and as a gzip
.nemo, plus small twins with the same tensor names, then measures in one run:
mount + find, first and second sequential reads, the effect of read_ahead_kb,
daemon peak RSS, ratarmount and `cat` on the same files, and the gzip seek
index against `tar xzf`. Then distributed checkpoints written by gloo ranks
(bench/dcp_writer.py): mount time of 1,000 tensors in 8 shards, and reads of
row- and column-sharded tensors against a same-size `.safetensors` tensor.
Then writable mounts: a one-line config edit of the big `.nemo`, and its
largest tensor replaced, each repacked on unmount, against `cp` + `sync`
(and `tar xf` / edit / `tar cf` for the config).
Prints a Markdown report (docs/benchmarks.md), also kept in bench/out/latest.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from scale import daemon_pid  # bench/ is the script's folder

CKPTFS = [sys.executable, "-m", "ckptfs"]
RATARMOUNT = [shutil.which("ratarmount") or "ratarmount"]  # --ratarmount sets it
BIG_NAME = "model.embed_tokens.weight"
MiB = 1 << 20


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, timeout=1800, **kw)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- generation


def state_dict(gib: float, count: int, small: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    big_rows = 4 if small else int(gib * (1 << 30) / 2 / 4096)  # half of the bytes in one tensor
    small_elems = 4 if small else int(gib * (1 << 30) / 2 / (count - 1) / 4)
    tensors = {BIG_NAME: rng.standard_normal((big_rows, 1024), dtype=np.float32)}
    for i in range(count - 1):
        tensors[f"model.layers.{i // 10}.block{i % 10}.weight"] = rng.standard_normal(small_elems, dtype=np.float32)
    return tensors


def make_checkpoints(work: Path, gib: float, count: int) -> dict[str, Path]:
    import torch
    from safetensors.numpy import save_file

    paths = {}
    for size in ("big", "small"):
        tensors = state_dict(gib, count, small=size == "small")
        st = work / f"{size}.safetensors"
        save_file(tensors, str(st))
        pt, nemo = work / f"{size}.pt", work / f"{size}.nemo"
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, pt)
        write_nemo(nemo, pt)
        paths[f"{size}.safetensors"], paths[f"{size}.nemo"], paths[f"{size}.pt"] = st, nemo, pt
        del tensors
    gz = work / "big.gz.nemo"
    with open(gz, "wb") as out:
        subprocess.run(["gzip", "-1", "-c", str(paths["big.nemo"])], stdout=out, check=True)
    paths["big.gz.nemo"] = gz
    return paths


def write_nemo(nemo: Path, pt: Path) -> None:
    """A .nemo tar of a one-line config and the torch.save file `pt`, the way NeMo >= 1.7 writes."""
    config = b"precision: 32\n"
    with tarfile.open(nemo, "w:") as tf:
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = len(config)
        tf.addfile(info, io.BytesIO(config))
        tf.add(pt, arcname="./model_weights.ckpt")


# ---------------------------------------------------------------- mounts


class Mount:
    def __init__(self, source: Path, where: Path, cache: Path, *options: str):
        self.source_path, self.where = source, where
        where.mkdir(parents=True, exist_ok=True)
        mount_options = ["-o", ",".join(options)] if options else []
        self.mount_seconds = timed(lambda: sh(*CKPTFS, "mount", source, where, "--cache-dir", cache, *mount_options))

    def pid(self) -> int:
        return daemon_pid(self.where, b"ckptfs")

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.pid()}/status").read_text()
        kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        return kb / 1024

    def set_read_ahead(self, kb: int) -> None:
        device = sh("mountpoint", "-d", self.where).stdout.strip()
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(kb))

    def close(self) -> None:
        sh(*CKPTFS, "umount", self.where)


def read_all(path: Path) -> tuple[float, int]:
    """Sequential read with 1 MiB requests, like cat; (seconds, bytes)."""
    fd = os.open(path, os.O_RDONLY)
    total = 0
    start = time.perf_counter()
    try:
        while chunk := os.read(fd, MiB):
            total += len(chunk)
    finally:
        os.close(fd)
    return time.perf_counter() - start, total


def random_reads(path: Path, count: int = 100, length: int = MiB) -> float:
    size = os.path.getsize(path)
    rng = random.Random(0)
    fd = os.open(path, os.O_RDONLY)
    try:
        return timed(lambda: [os.pread(fd, length, rng.randrange(size - length)) for _ in range(count)])
    finally:
        os.close(fd)


def npy_path(mnt: Path, name: str) -> Path:
    return mnt.joinpath(*name.split(".")).with_suffix(".npy")


# ---------------------------------------------------------------- the report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/ckptfs-bench"))
    parser.add_argument("--only", choices=["core", "dcp", "write"], help="run one part: core formats, DCP, or repack")
    parser.add_argument("--ratarmount", help="the peer's executable (default: on PATH)")
    args = parser.parse_args()
    if args.ratarmount:
        RATARMOUNT[0] = args.ratarmount
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    lines: list[str] = []
    out = lambda text="": (print(text, flush=True), lines.append(text))  # noqa: E731
    try:
        out(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, kernel {platform.release()}.")
        out()
        if args.only in (None, "core", "write"):
            paths = make_checkpoints(work, args.gib, args.tensors)
        if args.only in (None, "core"):
            cold = drop_caches()
            out(f"Checkpoints of {args.tensors} tensors, big = {paths['big.safetensors'].stat().st_size / 1e9:.2f} GB, "
                f"small = {paths['small.safetensors'].stat().st_size / 1e6:.2f} MB; "
                f"page cache {'dropped before each cold read' if cold else 'could not be dropped (reads are warm)'}.")
            out()
            report_mount_find(paths, work, out)
            report_reads(paths, work, cold, out)
            report_gzip(paths, work, out)
            out()
        if args.only in (None, "dcp"):
            report_dcp(work, out)
            out()
        if args.only in (None, "write"):
            report_repack(paths, work, out)
    finally:
        for m in work.glob("mnt*"):
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    Path(__file__).with_name("out").mkdir(exist_ok=True)
    Path(__file__).with_name("out").joinpath("latest.md").write_text("\n".join(lines) + "\n")


ROUNDS = 5


def report_mount_find(paths, work, out) -> None:
    keys = ("big.safetensors", "small.safetensors", "big.pt", "small.pt", "big.nemo", "small.nemo")
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in keys}
    entries = {}
    for i in range(ROUNDS):  # interleaved, so that noise falls on every row alike
        for key in keys:
            m = Mount(paths[key], work / f"mnt-find-{key}-{i}", work / "cache")
            start = time.perf_counter()
            entries[key] = len(sh("find", m.where).stdout.splitlines())
            find_seconds = time.perf_counter() - start
            runs[key].append((m.mount_seconds + find_seconds, m.mount_seconds, find_seconds))
            m.close()
    out(f"| mount + `find` (median of {ROUNDS}, interleaved) | mount s | find s | total s | entries |")
    out("| --- | --- | --- | --- | --- |")
    for key in keys:
        total, mount_s, find_s = sorted(runs[key])[ROUNDS // 2]
        out(f"| {key} | {mount_s:.2f} | {find_s:.2f} | {total:.2f} | {entries[key]} |")
    out()


def read_cells(cold: bool, open_mount, path_in) -> tuple[list[float], float]:
    """GB/s of a cold first read (page cache dropped), a first read with the
    source warm in the page cache, and a second read; fresh mounts."""
    speeds = []
    rss = 0.0
    if cold:
        mount = open_mount()
        drop_caches()
        speeds.append(rate(read_all(path_in(mount))))
        rss = max(rss, mount.peak_rss_mib())
        mount.close()
    mount = open_mount()
    read_all(mount.source_path)  # warm the source file
    speeds.append(rate(read_all(path_in(mount))))
    speeds.append(rate(read_all(path_in(mount))))
    rss = max(rss, mount.peak_rss_mib())
    mount.close()
    return speeds, rss


def rate(seconds_bytes: tuple[float, int]) -> float:
    seconds, nbytes = seconds_bytes
    return nbytes / seconds / 1e9


class Plain:
    """The source file itself, as `cat` reads it."""

    def __init__(self, path: Path):
        self.source_path = path

    def peak_rss_mib(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


class Ratarmount:
    def __init__(self, source: Path, where: Path, index: Path):
        self.source_path, self.where = source, where
        where.mkdir(parents=True, exist_ok=True)
        sh(*RATARMOUNT, "--index-file", index, source, where)

    def peak_rss_mib(self) -> float:
        return 0.0

    def close(self) -> None:
        sh("fusermount3", "-u", self.where)


def report_reads(paths, work, cold, out) -> None:
    counter = iter(range(10_000))

    def ckptfs(key, read_ahead_kb=None):
        def open_mount():
            m = Mount(paths[key], work / f"mnt-read-{next(counter)}", work / "cache")
            if read_ahead_kb:
                m.set_read_ahead(read_ahead_kb)
            return m

        return open_mount

    def ratarmount():
        return Ratarmount(paths["big.nemo"], work / f"mnt-rat-{next(counter)}", work / "rat.sqlite")

    tensor = lambda m: npy_path(m.where, BIG_NAME)  # noqa: E731
    member = lambda m: m.where / ".ckptfs" / "raw" / "model_weights.ckpt"  # noqa: E731
    nested = lambda m: npy_path(m.where / "model_weights.ckpt", BIG_NAME)  # noqa: E731
    in_pt = lambda m: npy_path(m.where, BIG_NAME)  # noqa: E731
    rows = [
        ("`cat` big.safetensors (the whole file)", lambda: Plain(paths["big.safetensors"]), lambda m: m.source_path, cold),
        ("ckptfs big.safetensors, largest tensor (.npy)", ckptfs("big.safetensors"), tensor, cold),
        ("same, read_ahead_kb left at the kernel's 128", ckptfs("big.safetensors", 128), tensor, False),
        ("`cat` big.nemo (the whole file)", lambda: Plain(paths["big.nemo"]), lambda m: m.source_path, cold),
        ("ckptfs big.pt (torch.save), largest tensor (.npy)", ckptfs("big.pt"), in_pt, cold),
        ("ckptfs big.nemo, largest tensor inside `model_weights.ckpt`", ckptfs("big.nemo"), nested, cold),
        ("ckptfs big.nemo, raw `model_weights.ckpt` member", ckptfs("big.nemo"), member, cold),
        ("ratarmount big.nemo, same member", ratarmount, lambda m: m.where / "model_weights.ckpt", cold),
    ]
    speeds: dict[str, list[list[float]]] = {label: [] for label, *_ in rows}
    rss = 0.0
    for _ in range(3):  # interleaved rounds; medians below
        for label, open_mount, path_in, with_cold in rows:
            cells, peak = read_cells(with_cold, open_mount, path_in)
            speeds[label].append(cells if with_cold else [float("nan")] + cells)
            if label.startswith("ckptfs") or label.startswith("same"):
                rss = max(rss, peak)
    out("| sequential read, 1 MiB requests (GB/s, median of 3) | cold | first read, source warm | second read |")
    out("| --- | --- | --- | --- |")
    for label, *_ in rows:
        medians = [statistics.median(col) for col in zip(*speeds[label], strict=True)]
        out(f"| {label} | " + " | ".join("—" if m != m else f"{m:.2f}" for m in medians) + " |")
    out()
    out(f"Daemon peak RSS (VmHWM) over the ckptfs reads above: **{rss:.0f} MiB**.")
    out()


def report_gzip(paths, work, out) -> None:
    gz = paths["big.gz.nemo"]
    out(f"| gzip .nemo ({gz.stat().st_size / 1e9:.2f} GB compressed) | seconds |")
    out("| --- | --- |")
    first = Mount(gz, work / "mnt-gz-1", work / "gzcache")
    out(f"| ckptfs first mount (inflates once, writes the seek index) | {first.mount_seconds:.2f} |")
    first.close()
    second = Mount(gz, work / "mnt-gz-2", work / "gzcache")
    out(f"| ckptfs second mount (seek index from disk) | {second.mount_seconds:.2f} |")
    rat_seconds = []
    for i in range(2):  # the first builds ratarmount's index, the second reads it
        where = work / f"mnt-gz-rat-{i}"
        where.mkdir()
        rat_seconds.append(timed(lambda: sh(*RATARMOUNT, "--index-file", work / "gz.sqlite", gz, where)))  # noqa: B023
        sh("fusermount3", "-u", where)
    out(f"| ratarmount first mount / second mount (index from disk) | {rat_seconds[0]:.2f} / {rat_seconds[1]:.2f} |")
    out(f"| ckptfs second mount ÷ ratarmount's | {second.mount_seconds / rat_seconds[1]:.2f} |")
    member = second.where / ".ckptfs" / "raw" / "model_weights.ckpt"
    out(f"| ckptfs 100 random 1 MiB reads of `model_weights.ckpt` | {random_reads(member):.2f} |")
    out(f"| ckptfs sequential read of `model_weights.ckpt` | {read_all(member)[0]:.2f} |")
    rss = second.peak_rss_mib()
    second.close()
    extracted = work / "extracted"
    extracted.mkdir()
    out(f"| `tar xzf` (what users do today) | {timed(lambda: sh('tar', 'xzf', gz, '-C', extracted)):.2f} |")
    out(f"| 100 random 1 MiB reads of the extracted file | {random_reads(extracted / 'model_weights.ckpt'):.2f} |")
    out()
    out(f"Daemon peak RSS serving the gzip source: **{rss:.0f} MiB**.")



def report_dcp(work: Path, out) -> None:
    """Distributed checkpoints: mount time and sharded reads (issue 4's targets)."""
    from safetensors.numpy import save_file

    writer = Path(__file__).with_name("dcp_writer.py")
    many, big = work / "dcp-many", work / "dcp-big"
    sh(sys.executable, writer, many, 8, "many", "29731")
    sh(sys.executable, writer, big, 2, "big", "29732")
    twin = work / "dcp-twin.safetensors"  # one tensor the size of each sharded one
    save_file({"t": np.random.default_rng(1).standard_normal((1 << 16, 1024), dtype=np.float32)}, str(twin))
    metadata_mb = (many / ".metadata").stat().st_size / 1e6
    mounts = []
    for i in range(ROUNDS):
        m = Mount(many, work / f"mnt-dcp-many-{i}", work / "cache")
        mounts.append(m.mount_seconds)
        m.close()
    mounts.sort()
    out(f"| distributed checkpoint, 1,000 tensors x 8 shards ({metadata_mb:.1f} MB `.metadata`) | seconds |")
    out("| --- | --- |")
    out(f"| `ckptfs mount`, median of {ROUNDS} (range) | {mounts[ROUNDS // 2]:.2f} ({mounts[0]:.2f}-{mounts[-1]:.2f}) |")
    out()
    rows = [
        ("`.safetensors` tensor, 268 MB", twin, "t.npy"),
        ("DCP row-sharded (Shard(0)) over 2 ranks, 268 MB", big, "rows.npy"),
        ("DCP column-sharded (Shard(1)) over 2 ranks, 268 MB", big, "cols.npy"),
    ]
    speeds: dict[str, list[float]] = {label: [] for label, *_ in rows}
    counter = iter(range(10_000))
    for _ in range(ROUNDS):  # interleaved; a fresh mount for each first read, sources warm
        for label, source, name in rows:
            m = Mount(source, work / f"mnt-dcp-read-{next(counter)}", work / "cache")
            read_all(source if source.is_file() else source / "__0_0.distcp")
            if not source.is_file():
                read_all(source / "__1_0.distcp")
            speeds[label].append(rate(read_all(m.where / name)))
            m.close()
    reference = statistics.median(speeds[rows[0][0]])
    out(f"| first read through a fresh mount, source warm (median of {ROUNDS}) | GB/s | ÷ `.safetensors` |")
    out("| --- | --- | --- |")
    for label, *_ in rows:
        median = statistics.median(speeds[label])
        out(f"| {label} | {median:.2f} | {median / reference:.2f} |")



def report_repack(paths, work: Path, out, rounds: int = 5) -> None:
    """Two edits of a 1 GB .nemo, each repacked by `ckptfs umount`: one line
    of its config, and the largest tensor replaced by another of its shape;
    against `cp` + `sync` of the file (and, for the config, NeMo's documented
    tar route). The disk of these machines varies from minute to minute, and
    the first large write after the round's setup runs up to 3x slower
    whoever makes it; so each round first makes an untimed `cp` + `sync`,
    then times ckptfs and `cp` back to back (which goes first alternates),
    and the ratio is the median of the rounds' ratios."""
    nemo = paths["big.nemo"]
    size_gb = nemo.stat().st_size / 1e9
    big = lambda where: npy_path(where / "model_weights.ckpt", BIG_NAME)  # noqa: E731

    def edit_config(where: Path) -> None:
        sh("sed", "-i", "s/precision: 32/precision: 16/", where / "model_config.yaml")

    def check_config(copy: Path) -> None:
        with tarfile.open(copy) as tf:
            assert tf.extractfile("./model_config.yaml").read() == b"precision: 16\n"

    def replace_tensor(where: Path) -> None:
        shape = np.load(big(where), mmap_mode="r").shape
        np.save(big(where), np.full(shape, 7, np.float32))

    def check_tensor(copy: Path) -> None:
        m = Mount(copy, work / "mnt-check", work / "cache", "ro")
        assert np.load(big(m.where), mmap_mode="r")[-1, -1] == 7
        m.close()

    edits = [
        ("one-line config edit", edit_config, check_config, True),
        ("the largest tensor replaced by one of its shape", replace_tensor, check_tensor, False),
    ]
    for what, edit, check, with_tar in edits:
        _repack_rows(nemo, size_gb, what, edit, check, with_tar, work, out, rounds)


def _repack_rows(nemo, size_gb, what, edit, check, with_tar, work, out, rounds) -> None:
    import threading

    runs: dict[str, list[float]] = {"ckptfs": [], "cp": [], "tar": []}
    peak_rss = 0.0
    for i in range(rounds):
        copy = work / f"edit-{i}.nemo"
        shutil.copy(nemo, copy)
        sh("sync")
        m = Mount(copy, work / f"mnt-edit-{i}", work / "cache")
        edit(m.where)
        pid = m.pid()
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    samples.append(int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024)
                except (OSError, StopIteration):
                    return
                time.sleep(0.01)

        def repack() -> None:
            sampler = threading.Thread(target=sample)
            sampler.start()
            runs["ckptfs"].append(timed(lambda: (m.close(), sh("sync"))))  # noqa: B023
            stop.set()
            sampler.join()

        def cp() -> None:
            runs["cp"].append(timed(lambda: (sh("cp", nemo, work / "cp.nemo"), sh("sync"))))
            (work / "cp.nemo").unlink()

        sh("cp", nemo, work / "warm-up.nemo")
        sh("sync")
        (work / "warm-up.nemo").unlink()
        for step in (repack, cp) if i % 2 == 0 else (cp, repack):
            step()
        peak_rss = max([peak_rss, *samples])
        check(copy)
        copy.unlink()
        if with_tar:
            unpacked = work / "unpacked"
            unpacked.mkdir()

            def tar_route() -> None:
                sh("tar", "xf", nemo, "-C", unpacked)  # noqa: B023
                sh("sed", "-i", "s/precision: 32/precision: 16/", unpacked / "model_config.yaml")  # noqa: B023
                sh("tar", "cf", work / "tar.nemo", "-C", unpacked, ".")  # noqa: B023
                sh("sync")

            runs["tar"].append(timed(tar_route))
            shutil.rmtree(unpacked)
            (work / "tar.nemo").unlink()
    ratio = statistics.median(a / b for a, b in zip(runs["ckptfs"], runs["cp"]))
    ckptfs_s, cp_s = (statistics.median(runs[k]) for k in ("ckptfs", "cp"))
    out(f"| {what} of a {size_gb:.2f} GB .nemo ({rounds} rounds) | median seconds | median of the rounds' ratios to `cp` + `sync` |")
    out("| --- | --- | --- |")
    out(f"| ckptfs: the edit in the mount, then `ckptfs umount` (repack) + `sync` | {ckptfs_s:.2f} | {ratio:.2f} |")
    out(f"| `cp` of the file + `sync` | {cp_s:.2f} | 1.00 |")
    if with_tar:
        tar_ratio = statistics.median(a / b for a, b in zip(runs["tar"], runs["cp"]))
        out(f"| `tar xf`, `sed -i`, `tar cf` + `sync` (NeMo's documented route) | {statistics.median(runs['tar']):.2f} | {tar_ratio:.2f} |")
    out()
    each = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(runs["ckptfs"], runs["cp"]))
    out(f"Each round, ckptfs/`cp` seconds: {each}.")
    out()
    out(f"Daemon peak RSS during the repack (sampled every 10 ms): **{peak_rss:.0f} MiB**.")
    out()


if __name__ == "__main__":
    main()
