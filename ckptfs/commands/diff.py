"""`ckptfs diff`: two checkpoints compared tensor by tensor, value by value
and file by file, without mounting (ckptfs/compare.py)."""

from __future__ import annotations

import json

from . import arguments
from .command import Command


def _arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="checkpoint file or directory")
    parser.add_argument("b", metavar="B", help="checkpoint file or directory")
    parser.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                        help="rewrite the prefix OLD of A's tensor names to NEW before matching (repeatable)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="compare only the tensors, values and files whose names or paths match (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out the tensors, values and files whose names or paths match (repeatable)")
    parser.add_argument("--tensors-only", action="store_true",
                        help="compare tensors only, not the files and values beside them (across formats)")
    parser.add_argument("--dequantize", action="store_true",
                        help="compare quantized weights (GGUF's, GPTQ, AWQ, bitsandbytes, FP8, compressed-tensors, "
                        "MLX) by their values, as their dequantized.npy shows them, in place of their stored parts: "
                        "a quantized model against the model it was made from")
    parser.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")
    parser.add_argument("--html", metavar="FILE",
                        help="also write the report as one self-contained HTML page: a heatmap of relative change by "
                        "layer and module, the tensors ranked by change, the side files' diffs (docs/reports.md)")
    parser.add_argument("--png", metavar="FILE",
                        help="also draw the heatmap as a PNG (needs matplotlib, the plot extra)")


def run(args) -> int:
    """Exit status as diff(1): 0 the same, 1 different, 2 trouble."""
    from .. import compare
    from ..api import open_checkpoint
    from ..report import diff_png, page, write_report

    maps = arguments.prefix_maps(args.map)
    if args.png:
        diff_png.matplotlib()  # its absence said before the work, not after
    report = compare.compare(open_checkpoint(args.a), open_checkpoint(args.b), maps, args.include, args.exclude,
                             args.tensors_only, args.dequantize)
    report.a, report.b = args.a, args.b  # the report names them as the user did
    # a name UTF-8 cannot encode (a lone surrogate) printed as its escape, as --json does
    print(json.dumps(compare.json_safe(report), indent=2) if args.json else page.visible(compare.text(report)))
    if args.html:  # each written whole or not at all: a failure leaves the previous file as it was
        write_report(args.html, page.encoded(report.html()))
    if args.png:
        write_report(args.png, diff_png.render(compare.json_safe(report), f"{args.a} → {args.b}"))
    return 0 if report["same"] else 1


COMMAND = Command(
    "diff", "compare two checkpoints tensor by tensor, without mounting", "Compare A and B, of any formats: "
    "tensors only one has, tensors whose dtype or shape changed, and for the others whether their bits are equal "
    "or how far apart they are (elements that differ, largest absolute and relative difference, cosine "
    "similarity); every non-tensor value by its path and both values; every other file, added, removed or "
    "changed (text as a unified diff). --html and --png write the report as a page and its heatmap as a figure. "
    "Exit status 0: nothing differs; 1: different; 2: trouble, as diff(1).",
    _arguments, run, printing=True, trouble=2,
)
