"""`ckptfs info`: what a checkpoint holds, without mounting it (ckptfs/info.py);
`--html`/`--png`: the same as a report (ckptfs/info_report.py, ckptfs/report/)."""

from __future__ import annotations

import json
import sys

from ..errors import CkptfsError
from ..humanize import plural
from . import arguments
from .command import Command
from .stats import _positive as positive

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
    stats.add_argument("--sample", type=positive, metavar="N",
                       help=f"the report's stats look at about N elements per tensor (default {DEFAULT_SAMPLE:,}: a "
                       "few hundred MB read from a 100 GB checkpoint)")
    stats.add_argument("--exact", action="store_true", help="the report's stats count every element (reads every "
                       "tensor whole)")
    stats.add_argument("--no-stats", action="store_true", help="the report from the metadata and the pickles alone "
                       "(no tensor read)")


def _report(args, parsed) -> dict:
    """Writes --html and --png, each whole or not at all; returns the report."""
    from .. import info_report
    from ..report import plot

    if args.png:
        plot.matplotlib()  # its absence said before the stats are read, not after
    sample = None if args.exact else args.sample or DEFAULT_SAMPLE
    report = info_report.gather(parsed, sample, not args.no_stats)
    if args.html:
        from ..report import info_page, page

        _write(args.html, page.encoded(info_page.document(report)))
    if args.png:
        from ..report import info_png

        _write(args.png, info_png.render(report))
    return report


def _write(path: str, data: bytes) -> None:
    from ..report import write_atomic

    try:
        write_atomic(path, data)
    except OSError as e:
        raise CkptfsError(f"{path}: {e.strerror or e}") from None


def _for_the_report_alone(args) -> None:
    """--sample, --exact and --no-stats say how the report's stats are made: alone they would do nothing."""
    given = [option for option, on in (("--sample", args.sample is not None), ("--exact", args.exact),
                                       ("--no-stats", args.no_stats)) if on]
    if given and not (args.html or args.png):
        raise CkptfsError(f"{given[0]} is for the report: give --html FILE or --png FILE too")


def trouble(report: dict) -> str | None:
    """What the report found that `ckptfs scan` or `ckptfs stats` would exit
    1 for (a dangerous verdict, tensors whose stats could not be made), in a
    line; None if nothing."""
    found = []
    if report["scan"]["verdict"] == "dangerous":
        found.append("the scan says dangerous (ckptfs scan -v says why)")
    failed = sum(1 for t in (report["stats"] or {"tensors": []})["tensors"] if t.get("error"))
    if failed:
        found.append(f"{plural(failed, 'tensor', spec=',')} whose stats could not be made")
    return "; ".join(found) or None


def run(args) -> int:
    from .. import info as checkpoint_info

    _for_the_report_alone(args)
    parsed = arguments.open_source(args.source)
    if not (args.html or args.png):
        summary = checkpoint_info.summary(parsed)
        print(json.dumps(summary, indent=2) if args.json else checkpoint_info.text(summary))
        return 0
    report = _report(args, parsed)
    print(json.dumps(report["info"], indent=2) if args.json else checkpoint_info.text(report["info"]))
    found = trouble(report)
    if found:
        print(f"ckptfs: the report is written; it found {found}", file=sys.stderr)
    return 1 if found else 0


COMMAND = Command(
    "info", "what a checkpoint holds, without mounting it", "Format, size, tensors, parameters by dtype and by "
    "top-level folder, the globals its pickles name (none is imported or run) and notes, read from the metadata "
    "alone. --html and --png also write it as a report, with the tree, each tensor's statistics (a sample of "
    "each tensor unless --exact or --no-stats) and the scan's verdict.",
    _arguments, run, printing=True,
)
