"""Side-by-side benchmark of the commands that need no mount (issue 15), and
of the export view.

    .venv/bin/python bench/tools.py [--rounds 5] [--workdir DIR] [--only info|export|view]

- `ckptfs info` of a 100 GB sparse safetensors of 5,000 tensors against
  `safe_open(...).keys()`, and of a 1,000-tensor torch.save file against
  `torch.load(mmap=True)` + its keys: each as a command (a fresh Python, as
  a user runs it) and in one process (the libraries alone, imports done).
- `ckptfs export --to safetensors` (and `--to torch`) of a 1 GiB
  distributed checkpoint written by 4 gloo ranks, against
  `torch.distributed.checkpoint.format_utils.dcp_to_torch_save`: seconds and
  peak RSS of each process.
- `cp` of the mount's `.ckptfs/export/model.safetensors` of the same
  checkpoint (the first read after mounting: chunks assembled on read),
  then `cat` of it again, against `cp` and `cat` of its shards, and the
  daemon's peak RSS.

Rounds are interleaved and medians reported; the page cache is warm for
every contender (each reads the same bytes). Prints Markdown
(docs/benchmarks.md), also kept in bench/out/tools.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale import daemon_pid, moe_names, sparse_safetensors  # bench/ is the script's folder

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent


#: runs a command and reports its peak RSS. Linux counts in a child's peak the RSS of the process it was
#: forked from (this one holds torch): a launcher of a few MiB forks it instead.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(*cmd) -> tuple[float, float]:
    """Run a command: (seconds, its peak RSS in MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, cmd)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {done.returncode}: {done.stderr[-2000:]}")
    return seconds, int(done.stderr.split()[-1]) / 1024


def median(values) -> float:
    return statistics.median(values)


