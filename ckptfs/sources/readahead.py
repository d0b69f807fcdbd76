"""The one read-ahead policy: how far ahead of a sequential reader bytes
are asked for, and when to ask again.

A reader that goes on where it left off, once it has read `after` bytes
in a row, is kept ahead: when it comes within half a window of what was
asked for, the next window is asked for (whole windows: large requests,
not one per read), each twice as long as the last, from `least` up to
`most`. A read from offset 0 asks for the first `first` bytes at once.
A read elsewhere starts again. Nothing is asked past the end.

Two readers use it: a plain file asks the kernel (POSIX_FADV_WILLNEED,
sources/base.py) so the disk stays busy while a request is answered;
the FUSE layer asks a file whose bytes are fetched (a remote source's
page cache) for the bytes of the one file being read, never its
neighbours'.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReadAhead:
    #: the longest window asked for at once
    most: int
    #: the shortest window (the first after a reader starts anew)
    least: int = 0
    #: bytes asked for at a read from offset 0 (a file's first read); 0: none
    first: int = 0
    #: bytes a reader reads in a row before it counts as sequential
    after: int = 0

    def reader(self) -> Reader:
        return Reader(self)


class Reader:
    """Where one reader is: its next read's start, where its run began,
    the window last asked for and how far it reaches."""

    __slots__ = ("policy", "expected", "start", "window", "frontier")

    def __init__(self, policy: ReadAhead):
        self.policy = policy
        self.expected, self.start, self.window, self.frontier = -1, 0, 0, 0

    def advance(self, offset: int, length: int, size: int) -> tuple[int, int] | None:
        """A read of [offset, offset + length) of `size` bytes: the range
        to ask for now (start, length), or None."""
        policy, end, wanted = self.policy, offset + length, None
        if offset == 0 and policy.first:
            self.start, self.window = 0, policy.first
            self.frontier, wanted = policy.first, (0, policy.first)
        elif offset != self.expected:
            self.start, self.window, self.frontier = offset, 0, 0
        elif end - self.start >= policy.after and end + self.window // 2 >= self.frontier and self.frontier < size:
            self.window = min(max(self.window, policy.least, 4 * length) * 2, policy.most)
            begin = max(self.frontier, end)
            self.frontier, wanted = begin + self.window, (begin, self.window)
        self.expected = end
        return wanted


#: a plain file: 8 MiB ahead of a reader that has read 1 MiB in a row (a
#: parser's header and the bytes after it are no stream), asked again each
#: time half of it has been read
LOCAL = ReadAhead(most=8 << 20, least=8 << 20, after=1 << 20)
#: a file whose bytes are fetched: its first 32 MiB at its first read (a
#: tensor's every range, across shards), then windows up to 64 MiB
FETCHED = ReadAhead(most=64 << 20, first=32 << 20)
