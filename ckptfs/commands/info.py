"""`ckptfs info`: what a checkpoint holds, without mounting it (ckptfs/info.py);
`--html`/`--png`: the same as a report (ckptfs/info_report.py, ckptfs/report/)."""

from __future__ import annotations

import json
import sys

from ..errors import CkptfsError
from ..humanize import plural
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
    stats.add_argument("--sample", type=arguments.positive_int, metavar="N",
                       help=f"the report's stats look at about N elements per tensor (default {DEFAULT_SAMPLE:,}: a "
                       "few hundred MB read from a 100 GB checkpoint)")
    stats.add_argument("--exact", action="store_true", help="the report's stats count every element (reads every "
                       "tensor whole)")
    stats.add_argument("--no-stats", action="store_true", help="the report from the metadata and the pickles alone "
                       "(no tensor read)")


def _report(args, parsed) -> dict:
    """Writes --html and --png, each whole or not at all; returns the report."""
    from .. import info_report
    from ..report import plot, write_report

    if args.png:
        plot.matplotlib()  # its absence said before the stats are read, not after
    sample = None if args.exact else args.sample or DEFAULT_SAMPLE
    report = info_report.gather(parsed, sample, not args.no_stats)
    if args.html:
        from ..report import info_page, page

        write_report(args.html, page.encoded(info_page.document(report)))
    if args.png:
        from ..report import info_png

        write_report(args.png, info_png.render(report))
    return report


#: the exit status of trouble (a report that cannot be written, a source that
#: cannot be read, a report option alone) where 1 is a finding, as diff(1)'s;
#: plain `info` has no finding, and its trouble is the usual 1
TROUBLE = 2


def _for_the_report_alone(args) -> str | None:
    """--sample, --exact and --no-stats say how the report's stats are made:
    alone they would do nothing. The line that says so, or None."""
    given = [option for option, on in (("--sample", args.sample is not None), ("--exact", args.exact),
                                       ("--no-stats", args.no_stats)) if on]
    if given and not (args.html or args.png):
        return f"{given[0]} is for the report: give --html FILE or --png FILE too"
    return None


def findings(report: dict, html: bool) -> str | None:
    """What the report shows that `ckptfs scan` or `ckptfs stats` would exit
    1 for, in a line (None if nothing): tensors whose stats could not be
    made, and with `html` (the page shows the verdict, the figure does not)
    a dangerous verdict."""
    found = []
    if html and report["scan"]["verdict"] == "dangerous":
        found.append("the scan says dangerous (ckptfs scan -v says why)")
    failed = sum(1 for t in (report["stats"] or {"tensors": []})["tensors"] if t.get("error"))
    if failed:
        found.append(f"{plural(failed, 'tensor', spec=',')} whose stats could not be made")
    return "; ".join(found) or None


def run(args) -> int:
    from .. import info as checkpoint_info

    misused = _for_the_report_alone(args)
    if misused:
        print(f"ckptfs: {misused}", file=sys.stderr)
        return TROUBLE
    if not (args.html or args.png):
        summary = checkpoint_info.summary(arguments.open_source(args.source))
        print(json.dumps(summary, indent=2) if args.json else checkpoint_info.text(summary))
        return 0
    try:
        report = _report(args, arguments.open_source(args.source))
    except CkptfsError as e:
        print(f"ckptfs: {e}", file=sys.stderr)
        return TROUBLE
    print(json.dumps(report["info"], indent=2) if args.json else checkpoint_info.text(report["info"]))
    found = findings(report, bool(args.html))
    if found:
        print(f"ckptfs: the report is written; it found {found}", file=sys.stderr)
    return 1 if found else 0


COMMAND = Command(
    "info", "what a checkpoint holds, without mounting it", "Format, size, tensors, parameters by dtype and by "
    "top-level folder, the globals its pickles name (none is imported or run) and notes, read from the metadata "
    "alone. --html and --png also write it as a report, with the tree, each tensor's statistics (a sample of "
    "each tensor unless --exact or --no-stats) and the scan's verdict. Exit status 0; with --html or --png, 1 when "
    "the report is written and shows a tensor whose stats could not be made or (--html) a dangerous scan "
    "verdict, and 2 for trouble (a report option without --html or --png, a source that cannot be read, a file "
    "that cannot be written), as diff(1).",
    _arguments, run, printing=True,
)
