"""Long fuzz runs: `make fuzz` (or `python -m tests.fuzz.run [TARGET ...]
[--seconds N]`) runs each target for N seconds, with atheris (coverage-guided
libFuzzer) where it installs, else with hypothesis, and prints how many
inputs each target tried and what broke. An input that breaks a target is
kept in tests/fuzz/crashes/, which the test suite replays.

Each target runs in a process of its own under the budget the contract
names (docs/security.md): an input that takes more than --timeout seconds
or more than --rss-mb of memory is a crash too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from .corpus import seeds
from .targets import CRASHES, TARGETS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=sorted(TARGETS), help="targets to run (default: all)")
    parser.add_argument("--seconds", type=int, default=300, help="seconds per target (default 300)")
    parser.add_argument("--timeout", type=int, default=20, help="seconds one input may take (default 20)")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory one target may take (default 2048)")
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), default=None)
    args = parser.parse_args()
    engine = args.engine or ("atheris" if _has_atheris() else "hypothesis")
    print(f"fuzzing {len(args.targets)} targets for {args.seconds} s each with {engine}")
    failed = 0
    for name in args.targets:
        started = time.monotonic()
        runs, crashed, detail = (_atheris if engine == "atheris" else _hypothesis)(name, args)
        failed += crashed
        verdict = f"CRASH: {detail}" if crashed else "no crash"
        print(f"{name:20} {runs:>10,} inputs in {time.monotonic() - started:5.0f} s  {verdict}", flush=True)
    return 1 if failed else 0


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _atheris(name: str, args) -> tuple[int, bool, str]:
    with tempfile.TemporaryDirectory(prefix=f"ckptfs-fuzz-{name}-") as corpus, \
            tempfile.TemporaryDirectory(prefix="ckptfs-fuzz-artifacts-") as artifacts:
        for i, data in enumerate(seeds(name)):
            with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
                f.write(data)
        command = [sys.executable, "-m", "tests.fuzz.atheris_main", name, corpus,
                   f"-max_total_time={args.seconds}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_mb}",
                   "-max_len=262144", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
        done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        # an error outside the contract is kept by `check`; a timeout or running out of memory, here
        for artifact in os.listdir(artifacts):
            kind = artifact.split("-")[0]
            if kind in ("timeout", "oom", "slow"):
                CRASHES.mkdir(exist_ok=True)
                shutil.move(os.path.join(artifacts, artifact), CRASHES / f"{name}-{kind}-{artifact.split('-')[-1][:16]}")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", done.stderr)
    crash = re.search(r"^(==\d+== ERROR: libFuzzer.*|.*AssertionError.*|.*Traceback.*)$", done.stderr, re.M)
    return int(runs[-1]) if runs else 0, done.returncode != 0, crash.group(0).strip() if crash else done.stderr[-300:]


def _hypothesis(name: str, args) -> tuple[int, bool, str]:
    """Batches of random inputs (a fresh seed each) until the time is up."""
    from hypothesis import HealthCheck, given, settings

    from .mutations import inputs
    from .targets import check

    runs = [0]

    @settings(max_examples=500, deadline=args.timeout * 1000, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs(seeds(name)))
    def fuzz(data: bytes) -> None:
        runs[0] += 1
        check(TARGETS[name], data)

    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            fuzz()
        except Exception as e:  # the shrunk input is kept by `check`
            return runs[0], True, str(e).splitlines()[0]
    return runs[0], False, ""


if __name__ == "__main__":
    sys.exit(main())
