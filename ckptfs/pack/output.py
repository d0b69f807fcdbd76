"""Where a format's writer puts the new checkpoint: an output that copies
byte ranges cheaply and streams them to disk as it goes (a gzip one too),
and the atomic swap of the new file or directory for the source.

The new file is written beside the source (same filesystem), fsynced, then
renamed over it, and the directory fsynced. Until that rename the source is
untouched; if anything fails before it, the temp file is removed.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Protocol

from ..errors import CkptfsError, SourceChangedError
from ..sources.base import FileSource, SliceSource, Source
from ..sources.location import location
from ..sources.pathnames import temp_prefix
from ..tree.nodes import Access

#: the end of the name of a checkpoint being written beside its destination (`.NAME.RANDOM.ckptfs-new`)
TEMP_SUFFIX = ".ckptfs-new"
COPY_BLOCK = 8 << 20
#: bytes asked for ahead of a copy from a slow source (a remote one), so
#: that the network fetches the next blocks while one is written
COPY_AHEAD = 4 * COPY_BLOCK


class Blob(Protocol):
    """Bytes a writer makes for a file of the new checkpoint: its size is
    known before they are written (an archive's member header needs it)."""

    size: int

    def write(self, output: Output) -> None: ...


@dataclass(frozen=True)
class ContentBlob:
    """The bytes of a file of the tree (edited, or as the source has them)."""

    content: object

    @property
    def size(self) -> int:
        return self.content.size

    def write(self, output: Output) -> None:
        output.copy_content(self.content)


@dataclass
class Output:
    """The file a writer streams into, with helpers to copy bytes cheaply.
    `progress(written, expected)`, if given, hears of it twice a second."""

    fd: int
    written: int = 0
    progress: object = None
    expected: int = 0
    _reported: float = 0.0
    #: bytes of plain files may be copied file to file by the kernel
    in_kernel = True

    _sent_to_disk: int = 0

    def _advanced(self, n: int) -> None:
        self.written += n
        if self.written - self._sent_to_disk >= WRITEBACK_WINDOW:
            _start_writeback(self.fd, self._sent_to_disk, self.written - self._sent_to_disk)
            self._sent_to_disk = self.written
        if self.progress is not None and time.monotonic() - self._reported > 0.5:
            self._reported = time.monotonic()
            self.progress(self.written, self.expected)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self._advanced(len(data))

    def flush(self) -> None:
        pass

    def copy(self, source: Source, offset: int, length: int) -> None:
        """`length` bytes of `source` from `offset`: `copy_file_range` when they
        lie in a plain file (no trip through user space), else read and write."""
        base, start = _file_range(source, offset) if self.in_kernel else (None, offset)
        if base is not None and self._copy_file_range(base.fd, start, length, base.path):
            return
        for pos in range(0, length, COPY_BLOCK):
            if source.slow:
                source.prefetch(offset + pos + COPY_BLOCK, min(COPY_AHEAD, length - pos - COPY_BLOCK))
            self.write(source.read_exact(offset + pos, min(COPY_BLOCK, length - pos)))

    def _copy_file_range(self, fd: int, offset: int, length: int, path: str) -> bool:
        """Copy in the kernel; False, with nothing copied, where it cannot
        copy between these two files (another file system: EXDEV), so
        that the caller reads and writes them instead."""
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(fd, self.fd, min(COPY_BLOCK, length - done), offset + done)
            except OSError as e:
                if done == 0 and e.errno in _NO_KERNEL_COPY:
                    return False
                raise
            if n == 0:
                raise CkptfsError(f"{path}: ended while copying (changed since mount?)")
            done += n
            self._advanced(n)
        return True

    def copy_content(self, content, offset: int = 0, length: int | None = None) -> None:
        """Bytes of a file of the tree (an edited one, or one of the source):
        file to file by the kernel when an edit's data file holds them all."""
        length = content.size - offset if length is None else length
        in_file = getattr(content, "in_data_file", None)
        fd = in_file(offset, length) if in_file is not None and self.in_kernel else None
        if fd is not None and self._copy_file_range(fd, offset, length, "an edited file's data in the overlay"):
            return
        for pos in range(0, length, COPY_BLOCK):
            self.write(content.read(offset + pos, min(COPY_BLOCK, length - pos)))


#: what copy_file_range says where it cannot copy between two files
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})

#: written bytes are sent to the disk every so often while the copy goes on,
#: so the final fsync has little left to wait for (a third faster here than
#: copying everything, then flushing everything as `cp` + `sync` do)
WRITEBACK_WINDOW = 64 << 20


