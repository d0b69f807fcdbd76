"""Edits of a writable mount, kept on disk beside the source (docs/writing.md).

    <dir>/.<name>.ckptfs/     the overlay of <dir>/<name>, made on the first edit
        state.json            the source's identity at mount (device, inode, size, mtime)
        journal               one line per change of the tree, in order: CRC-32, JSON
        data/<n>              the bytes of new and edited files

A writable mount holds a lock (flock) on `<dir>/.<name>.ckptfs.lock`, beside
the overlay, so a second writable mount of the same source is refused, from
this host or another that shares the file system.

The overlay is made with mode 0700 and its files 0600, without following
links; an overlay, lock or file in it that is a link, another user's, or
open to others is refused (write/owned.py), so nobody who can write in the
source's folder can redirect the edits or have forged ones written in.

Nothing is kept only in memory: a write is in `data/<n>` and a change of the
tree is in the journal before the call returns, so both survive the daemon
being killed; `fsync` makes them survive a power loss too. Replaying the
journal on the tree of the unchanged source rebuilds the edited tree
(`ckptfs recover`).

An edited file that existed in the source is copied up block by block: the
first write to a block copies that block of the source into the data file
(a sparse file of the same length), so patching a few bytes of a large
tensor costs a block, not the tensor.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import zlib

from ..errors import CkptfsError, EditsWaiting
from ..pack.changes import TEMP_PATTERNS
from ..pack.crc import RunningCrc
from ..pack.output import source_identity
from ..sources import pathnames
from ..sources.base import Source
from ..sources.cachedir import default_cache_dir
from ..sources.location import location
from ..sources.settings import SETTINGS
from ..tree.nodes import Content
from . import owned

log = logging.getLogger(__name__)

BLOCK = 1 << 16

def overlay_dir(source: str) -> str:
    parent, name = os.path.split(_local_stand_in(source))
    return os.path.join(parent, pathnames.beside(name, ".ckptfs"))


def _local_stand_in(source: str) -> str:
    """Where a source's overlay and lock go beside: the source itself, or,
    for a remote one, a path named after it in the overlays folder
    (`--overlay-dir`, by default ~/.cache/ckptfs/edits, whatever `--cache-dir`
    says, so that `recover` finds it), one subfolder per URL."""
    if location(source).local:
        return os.path.abspath(source)
    root = SETTINGS.overlays
    if not root:
        root = os.path.join(default_cache_dir(), "edits")
    name = source.rstrip("/").rpartition("/")[2][:100] or "source"  # for people to read; the hash tells URLs apart
    return os.path.join(root, hashlib.sha256(os.fsencode(source)).hexdigest()[:16], name)


def mounted_identity(path: str) -> dict:
    """The source's identity as this process read it: a remote one's as it
    was pinned when opened, with no request again."""
    return location(path).pinned() or source_identity(path)


def _identity_in(state: dict, source: str) -> dict:
    """The identity an overlay's state.json recorded (KeyError, ValueError if damaged)."""
    return {name: kind(state[name]) for name, kind in location(source).identity_fields.items()}


class EditedSource(Source):
    """An edited file as a source (for the views that describe it)."""

    def __init__(self, content: EditedContent):
        self.content = content

    @property
    def path(self) -> str:  # type: ignore[override]
        return "(edited; in the overlay)"

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.content.size

    def pread(self, offset: int, length: int) -> bytes:
        return self.content.read(offset, length)


