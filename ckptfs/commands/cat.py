"""`ckptfs cat`: a file of a checkpoint's tree written to stdout as a
mount serves it, without FUSE (view/browse.py)."""

from __future__ import annotations

import sys

from . import arguments
from .command import Command


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("path", help="a path in the tree, such as model_config.yaml or encoder/0/weight.npy")


def run(args) -> int:
    from ..view import browse

    ckpt = arguments.open_source(args.source)
    browse.copy(ckpt, args.path, browse.find(ckpt, args.path), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


COMMAND = Command(
    "cat", "write a file of a checkpoint's tree to stdout, without mounting", "Write the file at PATH in the tree "
    "a mount of SOURCE shows, byte for byte as the mount serves it: a tensor as its .npy, a value as its YAML. "
    "Needs no FUSE.",
    _arguments, run, printing=True,
)
