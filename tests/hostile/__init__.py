"""The hostile corpus's cases, one module per kind of input (pickles,
archives, ...), each defining `CASES`: {what it is: Case}. The runner is
tests/test_hostile_corpus.py; a module added here is found without
registering it anywhere."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One hostile input and what a mount must make of it."""

    #: writes the input under the test's folder and returns its path
    make: Callable[[Path], Path]
    #: "refused" (one line naming the file, nothing mounted) or "served" (every file readable or its own EIO)
    outcome: str
    #: what the refusal line, or one of the served YAML files, must say
    says: str | None = None
    #: more arguments to `ckptfs mount`
    options: tuple[str, ...] = ()
    #: more to check on a served mount: check(mount point, source)
    check: Callable[[Path, Path], None] | None = None
    #: the files of a served mount whose reads fail (EIO), each with its
    #: problem in `user.ckptfs.problem`; every other file reads
    broken: tuple[str, ...] = ()


def corpus() -> dict[str, Case]:
    """Every module's cases together; a name used twice is an error."""
    found: dict[str, Case] = {}
    for module in pkgutil.iter_modules(__path__):
        cases = importlib.import_module(f"{__name__}.{module.name}").CASES
        clash = found.keys() & cases.keys()
        assert not clash, f"hostile cases named twice: {sorted(clash)}"
        found.update(cases)
    return found
