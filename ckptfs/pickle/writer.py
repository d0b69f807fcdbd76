"""Writes an inert object graph (from `inert_pickle`) back as a protocol 2
pickle, the protocol torch.save uses.

Placeholders become the opcodes they were read from: a `Global` is a
GLOBAL, a `Call` a REDUCE or NEWOBJ with its state (BUILD) and items, a
value with `pickled` (a tensor, an OrderedDict, a torch.Size) the call that
made it, a storage its persistent id. Shared and cyclic references stay
shared through the memo, as pickle writes them. Nothing is imported.
"""

from __future__ import annotations

import pickle
import struct

from .inert import Call, Global, Persistent, PickledDict, Rebuilt, Unhashable
from .torch_classes import StorageRef

BATCH = 1000  # items per APPENDS / SETITEMS, as pickle writes them


class PickleWriteError(Exception):
    """The graph holds a value protocol 2 cannot spell."""


def dumps(obj: object, storage_pid=None) -> bytes:
    """The protocol 2 pickle of `obj`. `storage_pid(ref)` gives a storage's
    persistent id (default: as it was read; the legacy format adds a view)."""
    writer = _Writer(storage_pid or (lambda ref: ref.pid))
    writer.out += pickle.PROTO + b"\x02"
    try:
        writer.save(obj)
    except RecursionError:
        raise PickleWriteError("objects nested too deeply to write") from None
    writer.out += pickle.STOP
    return bytes(writer.out)


class _Writer:
    def __init__(self, storage_pid):
        self.storage_pid = storage_pid
        self.out = bytearray()
        self.memo: dict[int, int] = {}
        self.alive: list = []  # keeps memoized objects alive, so no id is reused

    def save(self, obj: object) -> None:
        index = self.memo.get(id(obj))
        if index is not None:
            self._get(index)
            return
        if obj is None:
            self.out += pickle.NONE
        elif obj is True or obj is False:
            self.out += pickle.NEWTRUE if obj else pickle.NEWFALSE
        elif type(obj) is int:
            self._int(obj)
        elif type(obj) is float:
            self.out += pickle.BINFLOAT + struct.pack(">d", obj)
        elif type(obj) is str:
            data = obj.encode("utf-8", "surrogatepass")
            self.out += pickle.BINUNICODE + struct.pack("<I", len(data)) + data
            self._memoize(obj)
        elif type(obj) is tuple:
            self._tuple(obj)
        elif type(obj) is list:
            self.out += pickle.EMPTY_LIST
            self._memoize(obj)
            self._batched(obj, pickle.APPEND, pickle.APPENDS)
        elif type(obj) is dict:
            self.out += pickle.EMPTY_DICT
            self._memoize(obj)
            self._items(obj)
        elif isinstance(obj, Rebuilt) and obj.pickled is not None:
            self._rebuilt(obj)
        elif isinstance(obj, Call):
            self._call(obj, obj)
        elif isinstance(obj, Global):
            self.out += pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8")
            self._memoize(obj)
        elif isinstance(obj, StorageRef):
            self.save(self.storage_pid(obj))
            self.out += pickle.BINPERSID
        elif isinstance(obj, Persistent):
            self.save(obj.pid)
            self.out += pickle.BINPERSID
        elif isinstance(obj, Unhashable):  # a key as the pickle had it
            self.save(obj.key)
        elif type(obj) in (bytes, bytearray, set, frozenset, complex):
            self._builtin(obj)
        else:
            raise PickleWriteError(f"cannot write a {type(obj).__name__} value")

    # -- helpers
    def _memoize(self, obj: object) -> None:
        index = len(self.memo)
        self.memo[id(obj)] = index
        self.alive.append(obj)
        self.out += pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)

    def _get(self, index: int) -> None:
        self.out += pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)

    def _int(self, n: int) -> None:
        if 0 <= n < 256:
            self.out += pickle.BININT1 + bytes([n])
        elif 0 <= n < 65536:
            self.out += pickle.BININT2 + struct.pack("<H", n)
        elif -(2**31) <= n < 2**31:
            self.out += pickle.BININT + struct.pack("<i", n)
        else:
            data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += pickle.LONG1 + bytes([len(data)]) + data if len(data) < 256 else \
                pickle.LONG4 + struct.pack("<i", len(data)) + data

    def _tuple(self, items: tuple) -> None:
        if not items:
            self.out += pickle.EMPTY_TUPLE
            return
        if len(items) > 3:
            self.out += pickle.MARK
        for item in items:
            self.save(item)
        if id(items) in self.memo:  # reached again through its own items: pickle's way out
            pops = pickle.POP_MARK if len(items) > 3 else pickle.POP * len(items)
            self.out += pops
            self._get(self.memo[id(items)])
            return
        self.out += {1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}.get(len(items), pickle.TUPLE)
        self._memoize(items)

    def _batched(self, items: list, one: bytes, many: bytes) -> None:
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            if len(batch) == 1:
                self.save(batch[0])
                self.out += one
                continue
            self.out += pickle.MARK
            for item in batch:
                self.save(item)
            self.out += many

    def _items(self, mapping: dict) -> None:
        pairs = list(mapping.items())
        for start in range(0, len(pairs), BATCH):
            batch = pairs[start : start + BATCH]
            if len(batch) > 1:
                self.out += pickle.MARK
            for key, value in batch:
                self.save(key)
                self.save(value)
            self.out += pickle.SETITEMS if len(batch) > 1 else pickle.SETITEM

    def _call(self, call: Call, obj: object) -> None:
        """`obj` as made by `call`: func, arguments, REDUCE or NEWOBJ, then
        its items and state. (A NEWOBJ_EX call becomes copyreg.__newobj_ex__.)"""
        if call.kwargs:
            self.save(Global("copyreg", "__newobj_ex__"))
            self.save((call.func, tuple(call.args), call.kwargs))
            self.out += pickle.REDUCE
        else:
            self.save(call.func)
            self.save(tuple(call.args))
            self.out += pickle.NEWOBJ if call.kind == "newobj" else pickle.REDUCE
        self._memoize(obj)
        if call.items:
            self._batched(call.items, pickle.APPEND, pickle.APPENDS)
        if call.dictitems:
            self._items(call.dictitems)
        if call.state is not None:
            self.save(call.state)
            self.out += pickle.BUILD

    def _rebuilt(self, obj: Rebuilt) -> None:
        """A value a known constructor built, written as that call: a dict
        subclass then gets its items and attributes back."""
        self._call(obj.pickled, obj)
        if isinstance(obj, PickledDict):
            self._items(obj)
            if obj.attributes:
                self.save(obj.attributes)
                self.out += pickle.BUILD

    def _builtin(self, obj: object) -> None:
        """bytes and sets as protocol 2 spells them: calls of builtins."""
        if type(obj) is bytes:
            call = Call(Global("_codecs", "encode"), (obj.decode("latin-1"), "latin1"))
        elif type(obj) is bytearray:
            call = Call(Global("__builtin__", "bytearray"), (bytes(obj),))
        elif type(obj) is complex:
            call = Call(Global("__builtin__", "complex"), (obj.real, obj.imag))
        else:  # in a fixed order: the same graph gives the same bytes whatever the hash seed
            items = sorted(obj, key=lambda item: (type(item).__name__, repr(item)))
            call = Call(Global("__builtin__", type(obj).__name__), (items,))
        self._call(call, obj)
