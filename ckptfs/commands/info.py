"""`ckptfs info`: what a checkpoint holds, without mounting it (ckptfs/info.py);
`--html`/`--png`: the same as a report (ckptfs/info_report.py, ckptfs/report/)."""

from __future__ import annotations

import json

from ..errors import CkptfsError
from . import arguments
from .command import Command

#: elements per tensor the report's stats look at unless told: a 100 GB
#: checkpoint of a thousand tensors is a few hundred MB read
DEFAULT_SAMPLE = 65_536


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")
    parser.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML page: "
                        "the summary, the tree, every tensor's stats and histogram, the globals and the scan's verdict")
    parser.add_argument("--png", metavar="FILE", help="also draw the report's main figure (parameters by module and "
                        "dtype, tensors with NaN or inf) with matplotlib (the plot extra)")
    stats = parser.add_mutually_exclusive_group()
    stats.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                       help=f"the report's stats look at about N elements per tensor (default {DEFAULT_SAMPLE:,}: a "
                       "few hundred MB read from a 100 GB checkpoint)")
    stats.add_argument("--exact", action="store_true", help="the report's stats count every element (reads every "
                       "tensor whole)")
    stats.add_argument("--no-stats", action="store_true", help="the report from the metadata and the pickles alone "
                       "(no tensor read)")


def _report(args, parsed) -> dict:
    """Writes --html and --png; returns the report."""
    from .. import info_report

    if args.sample < 1:
        raise CkptfsError(f"--sample {args.sample}: give at least one element per tensor")
    report = info_report.gather(parsed, None if args.exact else args.sample, not args.no_stats)
    if args.png:
        from ..report import info_png

        info_png.draw(report, args.png)
    if args.html:
        from ..report import info_page

        text = info_page.document(report)
        try:
            with open(args.html, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as e:
            raise CkptfsError(f"{args.html}: {e.strerror or e}") from None
    return report


def run(args) -> int:
    from .. import info as checkpoint_info

    parsed = arguments.open_source(args.source)
    summary = _report(args, parsed)["info"] if args.html or args.png else checkpoint_info.summary(parsed)
    print(json.dumps(summary, indent=2) if args.json else checkpoint_info.text(summary))
    return 0


COMMAND = Command(
    "info", "what a checkpoint holds, without mounting it", "Format, size, tensors, parameters by dtype and by "
    "top-level folder, the globals its pickles name (none is imported or run) and notes, read from the metadata "
    "alone. --html and --png also write it as a report, with the tree, each tensor's statistics (a sample of "
    "each tensor unless --exact or --no-stats) and the scan's verdict.",
    _arguments, run, printing=True,
)
