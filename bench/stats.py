"""Side-by-side benchmark of `ckptfs stats` (issue 32).

    .venv/bin/python bench/stats.py [--rounds 3] [--workdir DIR]

Writes a 2 GiB safetensors of 440 tensors of random values (8 float32
tensors of 64 MiB, 384 float32 of 2 MiB, 48 bfloat16 of 16 MiB), then, in
interleaved rounds, each a fresh process: `ckptfs stats --json` (every
element) against NumPy reading each tensor with `safetensors.safe_open` and
measuring the same (min, max, mean, std, NaN/±inf/zero counts and a
32-bin histogram of the finite values, in float64), and `ckptfs stats
--sample 100000`: seconds and peak RSS. The first round's numbers of both
are compared (the script stops if they differ). Prints Markdown
(docs/benchmarks.md), also kept in bench/out/stats.md.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tools import median, python, rounds_and_folder, run  # bench/ is the script's folder

CKPTFS = [sys.executable, "-m", "ckptfs"]
HERE = Path(__file__).resolve().parent
#: (count, shape, dtype) of the checkpoint's tensors: 2 GiB in all
TENSORS = [(8, (4096, 4096), "float32"), (384, (512, 1024), "float32"), (48, (4096, 2048), "bfloat16")]

NUMPY_STATS = """import json, sys
import ml_dtypes  # safetensors' NumPy reader needs it for bfloat16
import numpy as np
from safetensors import safe_open
report = {}
with safe_open(sys.argv[1], "np") as f:
    for name in f.keys():
        v = f.get_tensor(name).astype(np.float64).ravel()
        finite = v[np.isfinite(v)]
        counts, edges = np.histogram(finite, 32)
        report[name] = {"min": finite.min(), "max": finite.max(), "mean": finite.mean(), "std": finite.std(),
                        "nan": int(np.isnan(v).sum()), "posinf": int((v == np.inf).sum()),
                        "neginf": int((v == -np.inf).sum()), "zeros": int((v == 0).sum()),
                        "counts": counts.tolist()}
if len(sys.argv) > 2:
    json.dump({k: {m: float(x) if m != "counts" else x for m, x in r.items()} for k, r in report.items()},
              open(sys.argv[2], "w"))
"""


def write_checkpoint(path: Path) -> None:
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for count, shape, dtype in TENSORS:
        for k in range(count):
            values = rng.standard_normal(shape, np.float32)
            tensors[f"{dtype}.{shape[0]}x{shape[1]}.{k}"] = values.astype(getattr(ml_dtypes, dtype, dtype))
    save_file(tensors, str(path))


def check(work: Path, path: Path) -> None:
    """Stop unless ckptfs's numbers are NumPy's: min, max, counts exactly, mean and std to 1e-12."""
    import subprocess

    import numpy as np

    subprocess.run([*python(NUMPY_STATS), path, work / "numpy.json"], check=True, timeout=1800)
    theirs = json.loads((work / "numpy.json").read_text())
    done = subprocess.run([*CKPTFS, "stats", "--json", path], check=True, capture_output=True, text=True,
                          timeout=1800)
    for ours in json.loads(done.stdout)["tensors"]:
        want = theirs[ours["name"]]
        for key in ("min", "max", "nan", "posinf", "neginf", "zeros"):
            assert ours[key] == want[key], (ours["name"], key, ours[key], want[key])
        assert ours["histogram"]["counts"] == want["counts"], ours["name"]
        assert np.allclose([ours["mean"], ours["std"]], [want["mean"], want["std"]], rtol=1e-12, atol=1e-15)


def main() -> None:
    args, work, temporary = rounds_and_folder(__doc__, "stats")
    try:
        path = work / "model.safetensors"
        write_checkpoint(path)
        check(work, path)
        contenders = {"exact": [*CKPTFS, "stats", "--json", path], "numpy": [*python(NUMPY_STATS), path],
                      "sample": [*CKPTFS, "stats", "--json", "--sample", "100000", path]}
        times: dict[str, list[tuple[float, float]]] = {who: [] for who in contenders}
        for _ in range(args.rounds):
            for who, cmd in contenders.items():
                times[who].append(run(*cmd))
        report = table(times, path.stat().st_size, args.rounds)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    print(report)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "stats.md").write_text(report)


def table(times: dict, size: int, rounds: int) -> str:
    numpy_s = median(t for t, _ in times["numpy"])
    labels = {"exact": "`ckptfs stats --json` (every element)",
              "numpy": "NumPy: `safe_open(...).get_tensor` + the same measures in float64",
              "sample": "`ckptfs stats --json --sample 100000`"}
    rows = [f"| {label} | {median(t for t, _ in times[who]):.2f} | {median(t for t, _ in times[who]) / numpy_s:.2f}x "
            f"| {median(r for _, r in times[who]):.0f} |" for who, label in labels.items()]
    return "\n".join([
        f"A {size / 2**30:.2f} GiB safetensors of {sum(c for c, _, _ in TENSORS)} tensors (float32 and bfloat16, "
        f"random values); medians of {rounds} interleaved rounds, each a fresh process, page cache warm.", "",
        "| | s | ratio | peak RSS (MiB) |", "| --- | --- | --- | --- |", *rows, ""])


if __name__ == "__main__":
    main()
