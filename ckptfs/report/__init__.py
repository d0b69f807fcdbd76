"""Reports as self-contained HTML (and, with matplotlib, PNG) made from the
plain dicts the `--json` outputs print (docs/reports.md).

Every module here renders data it is handed and reads nothing: no
checkpoint, no file, no network; `write_report` below is how a command
writes what they make. page.py is the shell every report shares
(styles, escaping, tables, colour scales, the embedded data and the small
script that shows it lazily); each report is a module of its own beside it.
"""

from __future__ import annotations

import os
import stat
import tempfile

from ..errors import CkptfsError
from ..sources.pathnames import temp_prefix


def write_report(path: str, data: bytes) -> None:
    """A report's bytes as the file `path` (`write_atomic`); a failure is
    the one line naming the file and why."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise CkptfsError(f"{path}: {e.strerror or e}") from None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`data` as the file `path`, whole or not at all: written to a
    temporary file in the same folder, flushed to disk, then renamed over
    `path`; on any failure (a full disk, a file size limit, an interrupt)
    the temporary is removed and a file already at `path` is left as it
    was. The new file has the mode a plain `open` would give it. A `path`
    that is no regular file (`/dev/stdout`, a pipe) is written to directly:
    it cannot be replaced."""
    target = os.fspath(path)
    try:
        special = not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with open(target, "wb") as out:
            out.write(data)
        return
    folder, name = os.path.split(os.path.abspath(target))
    descriptor, temporary = tempfile.mkstemp(prefix=temp_prefix(name, ".tmp"), suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), 0o666 & ~_umask())
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
