"""An inert pickle interpreter: reads any protocol (0-5), runs nothing.

Opcodes are decoded inline (the frequent ones) or with `pickletools`'
argument readers, which only parse; the arguments written as text lines
(INT, LONG, FLOAT, STRING, GLOBAL, INST, GET, PUT) are read by readers of
our own that accept exactly what the C unpickler (`pickle.load`) accepts,
where pickletools is stricter: `I0x10` is 16 there (base 0), a STRING of
UTF-8 bytes is text under torch's `encoding='utf-8'`. Nothing named in
the pickle is imported or called: a global is a `Global` placeholder, and
REDUCE, NEWOBJ, INST/OBJ and BUILD record what would have been called as a
`Call`. A `known` table ({"module.name": build(args)}) may turn calls of
known constructors (OrderedDict, tensor rebuilds...) into plain values,
again by table lookup, without executing anything. A built value with a
`pickled` attribute (a `Rebuilt`) keeps the call it came from, so that
`pickle_writer` can write it back as it was.
"""

from __future__ import annotations

import codecs
import functools
import io
import pickletools
import re
import reprlib
import struct
from dataclasses import dataclass, field

from ..humanize import plural
from ..limits import LIMITS

#: how far `_hashable` expands a key: a tuple of shared tuples 60 levels deep
#: would take 2^60 steps to hash
MAX_KEY_VALUES = 10_000


class PickleError(Exception):
    """The pickle is malformed or exceeds the interpreter's limits."""


@dataclass(frozen=True)
class Global:
    """A reference to `module.name` that the pickle would have imported."""

    module: str
    name: str

    @functools.cached_property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Call:
    """A call the pickle asked for and we did not make: `func(*args, **kwargs)`,
    then `__setstate__(state)` and appended items, all kept as data. `kind`
    says how: "reduce" calls `func`, "newobj" calls `func.__new__(func, ...)`."""

    func: object
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    state: object = None
    items: list = field(default_factory=list)
    dictitems: dict = field(default_factory=dict)
    kind: str = "reduce"

    @property
    def path(self) -> str:
        return self.func.path if isinstance(self.func, Global) else short_repr(self.func)

    def __repr__(self) -> str:  # short: a call's arguments may be a huge shared structure
        return short_repr(self)


class Rebuilt:
    """A value a `known` constructor built; `pickled` is the call the pickle
    made for it (set by the interpreter), to write it back unchanged."""

    pickled: Call | None = None


class PickledDict(dict, Rebuilt):
    """A dict subclass instance (OrderedDict): its items, plus the instance
    attributes BUILD gave it (a state dict's `_metadata`), kept apart."""

    def __init__(self, *args):
        super().__init__(*args)
        self.attributes: dict = {}


@dataclass(frozen=True)
class Persistent:
    """A persistent id that no `persistent_load` resolved."""

    pid: object

    def __repr__(self) -> str:
        return short_repr(self)


class Unhashable:
    """A key Python cannot hash (a dict, or a tuple too large to hash
    safely), kept in its place by identity."""

    def __init__(self, key: object):
        self.key = key

    def __repr__(self) -> str:
        return short_repr(self.key)


class _ShortRepr(reprlib.Repr):
    """`repr` cut to a few levels and items, placeholders included (each
    of them one level down, never a fresh start: keys inside keys nest)."""

    def __init__(self):
        super().__init__()  # (keyword arguments only from Python 3.12)
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60
        self.maxtuple = self.maxlist = self.maxdict = self.maxset = self.maxfrozenset = 4

    def repr_Unhashable(self, value: Unhashable, level: int) -> str:
        return self.repr1(value.key, level)

    def repr_Persistent(self, value: Persistent, level: int) -> str:
        return f"Persistent({self.repr1(value.pid, level - 1)})"

    def repr_Call(self, value: Call, level: int) -> str:
        func = value.func.path if isinstance(value.func, Global) else "..." if level <= 0 else self.repr1(value.func, level - 1)
        return f"Call({func})"


#: what a key or a placeholder shows
short_repr = _ShortRepr().repr


_UNSEEN = object()


