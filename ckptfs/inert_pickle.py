"""An inert pickle interpreter: reads any protocol (0-5), runs nothing.

Opcodes are decoded with `pickletools`' argument readers, which only parse. Nothing named in
the pickle is imported or called: a global is a `Global` placeholder, and
REDUCE, NEWOBJ, INST/OBJ and BUILD record what would have been called as a
`Call`. A `recognize(global, args)` hook may turn calls of known constructors
(OrderedDict, tensor rebuilds, NumPy arrays...) into plain values, again by
table lookup, without executing anything.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass, field

MAX_OPS = 50_000_000
MAX_MEMO = 10_000_000


class PickleError(Exception):
    """The pickle is malformed or exceeds the interpreter's limits."""


@dataclass(frozen=True)
class Global:
    """A reference to `module.name` that the pickle would have imported."""

    module: str
    name: str

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Call:
    """A call the pickle asked for and we did not make: `func(*args, **kwargs)`,
    then `__setstate__(state)` and appended items, all kept as data."""

    func: object
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    state: object = None
    items: list = field(default_factory=list)
    dictitems: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.func.path if isinstance(self.func, Global) else repr(self.func)


class PickledDict(dict):
    """A dict subclass instance (OrderedDict): its items, plus the instance
    attributes BUILD gave it (a state dict's `_metadata`), kept apart."""

    def __init__(self, *args):
        super().__init__(*args)
        self.attributes: dict = {}


@dataclass(frozen=True)
class Persistent:
    """A persistent id that no `persistent_load` resolved."""

    pid: object


class _Mark:
    pass


_MARK = _Mark()


class InertUnpickler:
    """`load()` returns the object; `globals` lists every global referenced,
    in order of first use: what `pickle.load` would have imported."""

    def __init__(self, data: bytes | io.BytesIO, *, persistent_load=None, recognize=None):
        # a stream is left just after the pickle's STOP, for formats that
        # write several pickles back to back
        self.stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
        self.persistent_load = persistent_load or Persistent
        self.recognize = recognize or (lambda g, args: NotImplemented)
        self.globals: list[Global] = []
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}

    def load(self) -> object:
        read = self.stream.read
        try:
            for count in range(MAX_OPS):
                code = read(1)
                entry = _OPCODES.get(code)
                if entry is None:
                    raise PickleError("pickle ended without STOP" if not code else f"unknown opcode {code!r}")
                name, reader, handler = entry
                arg = reader(self.stream) if reader else None
                if handler is None:  # STOP
                    if len(self.stack) != 1 or self.marks:
                        raise PickleError(f"STOP with {len(self.stack)} items on the stack")
                    return self.stack.pop()
                handler(self, arg)
            raise PickleError(f"more than {MAX_OPS} opcodes")
        except PickleError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, EOFError, UnicodeDecodeError, AttributeError) as e:
            raise PickleError(f"malformed pickle ({type(e).__name__}: {e})") from None

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
        if g not in self.globals:
            self.globals.append(g)
        return g

    def _call(self, func: object, args: tuple, kwargs: dict | None = None) -> object:
        if isinstance(func, Global) and not kwargs:
            builtin = _BUILTINS.get((func.module, func.name))
            value = builtin(args) if builtin else self.recognize(func, args)
            if value is not NotImplemented:
                return value
        return Call(func, tuple(args), kwargs or {})

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
        if isinstance(arg, bytes):
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
        self._setitems(self.stack[-1], list(zip(items[::2], items[1::2])))

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
        if len(self.memo) >= MAX_MEMO:
            raise PickleError(f"memo larger than {MAX_MEMO} entries")
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
        module, name = arg.split(" ", 1)
        self._push(self._global(module, name))

    def op_STACK_GLOBAL(self, arg):
        name = self.stack.pop()
        module = self.stack.pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise PickleError("STACK_GLOBAL needs two strings")
        self._push(self._global(module, name))

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
        self._push(self._call(cls, tuple(args)))

    def op_NEWOBJ_EX(self, arg):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._push(self._call(cls, tuple(args), dict(kwargs)))

    def op_INST(self, arg):
        module, name = arg.split(" ", 1)
        self._push(self._call(self._global(module, name), tuple(self._pop_mark())))

    def op_OBJ(self, arg):
        items = self._pop_mark()
        self._push(self._call(items[0], tuple(items[1:])))

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


#: opcode byte -> (name, argument reader from pickletools, handler); STOP has no handler.
#: Opcodes without a handler here (NEXT_BUFFER, READONLY_BUFFER: out-of-band
#: buffers) are refused as unknown.
_OPCODES = {
    op.code.encode("latin-1"): (op.name, op.arg.reader if op.arg else None, vars(InertUnpickler).get("op_" + op.name))
    for op in pickletools.opcodes
    if op.name == "STOP" or "op_" + op.name in vars(InertUnpickler)
}


def _encode(args: tuple) -> object:
    """`_codecs.encode(text, "latin1")`: how protocols 0-2 spell bytes."""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    return NotImplemented


def _reconstructor(args: tuple) -> object:
    """`copyreg._reconstructor(cls, object, None)`: protocol 0-1 object creation."""
    if len(args) == 3 and isinstance(args[0], Global):
        return Call(args[0])
    return NotImplemented


def _container(kind):
    def build(args: tuple) -> object:
        if len(args) > 1:
            return NotImplemented
        items = args[0] if args else ()
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
    })  # fmt: skip


def _hashable(key):
    """Keys that Python could not hash (a list, a placeholder dict) keep
    their place as a tuple or an identity-hashed placeholder."""
    try:
        hash(key)
        return key
    except TypeError:
        return tuple(key) if isinstance(key, list) else Persistent(repr(key))