class EditedContent:
    """A file's bytes after edits: the data file where written, the source's
    content (`base`) elsewhere. The data file's length is the file's length."""

    edited = True

    def __init__(self, fd: int, number: int, base: Content | None, fresh: bool = False):
        self.fd, self.number, self.base = fd, number, base
        self.base_size = base.size if base is not None else 0
        self.dirty: set[int] = set()  # blocks of `base` copied into the data file
        self.whole = base is None  # every byte is in the data file
        #: the CRC-32 of the bytes written from offset 0, as they were written (a
        #: zip writer's record CRC without reading them again); unknown for
        #: a data file an earlier mount wrote
        self.written_crc = RunningCrc(known=fresh)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    @property
    def slow(self) -> bool:
        return False

    def _from_data(self, block: int) -> bool:
        return self.whole or block in self.dirty or block * BLOCK >= self.base_size

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        parts, pos = [], offset
        while pos < end:
            block = pos // BLOCK
            stop = min(end, (block + 1) * BLOCK)
            if self._from_data(block):
                parts.append(os.pread(self.fd, stop - pos, pos))
            else:
                parts.append(self.base.read(pos, min(stop, self.base_size) - pos))
                if stop > self.base_size:  # past the source's end: from the (sparse) data file
                    parts.append(os.pread(self.fd, stop - self.base_size, self.base_size))
            pos = stop
        return b"".join(parts)

    def crc32(self, offset: int, length: int) -> int | None:
        """The CRC-32 of `length` bytes from `offset`, if the writes made them
        all, in an order that kept it, up to the end of the file; else None."""
        return self.written_crc.of_range(offset, offset + length, self.size, self.read)

    def in_data_file(self, offset: int, length: int) -> int | None:
        """The data file's descriptor, if it holds every one of these bytes
        (so that they can be copied from it file to file)."""
        if self.whole and offset + length <= self.size:
            return self.fd
        return None

    def blocks_to_copy(self, offset: int, length: int) -> list[int]:
        if self.whole:
            return []
        first, last = offset // BLOCK, (offset + max(length, 1) - 1) // BLOCK
        return [b for b in range(first, last + 1) if not self._from_data(b)]

    def copy_up(self, blocks: list[int]) -> None:
        for b in blocks:
            start = b * BLOCK
            data = self.base.read(start, min(BLOCK, self.base_size - start))
            os.pwrite(self.fd, data, start)
            self.dirty.add(b)


