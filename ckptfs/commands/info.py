"""`ckptfs info`: what a checkpoint holds, without mounting it (ckptfs/info.py)."""

from __future__ import annotations

import json

from . import arguments
from .command import Command


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")


def run(args) -> int:
    from .. import info as checkpoint_info

    summary = checkpoint_info.summary(arguments.open_source(args.source))
    print(json.dumps(summary, indent=2) if args.json else checkpoint_info.text(summary))
    return 0


COMMAND = Command(
    "info", "what a checkpoint holds, without mounting it", "Format, size, tensors, parameters by dtype and by "
    "top-level folder, the globals its pickles name (none is imported or run) and notes, read from the metadata "
    "alone.",
    _arguments, run, printing=True,
)
