"""The cache below remote sources: an object's bytes in pages of PAGE bytes,
kept in memory (least recently used out first, within `memory_bytes`) and,
if there is a disk cache, on disk across mounts.

A read asks for the pages it covers. Pages in memory or on disk are used as
they are; the rest are fetched in runs of consecutive pages, one range
request per run of at most `block_bytes`, the runs of one read in parallel.
A page another thread is already fetching is waited for, not fetched again.
`prefetch` starts the same fetches without waiting for them. A page whose
fetch stalled (or found the object changed) is not asked for again for
`failed_for` seconds: reads of it fail at once, with the same error. The
kernel reads a page again as soon as its read-ahead failed, and a reader
may retry in a loop; neither should wait out a server's stall once more.
A fetch that failed at once (a reset, a 503) is asked for again on the
next read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ..errors import CkptfsError, SourceChangedError
from .stall import Stalled

log = logging.getLogger(__name__)

PAGE = 64 << 10
DEFAULT_BLOCK = 8 << 20
DEFAULT_MEMORY = 256 << 20
DEFAULT_DISK = 2 << 30
WORKERS = 8
#: the disk cache is trimmed to its limit after it has taken this many bytes
TRIM_EVERY = 256 << 20

#: (start, end) -> the bytes: one range request of an object
Fetch = Callable[[int, int], bytes]


class PageCache:
    """The pages of the remote objects of one mount."""

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY, block_bytes: int = DEFAULT_BLOCK,
                 disk: DiskCache | None = None, workers: int = WORKERS, failed_for: float = 0.0):
        self.memory_bytes = max(memory_bytes, PAGE)
        self.block_pages = max(1, block_bytes // PAGE)
        self.disk = disk
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="ckptfs-fetch")
        self.lock = threading.Lock()
        self.pages: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.held = 0
        self.fetching: dict[tuple[str, int], Future] = {}
        #: (key, page) -> (until when, by time.monotonic(), the error of the fetch that failed)
        self.failed: dict[tuple[str, int], tuple[float, BaseException]] = {}
        self.failed_for = failed_for
        #: requests and bytes fetched, for the user (.ckptfs/info.yaml) and the tests
        self.requests = 0
        self.fetched = 0

    def after_fork(self) -> None:
        """In a forked child: new workers and locks (the parent's threads are gone)."""
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="ckptfs-fetch")
        self.lock = threading.Lock()
        self.fetching = {}
        if self.disk:
            self.disk.lock = threading.Lock()

    def read(self, key: str, size: int, fetch: Fetch, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the object `key` of `size` bytes."""
        end = min(size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // PAGE, (end - 1) // PAGE
        futures = self._request(key, size, fetch, first, last + 1)
        parts = [f.result() if isinstance(f, Future) else f for f in futures]
        data = b"".join(parts)
        skip = offset - first * PAGE
        return data[skip: skip + end - offset]

    def prefetch(self, key: str, size: int, fetch: Fetch, offset: int, length: int) -> None:
        """Start fetching the pages of [offset, offset + length) that are not here."""
        end = min(size, offset + length)
        if offset < end:
            self._request(key, size, fetch, offset // PAGE, (end - 1) // PAGE + 1)

    def _request(self, key: str, size: int, fetch: Fetch, first: int, stop: int) -> list:
        """Each page of [first, stop): its bytes, or a future of them."""
        out: list = []
        missing: list[int] = []
        now = time.monotonic()
        with self.lock:
            for index in range(first, stop):
                data = self.pages.get((key, index))
                if data is not None:
                    self.pages.move_to_end((key, index))
                    out.append(data)
                    continue
                failure = self.failed.get((key, index))
                if failure is not None and failure[0] > now:
                    out.append(_failed(failure[1]))
                    continue
                future = self.fetching.get((key, index))
                if future is None:
                    future = self.fetching[(key, index)] = Future()
                    missing.append(index)
                out.append(future)
        for run in _runs(missing, self.block_pages):
            self.pool.submit(self._fill, key, size, fetch, run)
        return out

    def _fill(self, key: str, size: int, fetch: Fetch, run: list[int]) -> None:
        """Get the pages of `run` (consecutive) from disk or with one request."""
        try:
            found = {i: self.disk.get(key, i) for i in run} if self.disk else {}
            wanted = [i for i in run if found.get(i) is None]
            for part in _runs(wanted, self.block_pages):
                start, end = part[0] * PAGE, min(size, (part[-1] + 1) * PAGE)
                data = fetch(start, end)
                with self.lock:
                    self.requests += 1
                    self.fetched += len(data)
                for i in part:
                    found[i] = data[(i - part[0]) * PAGE: (i - part[0] + 1) * PAGE]
                    if self.disk:
                        self.disk.put(key, i, found[i])
        except BaseException as e:
            now = time.monotonic()
            with self.lock:
                self.failed = {page: failure for page, failure in self.failed.items() if failure[0] > now}
                for i in run:
                    if self.failed_for > 0 and isinstance(e, (Stalled, SourceChangedError)):
                        self.failed[(key, i)] = (now + self.failed_for, e)
                    self.fetching.pop((key, i)).set_exception(e)
            return
        with self.lock:
            for i in run:
                self.failed.pop((key, i), None)
                self.pages[(key, i)] = found[i]
                self.held += len(found[i])
                self.fetching.pop((key, i)).set_result(found[i])
            while self.held > self.memory_bytes and self.pages:
                _, dropped = self.pages.popitem(last=False)
                self.held -= len(dropped)


def _failed(error: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def _runs(indexes: list[int], most: int) -> list[list[int]]:
    """Sorted page numbers as runs of consecutive ones, each of at most `most`."""
    runs: list[list[int]] = []
    for i in indexes:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < most:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class DiskCache:
    """Pages of remote objects on disk, one folder per object version (its
    URL and ETag hashed): `data` holds the pages at their offsets (a sparse
    file), `pages` logs each page's number and CRC-32 once written, so a page
    is used only when whole and right. The least recently used objects go
    when the folder passes `limit` bytes."""

    RECORD = struct.Struct("<QI")

    def __init__(self, root: str, limit: int = DEFAULT_DISK):
        self.root, self.limit = root, limit
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.lock = threading.Lock()
        self.open: dict[str, tuple[int, int, dict[int, int]]] = {}  # key -> (data fd, log fd, page -> crc)
        self.written = 0  # bytes put since the cache was last trimmed
        self._evict()

    def _folder(self, key: str) -> str:
        return os.path.join(self.root, hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40])

    def _files(self, key: str) -> tuple[int, int, dict[int, int]]:
        with self.lock:
            if key in self.open:
                return self.open[key]
            folder = self._folder(key)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.utime(folder)  # used now: the last to go
            data = os.open(os.path.join(folder, "data"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            pages = os.open(os.path.join(folder, "pages"), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            known: dict[int, int] = {}
            raw = os.pread(pages, os.fstat(pages).st_size, 0)
            for at in range(0, len(raw) - self.RECORD.size + 1, self.RECORD.size):
                index, crc = self.RECORD.unpack_from(raw, at)
                known[index] = crc
            self.open[key] = (data, pages, known)
            return self.open[key]

    def get(self, key: str, index: int) -> bytes | None:
        data, _, known = self._files(key)
        crc = known.get(index)
        if crc is None:
            return None
        page = os.pread(data, PAGE, index * PAGE)
        if zlib.crc32(page) != crc:  # cut short or damaged (a crash, a full disk): fetched again
            return None
        return page

    def put(self, key: str, index: int, page: bytes) -> None:
        data, pages, known = self._files(key)
        try:
            os.pwrite(data, page, index * PAGE)
            os.write(pages, self.RECORD.pack(index, zlib.crc32(page)))
        except OSError as e:  # a full disk costs the cache, not the read
            log.warning("disk cache %s: %s; pages are not kept", self.root, e.strerror)
            return
        known[index] = zlib.crc32(page)
        with self.lock:
            self.written += len(page)
            trim, self.written = self.written >= TRIM_EVERY, self.written % TRIM_EVERY
        if trim:
            for key in list(self.open):  # the objects in use are the last to go
                try:
                    os.utime(self._folder(key))
                except OSError:
                    pass
            self._evict()

    def whole(self, key: str, size: int, download: Callable[[int], None]) -> tuple[int, bool]:
        """A descriptor of the object `key` kept whole on disk, and whether it
        was downloaded now: `download(fd)` writes its `size` bytes into a
        file of its own, renamed into place once written and flushed, so a
        copy that is there is complete. Refused (CkptfsError) before any
        byte is fetched when the object is larger than the cache's bound or
        than the free space of its file system."""
        folder = self._folder(key)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, "whole")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0 and os.fstat(fd).st_size == size:
            os.utime(folder)  # used now: the last to go
            return fd, False
        if fd >= 0:
            os.close(fd)
        fs = os.statvfs(folder)
        free = fs.f_bavail * fs.f_frsize
        if size > self.limit or size > free:
            bound = f"the disk cache's bound ({self.limit:,} bytes; -o cache_disk= raises it)" if size > self.limit \
                else f"the free space of {self.root} ({free:,} bytes)"
            raise CkptfsError(f"{key.partition(chr(0))[0]}: {size:,} bytes, more than {bound}")
        fd, part = tempfile.mkstemp(prefix="whole.", suffix=".part", dir=folder)
        try:
            download(fd)
            os.fsync(fd)
            os.replace(part, path)
        except BaseException:
            os.close(fd)
            os.unlink(part)
            raise
        os.utime(folder)
        self._evict()
        return fd, True

    def _evict(self) -> None:
        """Remove the least recently used objects' folders while the cache
        holds more than `limit` bytes (when a mount starts, and after each
        TRIM_EVERY bytes it takes). An object still in use keeps its open
        files: its pages stay readable by this process."""
        try:
            folders = [os.path.join(self.root, n) for n in os.listdir(self.root)]
        except OSError:
            return
        sized = []
        for folder in folders:
            try:
                used = sum(os.stat(os.path.join(folder, f)).st_blocks * 512 for f in os.listdir(folder))
                sized.append((os.stat(folder).st_mtime, used, folder))
            except OSError:
                continue
        total = sum(used for _, used, _ in sized)
        for _, used, folder in sorted(sized):
            if total <= self.limit:
                break
            for name in ("data", "pages", "whole"):
                try:
                    os.remove(os.path.join(folder, name))
                except OSError:
                    pass
            try:
                os.rmdir(folder)
            except OSError:
                pass
            total -= used
