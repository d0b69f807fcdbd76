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


def run(command: list[str], name: str, seconds: float, most: int, *, stdin: bytes = b"",
        pass_fds: tuple[int, ...] = ()) -> tuple[int, bytes]:
    """(exit status, stdout) of `command`, started in `/` (so that no file
    of the folder the user stands in is imported by `python -c`) with its
    stderr discarded; FormatError naming `name` if it takes more than
    `seconds` or writes more than `most` bytes. `stdin` is written whole
    before the answer is read: the child must read all of it first."""
    child = subprocess.Popen(command, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, pass_fds=pass_fds)
    try:
        try:
            child.stdin.write(stdin)
            child.stdin.close()
        except BrokenPipeError:
            pass  # it ended early: its status says why
        data = _answer(child, name, seconds, most)
        child.wait(seconds)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
    return child.returncode, data


def _answer(child: subprocess.Popen, name: str, seconds: float, most: int) -> bytes:
    chunks, size, deadline = [], 0, time.monotonic() + seconds
    pipe = child.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            raise FormatError(name, f"reading it took more than {seconds} s")
        chunk = os.read(pipe, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > most:
            raise FormatError(name, f"what is read of it would take more than {plural(most, 'byte')} of JSON "
                                    "(-o max_header_bytes raises the limit)")
        chunks.append(chunk)
