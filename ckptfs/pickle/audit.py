"""Every global one pickle names, whether or not the pickle is well formed.

The inert interpreter follows the stack, so it names exactly what
`pickle.load` would import, STACK_GLOBAL's strings included however they
reached the stack. Where it stops early (a malformed pickle, a limit), the
opcodes are listed instead with `inert.read_opcodes`, which only parses,
and reads every argument as the C unpickler does: `pickle.load` itself
stops at the first opcode that cannot be parsed so, and nothing past it can
be imported. There, a STACK_GLOBAL whose two strings are not the two values
pushed just before it cannot be named, and is reported as such: an audit
never passes over a global it could not name.

A pickle that does not parse to its STOP is no verdict by itself: `whole`
says so, and the caller decides (`ckptfs scan` calls it a problem).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from ..humanize import plural
from ..limits import LIMITS
from .inert import Global, InertUnpickler, PickleError, read_opcodes

#: what an unnamed STACK_GLOBAL is reported as
UNNAMED = "?"

_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_NO_PUSH = {"PROTO", "FRAME", "MEMOIZE", *_PUTS, "STOP"}


@dataclass
class Audit:
    """The globals of one pickle, in order of first use."""

    globals: list[Global] = field(default_factory=list)
    #: where the pickle ends (after STOP), or where reading it stopped
    end: int = 0
    #: False if the pickle breaks off or goes wrong before its STOP (`pickle.load` raises at `end`)
    whole: bool = True
    #: True if the data ended before the pickle did (more of it may lie beyond what was read)
    ran_out: bool = False
    #: why part of it went unaudited (a limit), if it did: the audit is then not a verdict
    unseen: str | None = None
    #: why the interpreter stopped early, if it did (the globals then come from the opcodes)
    problem: str | None = None
    #: what the pickle holds, as the interpreter reads it (None where it stopped early)
    value: object = None


def audit(data: bytes, start: int = 0) -> Audit:
    """The globals of the pickle that starts at `start` of `data`."""
    stream = io.BytesIO(data)
    stream.seek(start)
    unpickler = InertUnpickler(stream)
    try:
        value = unpickler.load()
        return Audit(list(unpickler.globals), stream.tell(), value=value)
    except (PickleError, RecursionError, MemoryError) as e:
        problem = str(e) if isinstance(e, PickleError) else f"{type(e).__name__} while interpreting it"
    found = _opcode_globals(data, start)
    found.problem = problem
    return found


def _opcode_globals(data: bytes, start: int) -> Audit:
    result = Audit()
    seen: set[Global] = set()
    recent: list[str | None] = [None, None]  # the last two values pushed, where they are strings
    memo: dict[int, str | None] = {}
    stream = io.BytesIO(data)
    stream.seek(start)
    pos = start
    try:
        for count, (name, arg, pos) in enumerate(read_opcodes(stream)):
            if count >= LIMITS.pickle_ops:
                result.unseen = f"more than {plural(LIMITS.pickle_ops, 'opcode')} (-o max_pickle_ops raises the limit)"
                break
            g = None
            if name in ("GLOBAL", "INST"):
                g = Global(*arg)
            elif name == "STACK_GLOBAL":
                module, attr = recent
                g = Global(module, attr) if module is not None and attr is not None else Global(UNNAMED, f"byte {pos}")
            elif name.startswith("EXT"):
                g = Global("copyreg._extension_registry", str(arg))
            if g is not None and g not in seen:
                seen.add(g)
                result.globals.append(g)
            if name == "STOP":
                result.end = stream.tell()
                return result
            if name in _PUTS:
                memo[int(arg)] = recent[1]
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[1]
            elif name in _GETS:
                recent = [recent[1], memo.get(int(arg))]
            elif name in _STRINGS:  # a Python 2 string as text under encoding='latin1'
                recent = [recent[1], arg.decode("latin-1") if isinstance(arg, bytes) else arg]
            elif name not in _NO_PUSH:
                recent = [recent[1], None]
        result.end = pos
    except ValueError:  # an opcode the C unpickler could not read either, or the data ends first
        result.end = pos
        result.ran_out = stream.tell() >= len(data)  # a read went to the end: more data might have let it on
    result.whole = False
    return result