class InertUnpickler:
    """`load()` returns the object; `globals` lists every global referenced,
    in order of first use: what `pickle.load` would have imported."""

    def __init__(self, data: bytes | io.BytesIO, *, persistent_load=None, known: dict | None = None):
        # a stream is left just after the pickle's STOP, for formats that
        # write several pickles back to back
        self.stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
        self.persistent_load = persistent_load or Persistent
        self.known = known or {}
        self._builders: dict[str, object] = {}  # by global path: its entry of _BUILTINS or `known`, or None
        self.globals: list[Global] = []
        self._global_set: set[Global] = set()
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}

    def load(self) -> object:
        stream = self.stream
        try:
            with stream.getbuffer() as buf:
                pos, value = self._run(buf, stream.tell())
            _check_nesting(value, LIMITS.pickle_nesting)
        except PickleError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, EOFError, UnicodeDecodeError, AttributeError,
                struct.error) as e:
            raise PickleError(f"malformed pickle ({type(e).__name__}: {e})") from None
        stream.seek(pos)
        return value

    def _run(self, buf: memoryview, pos: int) -> tuple[int, object]:
        """The opcode loop: (position after STOP, the object).

        The most frequent opcodes of real checkpoints are decoded inline;
        the rest go through `_BY_CODE` and its argument readers.
        """
        stack, memo, marks, stream = self.stack, self.memo, self.marks, self.stream
        push, call = stack.append, self._call
        end = len(buf)
        unpack_int, unpack_uint = _INT4.unpack_from, _UINT4.unpack_from
        # local names: the loop compares against them on every opcode
        MEMOIZE, BINGET, LONG_BINGET, BININT1, MARK, TUPLE1, TUPLE2, EMPTY_TUPLE, EMPTY_DICT = _HOT[:9]
        SHORT_BINUNICODE, BININT, NEWOBJ, BUILD, REDUCE = _HOT[9:]
        max_ops, max_memo = LIMITS.pickle_ops, LIMITS.pickle_memo
        for _ in range(max_ops):
            if pos >= end:
                raise PickleError("pickle ended without STOP")
            code = buf[pos]
            pos += 1
            if code == MEMOIZE:
                n = len(memo)
                if n >= max_memo:
                    raise PickleError(f"memo larger than {plural(max_memo, 'entry', 'entries')} "
                                      "(-o max_pickle_memo raises the limit)")
                memo[n] = stack[-1]
            elif code == BINGET:
                push(memo[buf[pos]])
                pos += 1
            elif code == LONG_BINGET:
                push(memo[unpack_uint(buf, pos)[0]])
                pos += 4
            elif code == BININT1:
                push(buf[pos])
                pos += 1
            elif code == MARK:
                marks.append(len(stack))
            elif code == TUPLE1:
                stack[-1] = (stack[-1],)
            elif code == TUPLE2:
                stack[-2:] = [(stack[-2], stack[-1])]
            elif code == EMPTY_TUPLE:
                push(())
            elif code == EMPTY_DICT:
                push({})
            elif code == SHORT_BINUNICODE:
                n = buf[pos]
                if pos + 1 + n > end:
                    raise PickleError("pickle ended inside a string")
                push(str(buf[pos + 1 : pos + 1 + n], "utf-8", "surrogatepass"))
                pos += 1 + n
            elif code == BININT:
                push(unpack_int(buf, pos)[0])
                pos += 4
            elif code == NEWOBJ:
                args = stack.pop()
                stack[-1] = call(stack[-1], tuple(args), None, "newobj")
            elif code == BUILD and type(stack[-2]) is Call:
                state = stack.pop()
                stack[-1].state = state
            elif code == REDUCE and type(stack[-1]) is tuple:
                args = stack.pop()
                stack[-1] = call(stack[-1], args)
            else:
                entry = _BY_CODE[code]
                if entry is None:
                    raise PickleError(f"unknown opcode {bytes([code])!r}")
                reader, handler = entry
                arg = None
                if reader:
                    stream.seek(pos)
                    arg = reader(stream)
                    pos = stream.tell()
                if handler is None:  # STOP
                    if len(stack) != 1 or marks:
                        raise PickleError(f"STOP with {len(stack)} items on the stack")
                    return pos, stack.pop()
                handler(self, arg)
        raise PickleError(f"more than {plural(max_ops, 'opcode')} (-o max_pickle_ops raises the limit)")

    # -- helpers
    def _push(self, value: object) -> None:
        self.stack.append(value)

    def _pop_mark(self) -> list:
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _global(self, module: str, name: str) -> Global:
        g = Global(module, name)
        if g not in self._global_set:
            self._global_set.add(g)
            self.globals.append(g)
        return g

    def _call(self, func: object, args: tuple, kwargs: dict | None = None, kind: str = "reduce") -> object:
        if type(func) is Global and not kwargs:
            build = self._builders.get(func.path, _UNSEEN)
            if build is _UNSEEN:
                build = self._builders[func.path] = _BUILTINS.get((func.module, func.name)) or self.known.get(func.path)
            if build is not None:
                try:
                    value = build(args)
                except (IndexError, TypeError, ValueError):
                    raise PickleError(f"unexpected arguments to {func.path}") from None
                if value is not NotImplemented:
                    if isinstance(value, Rebuilt) and value.pickled is None:
                        object.__setattr__(value, "pickled", Call(func, args, kind=kind))
                    return value
        return Call(func, args, kwargs or {}, kind=kind)

    # -- constants
    def _const(self, arg):
        self._push(arg)

    op_INT = op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = _const
    op_FLOAT = op_BINFLOAT = op_UNICODE = op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = _const
    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = _const

    def op_BYTEARRAY8(self, arg):
        self._push(bytearray(arg))

    def _py2_string(self, arg):
        # Python 2 str: torch reads legacy checkpoints as UTF-8, falling back to bytes
        try:
            arg = arg.decode("utf-8")
        except UnicodeDecodeError:
            pass
        self._push(arg)

    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = _py2_string

    def op_NONE(self, arg):
        self._push(None)

    def op_NEWTRUE(self, arg):
        self._push(True)

    def op_NEWFALSE(self, arg):
        self._push(False)

    # -- containers
    def op_MARK(self, arg):
        self.marks.append(len(self.stack))

    def op_EMPTY_LIST(self, arg):
        self._push([])

    def op_EMPTY_DICT(self, arg):
        self._push({})

    def op_EMPTY_TUPLE(self, arg):
        self._push(())

    def op_EMPTY_SET(self, arg):
        self._push(set())

    def op_LIST(self, arg):
        self._push(self._pop_mark())

    def op_TUPLE(self, arg):
        self._push(tuple(self._pop_mark()))

    def op_TUPLE1(self, arg):
        self.stack[-1:] = [tuple(self.stack[-1:])]

    def op_TUPLE2(self, arg):
        self.stack[-2:] = [tuple(self.stack[-2:])]

    def op_TUPLE3(self, arg):
        self.stack[-3:] = [tuple(self.stack[-3:])]

    def op_DICT(self, arg):
        items = self._pop_mark()
        self._push(dict(zip(items[::2], items[1::2])))

    def op_FROZENSET(self, arg):
        self._push(frozenset(_hashable(x) for x in self._pop_mark()))

    def op_APPEND(self, arg):
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def op_APPENDS(self, arg):
        items = self._pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, target, items):
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, Call):
            target.items.extend(items)
        else:
            raise PickleError(f"APPEND to a {type(target).__name__}")

    def op_SETITEM(self, arg):
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [(key, value)])

    def op_SETITEMS(self, arg):
        items = self._pop_mark()
        target, keys = self.stack[-1], items[::2]
        # a dict's items set at once: pickle writes them 1,000 to a SETITEMS, so
        # it needs no place in `_run`; tuple keys take the slow path, which bounds what hashing them costs
        if type(target) is dict and not any(type(k) is tuple for k in keys):
            try:
                for i in range(0, len(items), 2):
                    target[items[i]] = items[i + 1]
                return
            except TypeError:  # a key Python cannot hash: the slow path keeps it as a placeholder
                pass
        self._setitems(target, list(zip(keys, items[1::2])))

    def _setitems(self, target, pairs):
        if isinstance(target, dict):
            for k, v in pairs:
                target[_hashable(k)] = v
        elif isinstance(target, Call):
            for k, v in pairs:
                target.dictitems[_hashable(k)] = v
        else:
            raise PickleError(f"SETITEM on a {type(target).__name__}")

    def op_ADDITEMS(self, arg):
        items = self._pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise PickleError(f"ADDITEMS on a {type(target).__name__}")
        target.update(_hashable(x) for x in items)

    # -- stack and memo
    def op_POP(self, arg):
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self.stack.pop()

    def op_POP_MARK(self, arg):
        self._pop_mark()

    def op_DUP(self, arg):
        self._push(self.stack[-1])

    def _put(self, index):
        if len(self.memo) >= LIMITS.pickle_memo:
            raise PickleError(f"memo larger than {plural(LIMITS.pickle_memo, 'entry', 'entries')} "
                              "(-o max_pickle_memo raises the limit)")
        self.memo[index] = self.stack[-1]

    def op_PUT(self, arg):
        self._put(int(arg))

    op_BINPUT = op_LONG_BINPUT = op_PUT

    def op_MEMOIZE(self, arg):
        self._put(len(self.memo))

    def op_GET(self, arg):
        self._push(self.memo[int(arg)])

    op_BINGET = op_LONG_BINGET = op_GET

    # -- globals and calls (recorded, never made)
    def op_GLOBAL(self, arg):
        self._push(self._global(*arg))

    def op_STACK_GLOBAL(self, arg):
        name = self.stack.pop()
        module = self.stack.pop()
        if not (isinstance(module, (str, bytes)) and isinstance(name, (str, bytes))):
            raise PickleError("STACK_GLOBAL needs two strings")
        # a Python 2 string that is not UTF-8 stays bytes here; an unpickler
        # given encoding='latin1' (np.load's option) sees it as text: name that
        self._push(self._global(*(s.decode("latin-1") if isinstance(s, bytes) else s for s in (module, name))))

    def _ext(self, arg):
        self._push(self._global("copyreg._extension_registry", str(arg)))

    op_EXT1 = op_EXT2 = op_EXT4 = _ext

    def op_REDUCE(self, arg):
        args = self.stack.pop()
        func = self.stack.pop()
        if not isinstance(args, tuple):
            raise PickleError("REDUCE arguments are not a tuple")
        self._push(self._call(func, args))

    def op_NEWOBJ(self, arg):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._push(self._call(cls, tuple(args), None, "newobj"))

    def op_NEWOBJ_EX(self, arg):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._push(self._call(cls, tuple(args), dict(kwargs), "newobj"))

    # INST and OBJ (protocols 0 and 1) call the class with arguments, and
    # create a bare instance without
    def op_INST(self, arg):
        args = tuple(self._pop_mark())
        self._push(self._call(self._global(*arg), args, None, "reduce" if args else "newobj"))

    def op_OBJ(self, arg):
        items = self._pop_mark()
        self._push(self._call(items[0], tuple(items[1:]), None, "reduce" if len(items) > 1 else "newobj"))

    def op_BUILD(self, arg):
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, Call):
            target.state = state
        elif isinstance(target, PickledDict) and isinstance(state, dict):
            target.attributes.update(state)
        else:
            raise PickleError(f"BUILD on a {type(target).__name__}")

    def op_PERSID(self, arg):
        self._push(self.persistent_load(arg))

    def op_BINPERSID(self, arg):
        self._push(self.persistent_load(self.stack.pop()))

    def op_PROTO(self, arg):
        pass

    op_FRAME = op_PROTO


