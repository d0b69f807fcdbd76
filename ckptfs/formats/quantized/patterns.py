"""Module names as a quantization config lists them (compressed-tensors'
`targets` and `ignore`): a name matches an entry equal to it, or a
`re:` entry whose regular expression matches its start (`re.match`, as
compressed-tensors' `match_name`). The expressions come from the file,
so one that could backtrack without bound (a repeat inside a repeat, an
alternation under a repeat, a back reference), one of more than
`MAX_OPEN_REPEATS` open-ended repeats one after another (k of them can
take a name's length to the k-th power of steps: `.*.*.*...x`), or one
longer than `MAX_PATTERN` is refused with a note and matches nothing."""

from __future__ import annotations

import re

try:
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # Python before 3.11
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

PREFIX = "re:"
MAX_PATTERN = 512
MAX_ENTRIES = 4096
#: open-ended repeats (`*`, `+`, `{n,}`, or a bound above `OPEN_REPEAT`) one pattern may hold
MAX_OPEN_REPEATS = 2
OPEN_REPEAT = 16
_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT}
_UNSAFE_UNDER_REPEAT = _REPEATS | {sre_constants.BRANCH, sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS}


class Patterns:
    """The entries of one list; those that cannot be used are noted and skipped."""

    def __init__(self, entries, notes: list[str]):
        entries = entries if isinstance(entries, list) else [entries] if isinstance(entries, str) else []
        if len(entries) > MAX_ENTRIES:
            notes.append(f"a list of {len(entries)} module names: the first {MAX_ENTRIES} are used")
        self.names: set[str] = set()
        self.expressions: list[re.Pattern] = []
        for entry in entries[:MAX_ENTRIES]:
            if not isinstance(entry, str):
                continue
            if not entry.startswith(PREFIX):
                self.names.add(entry)
                continue
            try:
                self.expressions.append(_compiled(entry[len(PREFIX):]))
            except (re.error, ValueError, RecursionError) as e:
                notes.append(f"module pattern {entry[:80]!r} not used: {e}")

    def matches(self, name: str) -> bool:
        return name in self.names or any(e.match(name) for e in self.expressions)


def _compiled(pattern: str) -> re.Pattern:
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"longer than {MAX_PATTERN} characters")
    parsed = sre_parse.parse(pattern)
    _check(parsed, under_repeat=False)
    if _open_repeats(parsed) > MAX_OPEN_REPEATS:
        raise ValueError(f"more than {MAX_OPEN_REPEATS} open-ended repeats could backtrack for a name's length "
                         "to their number's power")
    return re.compile(pattern)


def _open_repeats(items) -> int:
    """How many open-ended repeats the parsed pattern holds, at any depth."""
    count = 0
    for op, value in items:
        if op in _REPEATS and value[1] > OPEN_REPEAT:
            count += 1
        count += sum(_open_repeats(part) for part in _parts(op, value))
    return count


def _check(items, under_repeat: bool) -> None:
    """Refuse what could make matching take exponential time."""
    for op, value in items:
        if under_repeat and op in _UNSAFE_UNDER_REPEAT:
            raise ValueError("a repeat of a repeat, an alternation or a back reference could backtrack without bound")
        if op in (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS):
            raise ValueError("back references are not matched")
        for part in _parts(op, value):
            _check(part, under_repeat or op in _REPEATS)


def _parts(op, value) -> list:
    """The sub-patterns of one parsed item."""
    if op in _REPEATS:
        return [value[2]]
    if op == sre_constants.SUBPATTERN:
        return [value[-1]]
    if op == sre_constants.BRANCH:
        return list(value[1])
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [value[1]]
    return []
