"""Side-by-side benchmark of GGUF files (issue 16).

    .venv/bin/python bench/gguf_bench.py [--rounds 5] [--workdir DIR]

Writes a GGUF of about 1 GiB with the gguf package's GGUFWriter (300 tensors:
F16, F32 and Q8_0, a llama-like naming), then measures in one run: mount +
`find` against `gguf-dump` (gguf's own dump of metadata and tensor list),
and a read of a Q8_0 tensor's `dequantized.npy` through the mount against
`gguf.quants.dequantize` of the same tensor in one process (reading it from
the file included). Prints Markdown (docs/benchmarks.md), also kept in
bench/out/gguf.md.
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

import numpy as np

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent
BIG = "blk.0.ffn_up.weight"


def write_model(path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.context_length", 4096)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(32000)])
    w.add_array("tokenizer.ggml.scores", [float(i) for i in range(32000)])
    big = quants.quantize(rng.standard_normal((8192, 4096)).astype(np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor(BIG, big, raw_shape=big.shape, raw_dtype=GGMLQuantizationType.Q8_0)  # 34 MiB, 128 MiB dequantized
    block = rng.standard_normal((2048, 1024)).astype(np.float16)
    for layer in range(1, 151):
        w.add_tensor(f"blk.{layer}.attn_q.weight", block)  # 4 MiB each
        w.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(4096, np.float32))
    w.add_tensor("token_embd.weight", rng.standard_normal((32000, 4096)).astype(np.float16))  # 250 MiB
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def timed(*cmd) -> float:
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptfs-bench-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    model, mnt = work / "model.gguf", work / "mnt"
    mnt.mkdir(exist_ok=True)
    if not model.exists():
        write_model(model)
    dump = shutil.which("gguf-dump", path=str(Path(sys.executable).parent)) or "gguf-dump"
    subprocess.run(["cat", model], check=True, stdout=subprocess.DEVNULL)  # warm: both read from the page cache
    mount_find, dumps, reads, references = [], [], [], []
    code = ("import sys, time, numpy as np\nfrom gguf import GGUFReader, quants\nstart = time.perf_counter()\n"
            f"t = next(t for t in GGUFReader(sys.argv[1]).tensors if t.name == {BIG!r})\n"
            "quants.dequantize(t.data, t.tensor_type).tobytes()\nprint(time.perf_counter() - start)")
    for _ in range(args.rounds):
        start = time.perf_counter()
        subprocess.run([*CKPTFS, "mount", "-o", "ro", model, mnt], check=True, timeout=120)
        try:
            subprocess.run(["find", mnt], check=True, stdout=subprocess.DEVNULL, timeout=600)
            mount_find.append(time.perf_counter() - start)
            reads.append(timed("cat", mnt.joinpath(*BIG.split("."), "dequantized.npy")))
        finally:
            subprocess.run([*CKPTFS, "umount", mnt], timeout=120)
        dumps.append(timed(dump, model))
        done = subprocess.run([sys.executable, "-c", code, model], check=True, capture_output=True, text=True)
        references.append(float(done.stdout))
    lines = [f"## GGUF (`bench/gguf_bench.py`, {time.strftime('%Y-%m-%d %H:%M')})", "",
             f"A {model.stat().st_size / 2**30:.2f} GiB GGUF written by GGUFWriter: 302 tensors (F16, F32, one "
             "Q8_0 of 8192 x 4096) and a 32,000-token vocabulary.", "",
             "| | s | ratio |", "| --- | --- | --- |"]
    median = statistics.median
    lines.append(f"| ckptfs mount + `find` | {median(mount_find):.2f} | {median(mount_find) / median(dumps):.2f}x |")
    lines.append(f"| `gguf-dump` | {median(dumps):.2f} | 1.00x |")
    lines.append(f"| `cat` of the Q8_0 tensor's `dequantized.npy` (128 MiB of float32) | {median(reads):.2f} | "
                 f"{median(reads) / median(references):.2f}x |")
    lines.append(f"| `gguf.quants.dequantize` of it, in one process (reader included, not Python's start) | "
                 f"{median(references):.2f} | 1.00x |")
    lines += ["", f"Medians of {args.rounds} interleaved rounds, page cache warm, a fresh mount each round."]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "gguf.md").write_text(text)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