# -- arguments written as lines, read as the C unpickler reads them


def _line(f) -> bytes:
    """One argument line, newline included, at least one byte before it."""
    line = f.readline()
    if not line.endswith(b"\n"):
        raise ValueError("no newline found: the pickle ends inside an argument")
    if len(line) < 2:
        raise ValueError("empty argument line")
    return line


def _c_string(line: bytes) -> bytes:
    """What C code reads of a line: up to its first NUL byte."""
    return line.split(b"\0", 1)[0]


#: what strtol(s, &end, 0) reads: spaces, a sign, then hex, octal or decimal digits
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")


def _read_int(f) -> int | bool:
    """INT: strtol in base 0 (`0x10` is 16, `010` is 8), and Python's own
    int(s, 0) for what strtol cannot hold or end at the newline; `00` and
    `01` (any 3-byte line reading 0 or 1) are False and True."""
    line = _line(f)
    text = _c_string(line)
    m = _STRTOL.match(text)
    if m and text[m.end():m.end() + 1] in (b"\n", b""):
        hexa, octal, decimal = m.group(2), m.group(3), m.group(4)
        value = int(hexa, 16) if hexa else int(octal, 8) if octal else int(decimal)
        value = -value if m.group(1) == b"-" else value
        if -(1 << 63) <= value < 1 << 63:
            return bool(value) if len(line) == 3 and value in (0, 1) else value
    return int(text, 0)


