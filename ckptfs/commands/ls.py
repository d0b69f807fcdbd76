"""`ckptfs ls`: a checkpoint's tree listed as a mount shows it, without
FUSE (view/browse.py)."""

from __future__ import annotations

import json

from . import arguments
from .command import Command


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("path", nargs="?", default=".", help="a path in the tree (default: its root)")
    parser.add_argument("-R", "--recursive", action="store_true", help="everything below PATH")
    parser.add_argument("-l", "--long", action="store_true", help="type, size and, for a tensor, dtype and shape")
    parser.add_argument("--json", action="store_true", help="a JSON list of objects, one per entry (docs/cli.md)")


def run(args) -> int:
    from ..view import browse

    ckpt = arguments.open_source(args.source)
    listed = list(browse.entries(browse.find(ckpt, args.path), args.path, args.recursive))
    if args.json:
        print(json.dumps([browse.describe(path, node) for path, node in listed], indent=2))
    else:
        shown = [(path if args.recursive else path.rsplit("/", 1)[-1], node) for path, node in listed]
        print("\n".join(browse.long_line(name, node) if args.long else name for name, node in shown))
    return 0


COMMAND = Command(
    "ls", "list a checkpoint's tree, as a mount shows it, without mounting", "List the folder (or the file) at "
    "PATH in the tree a mount of SOURCE shows: the same names, the .ckptfs/ view included. Needs no FUSE.",
    _arguments, run, printing=True,
)
