"""`ckptfs stats`: per tensor min, max, mean, std, NaN, ±inf and zero
counts and a histogram, read in bounded memory, without mounting
(ckptfs/tensor_stats/)."""

from __future__ import annotations

import json

from . import arguments
from .command import Command


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="only these tensors: dotted names, .npy paths of the tree, or folders of it (every "
                        "tensor below)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="only the tensors whose names or paths match (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out the tensors whose names or paths match (repeatable)")
    parser.add_argument("--sample", type=arguments.positive_int, metavar="N",
                        help="look at about N elements of each tensor, read in a few runs spread over it (the same "
                        "every time), not every element: a quick look at a large checkpoint")
    parser.add_argument("--bins", type=arguments.positive_int, metavar="K",  # None: tensor_stats.DEFAULT_BINS, not imported here
                        help="the histogram's number of equal bins over [min, max] (default 32)")
    parser.add_argument("--jobs", "-j", type=arguments.positive_int, metavar="N",
                        help="tensors measured at a time (default: the number of cores)")
    parser.add_argument("--raw", action="store_true",
                        help="measure quantized weights' stored parts (their packed integers, scales...) in place "
                        "of the values ckptfs dequantizes them to")
    parser.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")


def run(args) -> int:
    """Exit status 0, or 1 when a tensor could not be measured (its error is in the report)."""
    from ..compare import json_safe
    from ..tensor_stats import DEFAULT_BINS, compute
    from ..tensor_stats.table import text

    bins = DEFAULT_BINS if args.bins is None else args.bins
    stats = compute(arguments.source_path(args.source), args.paths, args.sample, bins, args.jobs,
                    args.include, args.exclude, args.raw)
    print(json.dumps(json_safe(stats.as_dict()), indent=2) if args.json else text(stats))
    return 1 if stats.errors else 0


COMMAND = Command(
    "stats", "per tensor min, max, mean, std, NaN/inf/zero counts, histogram", "Measure every tensor of SOURCE (or "
    "those PATH names), of any format ckptfs reads, quantized weights by their dequantized values: min, max, mean "
    "and std (population, ddof=0) of the finite values, the number of NaN, +inf, -inf and zeros, and a histogram "
    "of equal bins over [min, max]. Every element is read, a chunk at a time (memory stays bounded whatever the "
    "size), unless --sample asks for a quick look. Exit status 0; 1 when a tensor could not be read (the others "
    "are still measured).",
    _arguments, run, printing=True,
)