def _read_long(f) -> int:
    """LONG: Python's int(s, 0), a trailing L dropped."""
    line = _line(f)
    if line[-2:-1] == b"L":
        line = line[:-2]
    return int(_c_string(line), 0)


def _read_decimal(f) -> int:
    """GET and PUT: a base-10 index."""
    return int(_c_string(_line(f)), 10)


_DOUBLE = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE)


def _read_float(f) -> float:
    """FLOAT: PyOS_string_to_double, which reads no leading space and
    refuses a value too large for a double."""
    text = _c_string(_line(f))
    m = _DOUBLE.match(text)
    if not m or text[m.end():m.end() + 1] not in (b"\n", b""):
        raise ValueError(f"FLOAT argument {text!r} is not a number")
    value = float(m.group())
    if value in (float("inf"), float("-inf")) and b"n" not in m.group().lower():
        raise ValueError(f"FLOAT argument {text!r} is too large")
    return value


def _read_string(f) -> bytes:
    """STRING: quoted alike at both ends, escapes undone; bytes, which the
    handler decodes (as UTF-8, as torch does)."""
    line = _line(f)[:-1]
    if not (len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"')):
        raise ValueError("the STRING opcode argument must be quoted")
    return codecs.escape_decode(line[1:-1])[0]


def _read_global(f) -> tuple[str, str]:
    """GLOBAL: (module, name), two lines of UTF-8 (either may hold a space)."""
    return _line(f)[:-1].decode("utf-8"), _line(f)[:-1].decode("utf-8")


def _read_inst(f) -> tuple[str, str]:
    """INST: (module, name), two lines of ASCII."""
    return _line(f)[:-1].decode("ascii"), _line(f)[:-1].decode("ascii")


def _read_binstring(size_reader):
    def read(f) -> bytes:
        n = size_reader(f)
        if n < 0:
            raise ValueError(f"negative string length {n}")
        data = f.read(n)
        if len(data) < n:
            raise ValueError(f"expected {plural(n, 'byte')} in a string, but only {len(data)} remain")
        return data

    return read


_READERS = {
    "INT": _read_int, "LONG": _read_long, "FLOAT": _read_float, "STRING": _read_string,
    "GLOBAL": _read_global, "INST": _read_inst, "GET": _read_decimal, "PUT": _read_decimal,
    "BINSTRING": _read_binstring(pickletools.read_int4), "SHORT_BINSTRING": _read_binstring(pickletools.read_uint1),
}


def _reader(op: pickletools.OpcodeInfo):
    return _READERS.get(op.name) or (op.arg.reader if op.arg else None)


#: opcode byte -> (argument reader, handler); STOP has no handler.
#: Opcodes without a handler here (NEXT_BUFFER, READONLY_BUFFER: out-of-band
#: buffers) are None: refused as unknown.
_BY_CODE: list = [None] * 256
for _op in pickletools.opcodes:
    if _op.name == "STOP" or "op_" + _op.name in vars(InertUnpickler):
        _BY_CODE[ord(_op.code)] = (_reader(_op), vars(InertUnpickler).get("op_" + _op.name))
#: opcode byte -> (name, argument reader), every opcode the C unpickler knows
_OPCODES: list = [None] * 256
for _op in pickletools.opcodes:
    _OPCODES[ord(_op.code)] = (_op.name, _reader(_op))


def read_opcodes(stream: io.BytesIO):
    """(name, argument, position) of each opcode from the stream's position
    to STOP, arguments read as by the interpreter: what `pickle.load` would
    parse, without following the stack. Raises ValueError where `pickle.load`
    could not read on (an unknown opcode, a malformed argument, the end)."""
    while True:
        pos = stream.tell()
        code = stream.read(1)
        if not code:
            raise ValueError("the pickle ends without STOP")
        entry = _OPCODES[code[0]]
        if entry is None:
            raise ValueError(f"unknown opcode {code!r}")
        name, reader = entry
        yield name, reader(stream) if reader else None, pos
        if name == "STOP":
            return
_CODE = {op.name: ord(op.code) for op in pickletools.opcodes}
#: the opcodes `_run` decodes inline, in the order it tests them
_HOT = tuple(_CODE[name] for name in (
    "MEMOIZE", "BINGET", "LONG_BINGET", "BININT1", "MARK", "TUPLE1", "TUPLE2", "EMPTY_TUPLE", "EMPTY_DICT",
    "SHORT_BINUNICODE", "BININT", "NEWOBJ", "BUILD", "REDUCE",
))
_INT4, _UINT4 = struct.Struct("<i"), struct.Struct("<I")


def _encode(args: tuple) -> object:
    """`_codecs.encode(text, "latin1")`: how protocols 0-2 spell bytes."""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    return NotImplemented


def _reconstructor(args: tuple) -> object:
    """`copyreg._reconstructor(cls, object, None)`: protocol 0-1 object creation."""
    if len(args) == 3 and isinstance(args[0], Global):
        return Call(args[0], kind="newobj")
    return NotImplemented


def _container(kind):
    def build(args: tuple) -> object:
        if len(args) > 1:
            return NotImplemented
        items = args[0] if args else ()
        if not isinstance(items, (list, tuple, set, frozenset, bytes, bytearray)):
            return NotImplemented  # `bytearray(3_000_000_000)` stays a call: nothing is allocated for it
        return kind(_hashable(x) for x in items) if kind in (set, frozenset) else kind(items)

    return build


def _complex(args: tuple) -> object:
    if len(args) == 2 and all(isinstance(a, (int, float)) for a in args):
        return complex(*args)
    return NotImplemented


_BUILTINS = {
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
}
for _module in ("builtins", "__builtin__"):
    _BUILTINS.update({
        (_module, "set"): _container(set),
        (_module, "frozenset"): _container(frozenset),
        (_module, "bytearray"): _container(bytearray),
        (_module, "complex"): _complex,
    })


def _hashable(key):
    """`key` if Python can hash it at a bounded cost; a list becomes a tuple,
    anything else (a dict, a huge or shared tuple) an identity-hashed
    placeholder that keeps its place."""
    if isinstance(key, list):
        key = tuple(key)
    if isinstance(key, tuple) and not _small(key):
        return Unhashable(key)
    try:
        hash(key)
        return key
    except TypeError:
        return Unhashable(key)


def _small(key: tuple) -> bool:
    """True if hashing `key` visits at most MAX_KEY_VALUES values (hashing
    and comparing a tuple visits every value of it, shared ones each time)."""
    budget, pending = MAX_KEY_VALUES, [key]
    while pending:
        value = pending.pop()
        budget -= 1
        if budget < 0:
            return False
        if type(value) is tuple:
            pending.extend(value)
    return True


def _children(value: object):
    """The values a container holds, for `_check_nesting`."""
    if isinstance(value, dict):
        yield from value.keys()
        yield from value.values()
        if isinstance(value, PickledDict):
            yield value.attributes
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield from value
    elif isinstance(value, Call):
        yield from (value.func, value.args, value.kwargs, value.state, value.items, value.dictitems)
    elif isinstance(value, (Persistent, Unhashable)):
        yield value.pid if isinstance(value, Persistent) else value.key


_CONTAINERS = (dict, list, tuple, set, frozenset, Call, Persistent, Unhashable)


def _check_nesting(root: object, limit: int) -> None:
    """Refuse containers nested deeper than `limit`, counted along the
    longest path (a shared container once per path): what reads the object
    later (its tree, its YAML, the writer) walks it recursively.

    Iterative, and each container is visited once: heights are kept by id.
    """
    if not isinstance(root, _CONTAINERS):
        return
    height: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, _children(root))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            if isinstance(child, _CONTAINERS) and id(child) not in height and id(child) not in on_path:
                if len(stack) >= limit:
                    raise PickleError(f"containers nested deeper than {limit} (-o max_pickle_nesting raises the limit)")
                on_path.add(id(child))
                stack.append((child, _children(child)))
                break
        else:
            stack.pop()
            on_path.discard(id(node))
            below = [height.get(id(c), 0) for c in _children(node) if isinstance(c, _CONTAINERS)]
            height[id(node)] = 1 + max(below, default=0)
            if height[id(node)] > limit:
                raise PickleError(f"containers nested deeper than {limit} (-o max_pickle_nesting raises the limit)")
