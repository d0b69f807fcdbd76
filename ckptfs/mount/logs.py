"""Where a mount logs: stderr in the foreground, the journal when systemd
runs it, otherwise the per-mount log file; and `tell`, for what the user
must hear whichever it is (a refused mount, a fall-back to read-only)."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error")
#: sd-daemon(3)'s priority prefixes, which the journal reads off each stderr line
_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_log_on_stderr = False


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal: it then sets
    `$JOURNAL_STREAM` to that stream's device and inode (systemd.exec(5))."""
    try:
        device, inode = (int(part) for part in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(2)
    except (KeyError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class _JournalFormatter(logging.Formatter):
    """`<6>ckptfs.fuse.operations: ...`: the journal adds the time and the unit."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class _WorstLevel(logging.Filter):
    """Remembers the most severe level logged."""

    level = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        self.level = max(self.level, record.levelno)
        return True


def setup(level: str, log_file: str | None, keep: bool = True):
    """Log at `level` to `log_file`, or to stderr if None (for the journal
    when stderr is the journal). Returns what ends the log, given the exit
    code: a log file that is not to be kept is removed when the mount ended
    cleanly (exit 0, no warning), and kept to be read when not."""
    global _log_on_stderr
    _log_on_stderr = log_file is None
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
        journal = stderr_is_journal()
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s") if journal else
                             logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        # appended to: a mount refused at a mount point in use logs beside the mount there
        # a byte of a name that is not UTF-8 is logged as Python's escape (`\udcff`), as stderr says it
        handler = logging.FileHandler(log_file, mode="a", errors="backslashreplace")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    worst = _WorstLevel()
    handler.addFilter(worst)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    def end(code: int) -> None:
        logging.shutdown()
        if log_file and not keep and code == 0 and worst.level < logging.WARNING:
            try:
                os.unlink(log_file)
            except FileNotFoundError:
                pass

    return end


def tell(logger: logging.Logger, level: int, message: str) -> None:
    """Log `message` and, unless the log is stderr already, also say it there
    in one line for the user who ran the command."""
    logger.log(level, "%s", message)
    if not _log_on_stderr:
        print(f"ckptfs: {message}", file=sys.stderr)
