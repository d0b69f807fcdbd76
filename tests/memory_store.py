"""`python -m tests.memory_store LOCAL memory://PATH [LOCAL memory://PATH ...] -- ARGS`:
fill fsspec's memory:// filesystem of this process with local files (a
folder's files below its URL, as a prefix), then run `ckptfs ARGS` in it.

memory:// lives in one process: the mount daemon is forked from the
command that parsed the checkpoint, so it serves what this process put
there, through fsspec's own MemoryFileSystem and nothing of the tests'."""

from __future__ import annotations

import os
import sys

import fsspec


def fill(local: str, url: str) -> None:
    fs = fsspec.filesystem("memory")
    if os.path.isdir(local):
        for here, _, files in os.walk(local):
            for name in files:
                relative = os.path.relpath(os.path.join(here, name), local).replace(os.sep, "/")
                with open(os.path.join(here, name), "rb") as f:
                    fs.pipe(url.rstrip("/") + "/" + relative, f.read())
    else:
        with open(local, "rb") as f:
            fs.pipe(url, f.read())


def main(argv: list[str]) -> int:
    split = argv.index("--")
    pairs = argv[:split]
    for local, url in zip(pairs[::2], pairs[1::2]):
        fill(local, url)
    from ckptfs.cli import main as ckptfs

    return ckptfs(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
