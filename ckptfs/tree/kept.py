"""Values computed on read and kept for the next reads (a block of
dequantized rows, a LoRA factor read whole), shared by every file of a
mount: the least recently used are dropped first, so memory stays within
`limit` bytes however many files are read (the last value made is always
kept, whatever its size)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable


class Kept:
    def __init__(self, limit: int, size: Callable[[object], int]):
        self.limit, self._size = limit, size
        self._values: OrderedDict[Hashable, object] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], object]):
        """The value kept for `key`, else `make()`'s, kept."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()  # outside the lock: another file's read need not wait for this one
        with self._lock:
            if key not in self._values:
                self._values[key] = value
                self._bytes += self._size(value)
            while self._bytes > self.limit and len(self._values) > 1:
                _, dropped = self._values.popitem(last=False)
                self._bytes -= self._size(dropped)
        return value
