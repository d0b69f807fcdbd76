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
