"""One target under atheris, in a process of its own (libFuzzer owns the
process and exits when done): `python -m tests.fuzz.atheris_main TARGET
CORPUS_DIR [libFuzzer flags]`. Run by run.py."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["ckptfs"]):
    from .targets import TARGETS, check


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], lambda data: check(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
