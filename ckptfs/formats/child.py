"""A helper process's answer, bounded: the formats that hand work to a new
Python (an HDF5 file's structure read where a crash of the HDF5 library
cannot take the mount down; an OCDBT database's metadata read where
tensorstore's threads cannot meet a later fork) read what it writes
through here, within a time and a size, and always reap it."""

from __future__ import annotations

import os
import select
import subprocess
import time

from ..errors import FormatError
from ..humanize import plural

#: what a pipe takes at once without blocking, once select says it is writable (POSIX's PIPE_BUF at least)
_PIPE_STEP = 4096


def run(command: list[str], name: str, seconds: float, most: int, *, stdin: bytes = b"",
        pass_fds: tuple[int, ...] = ()) -> tuple[int, bytes]:
    """(exit status, stdout) of `command`, started in `/` (so that no file
    of the folder the user stands in is imported by `python -c`) with its
    stderr discarded, handed `stdin`; FormatError naming `name` if it takes
    more than `seconds` in all or writes more than `most` bytes."""
    deadline = time.monotonic() + seconds
    child = subprocess.Popen(command, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, pass_fds=pass_fds)
    try:
        _feed(child, stdin, name, seconds, deadline)
        data = _answer(child, name, seconds, most, deadline)
        child.wait(max(deadline - time.monotonic(), 0.1))
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
    return child.returncode, data


def _late(name: str, seconds: float) -> FormatError:
    return FormatError(name, f"reading it took more than {seconds} s")


def _feed(child: subprocess.Popen, data: bytes, name: str, seconds: float, deadline: float) -> None:
    """`data` into the child's stdin, then its end, never waiting past the deadline."""
    pipe, view = child.stdin.fileno(), memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [pipe], [], left)[1]:
            raise _late(name, seconds)
        try:
            view = view[os.write(pipe, view[:_PIPE_STEP]):]
        except BrokenPipeError:
            break  # it ended early: its status says why
    child.stdin.close()


def _answer(child: subprocess.Popen, name: str, seconds: float, most: int, deadline: float) -> bytes:
    chunks, size = [], 0
    pipe = child.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            raise _late(name, seconds)
        chunk = os.read(pipe, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > most:
            raise FormatError(name, f"what is read of it would take more than {plural(most, 'byte')} of JSON "
                                    "(-o max_header_bytes raises the limit)")
        chunks.append(chunk)
