"""Errors a user reads as one sentence.

Parsers raise these with the file and the problem in the message; the CLI
prints the message alone (no traceback) and exits non-zero.
"""


class CkptfsError(Exception):
    """Anything ckptfs reports to the user as one line."""


class FormatError(CkptfsError):
    """The checkpoint (or a part of it) is malformed or unsupported."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class SourceChangedError(CkptfsError):
    """The source file no longer holds the bytes it held at mount time."""


class RepackError(CkptfsError):
    """The edits cannot be written as a checkpoint of this format; the
    message names every edit that stands in the way."""


class EditRefused(CkptfsError):
    """An edited file its format cannot hold, found when it is closed: the
    message names the file and the problem."""


class MoveRefused(EditRefused):
    """A rename (or link) the format cannot hold, refused when it is made:
    the message says why, `errno` is what the call answers: EXDEV across
    checkpoints, so that `mv` copies instead; EPERM where the format cannot
    hold the move (not EINVAL, which `mv` reports as a move into itself)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


class EditsWaiting(CkptfsError):
    """A writable mount was asked for while an earlier mount's edits wait in
    the overlay (`ckptfs mount --resume` or `ckptfs recover` take them up)."""


class EditsKept(CkptfsError):
    """A repack did not happen; the edits stay in the overlay. `kind` says
    what the user can do about it: "edit" (an edit the format cannot hold:
    fix it), "changed" (the source changed under the edits: write them
    elsewhere), "other" (room, permissions: try again)."""

    def __init__(self, reason: str, kind: str, overlay: str):
        super().__init__(f"{reason}; the edits are kept in {overlay}")
        self.reason, self.kind, self.overlay = reason, kind, overlay