def rounds_and_folder(doc: str, name: str) -> tuple[argparse.Namespace, Path, bool]:
    """A benchmark's `--rounds` and `--workdir` (default: a new temporary
    folder, `ckptfs-bench-NAME-*`): (the arguments, the folder, whether it
    is temporary, to be removed after the run)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"ckptfs-bench-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    return args, work, args.workdir is None


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# ---------------------------------------------------------------- info

def torch_file(path: Path, count: int = 1000) -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    torch.save({name: torch.randn(64, 64, generator=gen) for name in moe_names(count)}, path)


def in_process(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def report_info(work: Path, rounds: int, out) -> None:
    from ckptfs import info as checkpoint_info
    from ckptfs.formats import open_checkpoint
    from ckptfs.sources.cachedir import default_cache_dir

    sparse, pt = work / "sparse.safetensors", work / "tensors.pt"
    sparse_safetensors(sparse)
    torch_file(pt)
    peers = {
        sparse: ("`safe_open(...).keys()`", f"from safetensors import safe_open\nwith safe_open({str(sparse)!r}, "
                 "'np') as f: print(len(list(f.keys())))"),
        pt: ("`torch.load(mmap=True)` + keys", f"import torch\nprint(len(list(torch.load({str(pt)!r}, mmap=True, "
             "weights_only=True))))"),
    }
    out("### `ckptfs info` against the libraries")
    out()
    out("| file | `ckptfs info`, s | peer | peer, s | ratio | in one process: ckptfs, ms | peer, ms | ratio |")
    out("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path, (peer, code) in peers.items():
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(run(*CKPTFS, "info", path)[0])
            theirs.append(run(*python(code))[0])
        our_call = lambda: checkpoint_info.summary(open_checkpoint(str(path), default_cache_dir()))  # noqa: E731
        if path == sparse:
            from safetensors import safe_open

            def their_call():
                with safe_open(str(path), "np") as f:
                    list(f.keys())
        else:
            import torch

            def their_call():
                list(torch.load(path, mmap=True, weights_only=True))
        our_call(), their_call()  # imports and first-time costs out of the way
        a, b = in_process(our_call, rounds) * 1e3, in_process(their_call, rounds) * 1e3
        label = f"{path.stat().st_size / 1e9:.0f} GB sparse safetensors, 5,000 tensors" if path == sparse \
            else f"torch.save zip, 1,000 tensors ({path.stat().st_size / 1e6:.0f} MB)"
        out(f"| {label} | {median(ours):.2f} | {peer} | {median(theirs):.2f} | {median(ours) / median(theirs):.2f}x "
            f"| {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    out()
    out(f"Medians of {rounds} interleaved rounds. A command's seconds include starting Python "
        "(and, for the peer, importing its library: torch alone takes most of a second).")
    out()


# ---------------------------------------------------------------- export

def gib_checkpoint(work: Path) -> Path:
    path = work / "dcp-gib"
    if not (path / ".metadata").exists():
        subprocess.run([sys.executable, HERE / "dcp_writer.py", path, "4", "gib", "29741"], check=True, timeout=1800)
    return path


def report_export(work: Path, rounds: int, out) -> None:
    source = gib_checkpoint(work)
    size = sum(f.stat().st_size for f in source.iterdir())
    outputs = work / "exports"
    contenders = {
        "`ckptfs export --to safetensors`": lambda o: run(*CKPTFS, "export", source, o / "out.safetensors"),
        "`ckptfs export --to torch`": lambda o: run(*CKPTFS, "export", source, o / "out.pt", "--to", "torch"),
        "`dcp_to_torch_save`": lambda o: run(*python(
            "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
            f"dcp_to_torch_save({str(source)!r}, {str(o / 'ref.pt')!r})")),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    run("cat", *sorted(source.iterdir()))  # warm: every contender reads the same bytes
    for _ in range(rounds):
        for name, contender in contenders.items():
            shutil.rmtree(outputs, ignore_errors=True)
            outputs.mkdir()
            results[name].append(contender(outputs))
    shutil.rmtree(outputs, ignore_errors=True)
    ref_seconds = median(s for s, _ in results["`dcp_to_torch_save`"])
    ref_rss = median(r for _, r in results["`dcp_to_torch_save`"])
    out(f"### Consolidating a {size / 2**30:.2f} GiB distributed checkpoint (4 ranks, 8 tensors sharded by rows "
        "and columns)")
    out()
    out("| | s | ÷ `dcp_to_torch_save` | peak RSS, MiB | ÷ `dcp_to_torch_save` |")
    out("| --- | --- | --- | --- | --- |")
    for name, values in results.items():
        seconds, rss = median(s for s, _ in values), median(r for _, r in values)
        out(f"| {name} | {seconds:.2f} | {seconds / ref_seconds:.2f}x | {rss:.0f} | {rss / ref_rss:.2f}x |")
    out()
    out(f"Medians of {rounds} interleaved rounds, page cache warm, outputs on the same disk; RSS is each "
        "process's peak (`wait4`).")
    out()


def report_view(work: Path, rounds: int, out) -> None:
    source = gib_checkpoint(work)
    shards = sorted(source.glob("*.distcp"))
    mnt = work / "mnt-view"
    mnt.mkdir(exist_ok=True)
    view = mnt / ".ckptfs" / "export" / "model.safetensors"
    copies = work / "copies"
    results: dict[str, list[float]] = {}
    peaks = []

    def timed(name: str, *cmd) -> None:
        results.setdefault(name, []).append(run(*cmd)[0])

    run("cat", *shards)  # warm: the view reads the shards' bytes from the page cache too
    reads = {
        "`cat` of the view, first read after mount": lambda: ["sh", "-c", f"cat '{view}' > /dev/null"],
        "`cp` of the view, first read after mount": lambda: ["cp", view, copies / "model.safetensors"],
        "`cat` of the mount's tensor files, first read after mount": lambda: [
            "sh", "-c", 'cat "$@" > /dev/null', "cat", *sorted(str(p) for p in (mnt / "model").rglob("*.npy"))],
    }
    for _ in range(rounds):
        for name, command in reads.items():
            shutil.rmtree(copies, ignore_errors=True)
            copies.mkdir()
            subprocess.run([*CKPTFS, "mount", "-o", "ro", source, mnt], check=True, timeout=120)
            try:
                pid = daemon_pid(mnt, b"ckptfs")
                size = view.stat().st_size
                timed(name, *command())
                if name.startswith("`cat` of the view"):
                    timed("`cat` of the view, read again (kernel page cache)", "sh", "-c", f"cat '{view}' > /dev/null")
                status = Path(f"/proc/{pid}/status").read_text()
                peaks.append(int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024)
            finally:
                subprocess.run([*CKPTFS, "umount", mnt], timeout=120)
        shutil.rmtree(copies, ignore_errors=True)
        copies.mkdir()
        timed("`cp` of the shards", "cp", *shards, copies)
        timed("`cat` of the shards", "sh", "-c", "cat " + " ".join(f"'{s}'" for s in shards) + " > /dev/null")
    shutil.rmtree(copies, ignore_errors=True)
    out(f"### Reading `.ckptfs/export/model.safetensors` of the same checkpoint ({size / 2**30:.2f} GiB)")
    out()
    out("| | s | GB/s | ÷ the same on the shards |")
    out("| --- | --- | --- | --- |")
    base = {"cp": median(results["`cp` of the shards"]), "cat": median(results["`cat` of the shards"])}
    for name, values in results.items():
        seconds, tool = median(values), name.split("`")[1]
        out(f"| {name} | {seconds:.2f} | {size / seconds / 1e9:.2f} | {seconds / base[tool]:.2f}x |")
    out()
    out(f"Medians of {rounds} interleaved rounds, a fresh mount each, the shards in the page cache; `cat` "
        f"writes to /dev/null. The daemon's peak RSS: {median(peaks):.0f} MiB.")
    out()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", choices=["info", "export", "view"])
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-tools-"))
    work.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    out(f"## Without a mount (`bench/tools.py`, {time.strftime('%Y-%m-%d %H:%M')})")
    out()
    try:
        if args.only in (None, "info"):
            report_info(work, args.rounds, out)
        if args.only in (None, "export"):
            report_export(work, args.rounds, out)
        if args.only in (None, "view"):
            report_view(work, args.rounds, out)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results = HERE / "out"
    results.mkdir(exist_ok=True)
    (results / "tools.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
