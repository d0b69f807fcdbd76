"""`ckptfs scan` beside picklescan, modelscan and fickling (issue 26).

    .venv/bin/python bench/scan_bench.py --scanners .venv-scanners [--workdir DIR]

Generates the malicious corpus (tests/malicious/generate.py: every sample
runs its payload under its loader, as tests/test_malicious_corpus.py
checks) and the safe checkpoints (tests/malicious/safe.py: written by
Lightning, transformers, DeepSpeed, torch optimizers, NumPy and DCP, with
the repository's samples), runs each tool on each, one process per
sample, and counts for each tool: malicious samples caught (called
dangerous), missed (called safe), no verdict (an error, or nothing
scanned), false alarms (a safe checkpoint called dangerous), and time.
The three peers live in a virtualenv of their own (`make bench` makes it).
A tool that takes files only (fickling) is run on each file of a folder
that is not named as text or safetensors, the folder dangerous if any file is. Prints
Markdown (docs/benchmarks.md), also kept in bench/out/scan.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: files a tool that takes files only is not given: text, and safetensors (which holds no pickle)
NOT_PICKLES = (".yaml", ".yml", ".json", ".txt", ".md", ".py", ".safetensors")
#: fickling's scanning API on one file (its zip records named .pkl, .pickle, .bin): "dangerous" where an
#: analysis finds it unsafe, "none" where it only reports parse errors, else "safe"
FICKLING = """
import sys, zipfile
from fickling.loader import scan_file, scan_zip_archive
results = scan_zip_archive(sys.argv[1], graceful=True) if zipfile.is_zipfile(sys.argv[1]) else {"": scan_file(sys.argv[1], graceful=True)}
values = list(results.values())
unsafe = [r for r in values if not r.is_safe and r.results]
print("dangerous" if unsafe else "none" if not values or any(r.errors for r in values) else "safe")
"""
#: the same with fickling's ML allowlist in place of its analysis of imports outside the standard library
#: (which calls torch's own rebuild functions unsafe); its scanning API does not offer it, so the records
#: are found here as scan_zip_archive finds them
FICKLING_ML = """
import sys, zipfile
from fickling.analysis import Analysis, Analyzer, NonStandardImports, Severity, check_safety
from fickling.fickle import Pickled
from fickling.ml import MLAllowlist
analyzer = Analyzer([a for a in Analysis.ALL if not isinstance(a, NonStandardImports)] + [MLAllowlist()])
path = sys.argv[1]
if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
        blobs = [z.read(i) for i in z.infolist() if i.filename.lower().endswith((".pkl", ".pickle", ".bin"))]
else:
    blobs = [open(path, "rb").read()]
verdicts = []
for data in blobs:
    try:
        pickled = Pickled.load(data, fail_on_decode_error=False)
        verdicts.append("safe" if check_safety(pickled, analyzer).severity <= Severity.LIKELY_SAFE else "dangerous")
    except Exception:
        verdicts.append("none")
print("dangerous" if "dangerous" in verdicts else "none" if "none" in verdicts or not verdicts else "safe")
"""


def _run(cmd: list[str]) -> tuple[subprocess.CompletedProcess | None, float]:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    except subprocess.TimeoutExpired:
        done = None
    return done, time.perf_counter() - start


def ckptfs(path: Path, venv: Path) -> tuple[str, float]:
    done, seconds = _run([sys.executable, "-m", "ckptfs", "scan", str(path)])
    return {0: "safe", 1: "dangerous"}.get(done.returncode if done else -1, "none"), seconds


def picklescan(path: Path, venv: Path) -> tuple[str, float]:
    done, seconds = _run([str(venv / "bin" / "picklescan"), "--path", str(path)])
    if done is None or done.returncode not in (0, 1):
        return "none", seconds
    if done.returncode == 0 and "Scanned files: 0" in done.stdout:
        return "none", seconds
    return ("dangerous" if done.returncode == 1 else "safe"), seconds


def modelscan(path: Path, venv: Path) -> tuple[str, float]:
    done, seconds = _run([str(venv / "bin" / "modelscan"), "-p", str(path)])
    return {0: "safe", 1: "dangerous"}.get(done.returncode if done else -1, "none"), seconds


def fickling(path: Path, venv: Path, program: str = FICKLING) -> tuple[str, float]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(NOT_PICKLES))
    verdicts, seconds = [], 0.0
    for file in files:
        done, took = _run([str(venv / "bin" / "python"), "-c", program, str(file)])
        seconds += took
        verdicts.append(done.stdout.strip() if done and done.returncode == 0 else "none")
    verdict = "dangerous" if "dangerous" in verdicts else "none" if "none" in verdicts or not verdicts else "safe"
    return verdict, seconds


def fickling_ml(path: Path, venv: Path) -> tuple[str, float]:
    return fickling(path, venv, FICKLING_ML)


TOOLS = {"ckptfs scan": ckptfs, "picklescan": picklescan, "modelscan": modelscan, "fickling": fickling,
         "fickling, ML allowlist": fickling_ml}


def _versions(venv: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True, text=True)
    installed = {p["name"].lower(): p["version"] for p in json.loads(done.stdout or "[]")}
    return ", ".join(f"{name} {installed.get(name, '?')}" for name in ("picklescan", "modelscan", "fickling"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scanners", type=Path, default=REPO / ".venv-scanners", help="the peers' virtualenv")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        corpus, safe = Path(work) / "corpus", Path(work) / "safe"
        for module, out in (("tests.malicious.generate", corpus), ("tests.malicious.safe", safe)):
            subprocess.run([sys.executable, "-m", module, str(out)], check=True, cwd=REPO, capture_output=True,
                           timeout=1800)
        manifest = json.loads((corpus / "manifest.json").read_text())
        malicious = {name: corpus / entry["path"] for name, entry in manifest.items()}
        benign = {path.name: path for path in sorted(safe.iterdir())}
        rows, per_sample, wrong = [], {}, []
        for tool, run in TOOLS.items():
            seen = {name: run(path, args.scanners) for name, path in malicious.items()}
            clean = {name: run(path, args.scanners) for name, path in benign.items()}
            per_sample[tool] = {name: verdict for name, (verdict, _) in seen.items()}
            times = [t for _, t in [*seen.values(), *clean.values()]]
            count = lambda results, verdict: sum(v == verdict for v, _ in results.values())  # noqa: E731
            rows.append(f"| {tool} | {count(seen, 'dangerous')} | {count(seen, 'safe')} | {count(seen, 'none')} | "
                        f"{count(clean, 'dangerous')} | {count(clean, 'none')} | {sum(times):.1f} | "
                        f"{statistics.median(times):.2f} |")
            if any(v != "safe" for v, _ in clean.values()):
                wrong.append(f"{tool}: " + ", ".join(f"{n} {v}" for n, (v, _) in clean.items() if v != "safe"))
    lines = [f"**{len(malicious)} malicious samples, {len(benign)} safe checkpoints** ({_versions(args.scanners)}; "
             "one process per sample, wall time)", "",
             "| tool | caught | missed | no verdict | false alarms | no verdict on safe | total s | median s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows, "",
             "Safe checkpoints not called safe (none: no verdict): " + ("; ".join(wrong) or "none") + ".", "",
             "| sample | " + " | ".join(TOOLS) + " |", "| --- |" + " --- |" * len(TOOLS)]
    for name in malicious:
        lines.append(f"| {name} | " + " | ".join(per_sample[tool][name] for tool in TOOLS) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "scan.md").write_text(text)


if __name__ == "__main__":
    main()