@functools.cache
def _sync_file_range():
    import ctypes

    function = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Starts writing a range of `fd` to disk, without waiting for it
    (sync_file_range with SYNC_FILE_RANGE_WRITE; nothing where that is missing)."""
    function = _sync_file_range()
    if function is not None and fd >= 0:
        function(fd, offset, length, 2)


def _file_range(source: Source, offset: int) -> tuple[FileSource | None, int]:
    while isinstance(source, SliceSource):
        source, offset = source.parent, source.offset + offset
    return (source, offset) if isinstance(source, FileSource) else (None, offset)


def _check_unchanged(source_path: str, expected_identity: dict, when: str) -> None:
    if source_identity(source_path) != expected_identity:
        raise SourceChangedError(f"{source_path}: changed {when}")


def write_atomically(source_path: str, writer, expected_identity: dict, output_path: str | None = None,
                     backup: bool = False, progress=None) -> str:
    """Run `writer(output)` into a temp file beside the destination, fsync it
    and rename it over the destination (the source unless `output_path`);
    `backup` keeps the source as SOURCE.orig (a hard link). A destination
    on object storage is uploaded instead (pack/upload.py)."""
    _check_unchanged(source_path, expected_identity, "since it was mounted; the edits were not written")
    from_remote = location(source_path).remote
    if backup and from_remote:
        raise CkptfsError(f"{source_path}: --backup keeps a local file only; an object store keeps old versions "
                          "itself if its bucket has versioning on")
    needed = expected_identity["size"]
    if location(output_path or source_path).remote:
        from .upload import upload

        def still_unchanged():
            _check_unchanged(source_path, expected_identity, "while the edits were being written; they were not")

        return upload(output_path or source_path, writer, needed, progress,
                      None if output_path else expected_identity, still_unchanged)
    destination = os.path.abspath(output_path or source_path)
    directory = os.path.dirname(destination)
    fs = os.statvfs(directory)
    free = fs.f_bavail * fs.f_frsize
    if free < needed:
        raise CkptfsError(f"{directory}: {free / 1e6:.0f} MB free, the new checkpoint needs about {needed / 1e6:.0f} MB")
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(os.path.basename(destination), TEMP_SUFFIX), suffix=TEMP_SUFFIX,
                               dir=directory)
    try:
        output = Output(fd, progress=progress, expected=needed)
        writer(output)
        os.fsync(fd)
        if not from_remote:
            keep_owner_and_mode(os.stat(source_path), fd)
        os.close(fd)
        fd = -1
        _check_unchanged(source_path, expected_identity, "while the edits were being written; they were not")
        if backup and not output_path:
            os.link(source_path, _free_name(source_path + ".orig"))
        os.replace(tmp, destination)
        fsync_dir(directory)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return destination


def write_directory_atomically(source_path: str, builder, expected_identity: dict, output_path: str | None = None,
                               backup: bool = False) -> str:
    """Run `builder(new_dir)` on a sibling directory, then swap it with the
    source in one step (renameat2 RENAME_EXCHANGE) and remove the old one
    (or keep it as SOURCE.orig with `backup`), whose files the new one
    hard-links where they did not change."""
    _check_unchanged(source_path, expected_identity, "since it was mounted; the edits were not written")
    from_remote = location(source_path).remote
    if from_remote and not output_path or output_path and location(output_path).remote:
        raise CkptfsError(f"{output_path or source_path}: an edited folder is written to a local path only "
                          "(--output PATH); an object store has no way to switch a folder at once")
    if backup and from_remote:
        raise CkptfsError(f"{source_path}: --backup keeps a local folder only")
    destination = os.path.abspath(output_path or source_path)
    parent = os.path.dirname(destination)
    if output_path and os.path.exists(destination):
        raise CkptfsError(f"{destination}: exists; give a new path for the edited directory")
    new = tempfile.mkdtemp(prefix=temp_prefix(os.path.basename(destination), TEMP_SUFFIX), suffix=TEMP_SUFFIX,
                           dir=parent)
    try:
        builder(new)
        for here, _, _ in os.walk(new):
            fsync_dir(here)
        _check_unchanged(source_path, expected_identity, "while the edits were being written; they were not")
        if output_path:
            os.rename(new, destination)
        else:
            _exchange(new, destination)  # `new` now holds the old directory
            if backup:
                os.rename(new, _free_name(destination + ".orig"))
            else:
                shutil.rmtree(new)
        fsync_dir(parent)
    except BaseException:
        if os.path.isdir(new):
            shutil.rmtree(new)
        raise
    return destination


def keep_owner_and_mode(old: os.stat_result, fd: int) -> None:
    """Give the file (or folder) open as `fd`, written anew, the owner (where
    allowed) and mode of the one it replaces; the owner first, since chown
    clears set-id bits. Through the descriptor: no link is followed."""
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        pass  # not ours to give away: the file stays the writer's
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def created_mode(readers: Access, gid: int) -> int:
    """The mode of a file ckptfs makes of bytes that `readers` say who may
    read (an export, a file new in a repacked folder): its owner reads and
    writes it; others read it only if they may read the source (the group's
    bit only for a file of the source's group): never wider than the
    source."""
    return 0o600 | (readers.read_bits & 0o004) | (readers.read_bits & 0o040 if gid == readers.gid else 0)


def umask() -> int:
    """This process's umask, from /proc (setting it to read it would, for an
    instant, let the daemon's other threads make files open to all)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o077)
        os.umask(mask)
        return mask


def with_search_bits(mode: int) -> int:
    """A folder's mode for files of `mode`: search for whoever may read."""
    return mode | 0o100 | (mode & 0o044) >> 2


def _free_name(path: str) -> str:
    candidate, n = path, 1
    while os.path.lexists(candidate):
        candidate, n = f"{path}.{n}", n + 1
    return candidate


def _exchange(a: str, b: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


class GzipOutput(Output):
    """An output that compresses what it is given: a gzip `.nemo` stays gzip.
    No name and a zero time in the gzip header, so the same tree gives the
    same bytes."""

    in_kernel = False  # every byte goes through the compressor

    def __init__(self, output: Output):
        import gzip

        super().__init__(-1)
        self.gz = gzip.GzipFile(fileobj=output, mode="wb", compresslevel=6, mtime=0)

    def write(self, data: bytes) -> None:
        self.gz.write(data)
        self._advanced(len(data))

    def close(self) -> None:
        self.gz.close()


def source_identity(path: str) -> dict:
    """What tells whether the source changed since mount: a file's device,
    inode, size and mtime; a remote object's size and version (its ETag)."""
    return location(path).identity()


def fsync_dir(path: str) -> None:
    """Make a directory's entries durable (after a create, rename or unlink in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
