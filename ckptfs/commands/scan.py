"""`ckptfs scan`: a checkpoint's pickles checked for code before anything
loads them (ckptfs/scan.py)."""

from __future__ import annotations

import json
import os

from .. import limits
from ..errors import CkptfsError
from ..mount import options
from . import arguments
from .command import Command


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("--allow", action="append", default=[], metavar="GLOBAL",
                        help="also take globals matching GLOBAL (module.name, * as a wildcard) as safe (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list every global with its verdict, and what was passed over")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="max_NAME=N",
                        help="raise a limit, as for mount (max_pickle_bytes, max_pickle_ops, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")


def run(args) -> int:
    """Exit status 0 safe, 1 dangerous, 2 trouble."""
    from .. import scan as pickle_scan

    limits.apply(options.limit_values(args.options))
    source = arguments.source_path(args.source)
    if source != os.path.abspath(args.source):
        raise CkptfsError(f"{source}: scan reads local files and folders only (download the pickles, or mount the "
                          "URL and scan the mount's .ckptfs/raw/)")
    report = pickle_scan.scan(source, tuple(args.allow))
    print(json.dumps(report.to_json(), indent=2) if args.json else pickle_scan.text(report, args.verbose))
    return {"safe": 0, "dangerous": 1}.get(report.verdict, 2)


COMMAND = Command(
    "scan", "check a checkpoint's pickles for code before anything loads them", "List every global the pickles "
    "of SOURCE name (data.pkl and every other .pkl record, in any case, legacy torch.save files, distributed "
    "checkpoint metadata and items, common.pt, files inside archives) and check each against an allowlist of "
    "what checkpoints need: tensors, storages, dtypes, containers, NumPy arrays, OmegaConf configs. Nothing is "
    "imported or run. Exit status 0: safe; 1: a global outside the allowlist (printed with where it is); "
    "2: trouble, no verdict.",
    _arguments, run, printing=True, trouble=2,
)