class Overlay:
    """The on-disk overlay of one source. Its directory is made on the first
    edit, so a writable mount that changes nothing leaves no trace. Its
    files are reached only through descriptors of folders checked to be
    this user's own (write/owned.py): a link or a forged overlay planted
    beside the source is refused, never followed or resumed."""

    def __init__(self, source: str, lock: _Lock, ignored: tuple[str, ...] = TEMP_PATTERNS):
        self.source, self.path = location(source).text, overlay_dir(source)
        self.lock = lock
        self.name = os.path.basename(self.path)
        self.identity = mounted_identity(source)
        self.ignored = ignored  # names of temporary files, never packed (kept for `recover`)
        self.fd: int | None = None  # the overlay's folder, once made
        self.data_fd: int | None = None
        self.journal_fd: int | None = None
        self.next_number = 0

    @classmethod
    def create(cls, source: str, ignored: tuple[str, ...] = TEMP_PATTERNS) -> Overlay:
        """The overlay of a writable mount; CkptfsError if another writable
        mount holds the lock, if edits of an earlier mount wait, or if what
        stands where the overlay goes is not this user's own."""
        path = overlay_dir(source)
        lock = _Lock.take(source)
        try:
            existing = owned.folder(lock.folder, os.path.basename(path), path, create=False)
            if existing is not None:
                try:
                    waiting = _journal_size(existing, path) > 0
                finally:
                    os.close(existing)
                if waiting:
                    raise EditsWaiting(f"{source}: edits of an earlier mount are waiting in {path}")
        except BaseException:
            lock.release()
            raise
        return cls(source, lock, ignored)

    @classmethod
    def reopen(cls, source: str) -> tuple[Overlay, list[dict]]:
        """The overlay an earlier mount left, and its journal records."""
        overlay = cls._waiting(source)
        path = overlay.path
        try:
            records = parse_journal(owned.read(overlay.fd, "journal", f"{path}/journal"), f"{path}/journal")
            state = json.loads(owned.read(overlay.fd, "state.json", f"{path}/state.json"))
            overlay.identity = _identity_in(state, source)
            overlay.ignored = tuple(state.get("ignored", TEMP_PATTERNS))
            overlay.data_fd = owned.folder(overlay.fd, "data", f"{path}/data", create=False)
            if overlay.data_fd is None:
                raise CkptfsError(f"{path}/data: missing")
        except owned.NotOwned:
            overlay.release()
            raise
        except (OSError, ValueError, KeyError, TypeError, CkptfsError) as e:
            overlay.release()
            raise CkptfsError(f"{path}: the edits cannot be read back ({e}); drop them: ckptfs recover {source}"
                              " --discard") from None
        overlay.journal_fd = owned.file(overlay.fd, "journal", f"{path}/journal", os.O_WRONLY | os.O_APPEND)
        numbers = [r["file"] for r in records if "file" in r]
        overlay.next_number = max(numbers, default=-1) + 1
        return overlay, records

    @classmethod
    def _waiting(cls, source: str) -> Overlay:
        """The overlay an earlier mount left, opened and locked (its records unread)."""
        path = overlay_dir(source)
        lock = _Lock.take(source, waiting=True)
        try:
            fd = owned.folder(lock.folder, os.path.basename(path), path, create=False)
        except BaseException:
            lock.release()
            raise
        if fd is None:
            lock.release()
            raise CkptfsError(f"{source}: no edits are waiting ({path} does not exist)")
        overlay = cls(source, lock)
        overlay.fd = fd
        return overlay

    @classmethod
    def discard_waiting(cls, source: str, also=None) -> None:
        """Drop the overlay an earlier mount left, whatever state it is in
        (a journal or state file cut short by a full disk included), and
        run `also()` while the lock is held. An overlay that is not this
        user's own is refused, as everywhere."""
        overlay = cls._waiting(source)
        if also is not None:
            try:
                also()
            except BaseException:
                overlay.release()
                raise
        overlay.remove()

    @property
    def exists(self) -> bool:
        return self.journal_fd is not None

    def _ensure(self) -> None:
        if self.journal_fd is None:
            self.fd = owned.folder(self.lock.folder, self.name, self.path, create=True)
            self.data_fd = owned.folder(self.fd, "data", f"{self.path}/data", create=True)
            self._write_state({"source": self.source, **self.identity, "ignored": list(self.ignored)})
            self.journal_fd = owned.file(self.fd, "journal", f"{self.path}/journal",
                                         os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.fsync(self.fd)
            os.fsync(self.lock.folder)

    def _write_state(self, doc: dict) -> None:
        fd = owned.file(self.fd, "state.json.tmp", f"{self.path}/state.json.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace("state.json.tmp", "state.json", src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def record(self, **fields) -> None:
        """Append one change to the journal, whole or not at all: a write cut
        short (a full disk) is taken back and its error raised, so the journal
        stays a list of complete records."""
        self._ensure()
        line = journal_line(fields)
        end = os.lseek(self.journal_fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self.journal_fd, view):]
        except OSError:
            os.ftruncate(self.journal_fd, end)
            raise

    def data_file(self, number: int, create: bool) -> int:
        self._ensure()
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        return owned.file(self.data_fd, str(number), f"{self.path}/data/{number}", flags)

    def new_content(self, base) -> EditedContent:
        number = self.next_number
        self.next_number += 1
        fd = self.data_file(number, create=True)
        content = EditedContent(fd, number, base, fresh=True)
        if base is not None:
            os.ftruncate(fd, base.size)
        return content

    def fsync(self, content: EditedContent | None = None) -> None:
        if content is not None:
            os.fsync(content.fd)
        if self.journal_fd is not None:
            os.fsync(self.journal_fd)

    def remove(self) -> None:
        """Drop the overlay (after a repack, or on discard) and the lock."""
        if self.fd is not None:
            if owned.same(self.lock.folder, self.name, self.fd):
                _empty(self.fd)
                os.rmdir(self.name, dir_fd=self.lock.folder)
                os.fsync(self.lock.folder)
            else:
                log.warning("%s: no longer the overlay this mount made (moved away?); left as it is", self.path)
        self._close()
        self._unlock()
        _tidy(self.source)

    def release(self) -> None:
        """Keep the overlay for later and let go of the lock."""
        self._close()
        self._unlock()

    def _close(self) -> None:
        for name in ("journal_fd", "data_fd", "fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _empty(folder: int) -> None:
    """Remove everything in the folder open as `folder`, through descriptors
    (so a link put in its place leads nowhere)."""
    for name in os.listdir(folder):
        try:
            os.unlink(name, dir_fd=folder)
        except IsADirectoryError:
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            try:
                _empty(inner)
            finally:
                os.close(inner)
            os.rmdir(name, dir_fd=folder)


def _journal_size(overlay: int, path: str) -> int:
    """The size of an overlay's journal (0 when it has none)."""
    try:
        fd = owned.file(overlay, "journal", f"{path}/journal", os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _tidy(source: str) -> None:
    """A remote source's folder in the overlays folder goes once its overlay
    and lock are gone (it stays while either is there)."""
    if location(source).remote:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(overlay_dir(source)))


def journal_line(fields: dict) -> bytes:
    """One journal record: the CRC-32 of its JSON in hex, a space, the JSON."""
    body = json.dumps(fields, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def parse_journal(data: bytes, path: str) -> list[dict]:
    """The records of a journal (`path` names it in messages). A last record
    cut short or damaged (a crash in the middle of it) is a change that never
    completed: left out, with a warning. A damaged record before the last is
    an error."""
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a record cut short
    records = []
    for number, line in enumerate(lines, 1):
        record = _record(line)
        if record is None and number < len(lines):
            raise CkptfsError(f"{path}: record {number} of {len(lines)} is damaged")
        if record is None:
            torn = line
            break
        records.append(record)
    if torn:
        log.warning("%s: its last record was cut short (a crash while writing it); that change is left out", path)
    return records


def _record(line: bytes) -> dict | None:
    if line.startswith(b"{"):  # written before records had a checksum
        body = line
    else:
        crc, _, body = line.partition(b" ")
        if crc != b"%08x" % zlib.crc32(body):
            return None
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class _Lock:
    """The lock a writable mount of a source holds (flock on
    `.NAME.ckptfs.lock` beside the overlay), and a descriptor of the folder
    both are in."""

    def __init__(self, folder: int, name: str, fd: int):
        self.folder, self.name, self.fd = folder, name, fd

    @classmethod
    def take(cls, source: str, waiting: bool = False) -> _Lock:
        """The lock of `source`, held; CkptfsError if another process holds
        it. The holder removes it when done, so a lock taken on a file
        already removed is let go and taken again on the new one."""
        path = lock_path(source)
        folder, name = _holding_folder(source), os.path.basename(path)
        try:
            while True:
                fd = owned.file(folder, name, path, os.O_RDWR | os.O_CREAT)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise CkptfsError(f"{source}: mounted writable; unmount it first" if waiting
                                      else f"{source}: already mounted writable elsewhere") from None
                if owned.same(folder, name, fd):
                    return cls(folder, name, fd)
                os.close(fd)
        except BaseException:
            os.close(folder)
            raise

    def release(self) -> None:
        """Remove the lock file while held (whoever opened it meanwhile finds
        it gone and takes a new one), unless it is gone already: a mount's
        daemon and the command that forked it share the lock, and either may
        be the one to let go of a mount that failed."""
        if owned.same(self.folder, self.name, self.fd):
            os.unlink(self.name, dir_fd=self.folder)
        os.close(self.fd)
        os.close(self.folder)


def _holding_folder(source: str) -> int:
    """A descriptor of the folder an overlay and its lock are in: the
    source's own, or for a remote source its folder in the overlays folder
    (made on first use, this user's own)."""
    parent = os.path.dirname(overlay_dir(source))
    if location(source).local:
        return owned.open_folder(parent)
    root, name = os.path.split(parent)
    os.makedirs(root, mode=0o700, exist_ok=True)
    top = owned.open_folder(root)
    try:
        return owned.folder(top, name, parent, create=True)
    finally:
        os.close(top)


def lock_path(source: str) -> str:
    """The lock a writable mount of `source` holds: beside the overlay, on the
    source's file system, so that every host and container that sees the
    source sees the lock (one in each's own /run would not keep two of them
    from sharing one overlay)."""
    parent, name = os.path.split(_local_stand_in(source))
    return os.path.join(parent, pathnames.beside(name, ".ckptfs.lock"))
