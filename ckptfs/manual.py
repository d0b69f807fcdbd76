"""`python -m ckptfs.manual`: the man page and the completions that
commands/manual.py makes from the parser, written into ckptfs/share/ (the
copies pip installs under PREFIX/share; tests/test_manual.py fails when they
are out of date), or with `--prefix DIR` under DIR/share, as `make` does for
its editable install (which installs no data files)."""

from __future__ import annotations

import os
import sys

from .commands import build_parser
from .commands.manual import FILES, render

SHARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "share")


def write(share: str) -> list[str]:
    """Write FILES under `share` (a `share/` folder); returns their paths."""
    written = []
    for kind, text in render(build_parser()).items():
        path = os.path.join(share, FILES[kind])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """No argument: rewrite ckptfs/share/. `--prefix DIR`: write under DIR/share."""
    share = os.path.join(argv[1], "share") if argv[:1] == ["--prefix"] and len(argv) == 2 else SHARE
    for path in write(share):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
