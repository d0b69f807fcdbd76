"""Short fuzz runs of every parser (`make fuzz` runs them long): only the
parser's own error class may escape, whatever the input. Inputs are seeds
from the samples mutated by hypothesis, the same on every run
(derandomized), so a failure here is reproducible; every input that ever
broke a parser is kept in tests/fuzz/crashes/ and replayed."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from .fuzz.corpus import seeds
from .fuzz.mutations import inputs
from .fuzz.targets import CRASHES, TARGETS, check

#: inputs per target; `make fuzz` runs far more (docs/security.md)
EXAMPLES = int(os.environ.get("CKPTFS_FUZZ_EXAMPLES", "150"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_the_parsers_own_errors_escape(name):
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(inputs(seeds(name)))
    def fuzz(data: bytes) -> None:
        check(target, data)

    fuzz()


@pytest.mark.parametrize("path", sorted(CRASHES.glob("*")), ids=lambda p: p.name)
def test_an_input_that_once_broke_a_parser_stays_handled(path):
    check(TARGETS[path.name.split("-")[0]], path.read_bytes())


def test_every_parser_has_seeds_and_the_seeds_parse():
    for name, target in TARGETS.items():
        found = seeds(name)
        assert found, name
        for data in found:
            target.run(data)  # a seed is a real file: it must parse without any error
