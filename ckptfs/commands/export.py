"""`ckptfs export`: a checkpoint's tensors written as safetensors, a Hugging
Face folder or a torch.save file (write/export.py)."""

from __future__ import annotations

import sys

from ..errors import CkptfsError
from ..humanize import human_size, parse_size, plural
from ..mount.destination import destination
from ..sources.cachedir import default_cache_dir
from . import arguments
from .command import Command


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("out", metavar="OUT", help="the new file (a new folder for --to hf); must not exist. An "
                        "s3:// key (a prefix for --to hf) is uploaded as it is written, nothing staged on disk")
    parser.add_argument("--to", choices=("safetensors", "hf", "torch"), default="safetensors",
                        help="the format to write (default: safetensors)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="export only tensors whose names match (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out tensors whose names match (repeatable)")
    parser.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                        help="write names that start with OLD with NEW in its place; globs match the names "
                        "before (repeatable)")
    parser.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="largest shard of --to hf, as transformers says it: 5GB, 500MB, 2GiB (default: 5GB)")
    parser.add_argument("--quantized", choices=("dequantize", "raw"), default="dequantize",
                        help="a quantized weight as its values, as its dequantized.npy shows them (GGUF's Q4_0, "
                        "Q6_K... as float32; GPTQ, AWQ, bitsandbytes, FP8, compressed-tensors and MLX weights in "
                        "the model's dtype, in place of their stored parts, config.json without its "
                        "quantization_config: a plain model), or as stored (GGUF's blocks as uint8, their GGML type "
                        "in the safetensors metadata; a Hub weight's parts as they are) (default: dequantize)")
    parser.add_argument("--dequantize", dest="quantized", action="store_const", const="dequantize",
                        help="the same as --quantized dequantize")
    parser.add_argument("--merged", action="store_true",
                        help="a PEFT adapter folder: write its base model with the adapter merged, as the mount's "
                        "merged/ shows it (the base from --base, else from the Hugging Face cache)")
    parser.add_argument("--base", metavar="PATH", help="a PEFT adapter's base model (a Hugging Face folder, a "
                        ".safetensors file or hf://ORG/NAME); implies --merged")


def _byte_size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CkptfsError(f"--max-shard-size {text!r}: give a size such as 5GB, 500MB or 2GiB")
    return value


def _transfer_printer(what: str):
    def show(done: int, total: int) -> None:
        percent = f" ({100 * done // total}%)" if total else ""
        print(f"\rckptfs: {what}: {human_size(done)} of {human_size(total)}{percent}\033[K", end="",
              file=sys.stderr, flush=True)

    return show


def run(args) -> int:
    from ..formats import open_checkpoint
    from ..tree.nodes import Access
    from ..write import export as exporting

    maps = arguments.prefix_maps(args.map)
    max_bytes = _byte_size(args.max_shard_size)
    source = arguments.source_path(args.source)
    checkpoint = open_checkpoint(source, default_cache_dir(), args.base and arguments.source_path(args.base))
    if args.merged or args.base:
        checkpoint = _merged(checkpoint, source)
    selection = exporting.select(checkpoint, args.include, args.exclude, maps, args.quantized)
    for note in checkpoint.notes:  # what the reader could not show: a tensor cut off is not exported either
        print(f"ckptfs: {source}: {note}", file=sys.stderr)
    for line in selection.left_out:
        print(f"ckptfs: left out {line}", file=sys.stderr)
    if not selection.items:
        raise CkptfsError(f"{source}: no tensors to export" + (" (see --include and --exclude)"
                                                               if args.include or args.exclude else ""))
    progress = _transfer_printer("exporting") if sys.stderr.isatty() else None
    readers = selection.access or Access.of(checkpoint.stat)  # never wider than the source
    exporting.write(args.to, selection.items, args.out, max_bytes, progress, readers, selection.beside)
    if progress:
        print(file=sys.stderr)
    total = sum(i.length for i in selection.items)
    dequantized = f" ({len(selection.dequantized):,} dequantized)" if selection.dequantized else ""
    print(f"ckptfs: wrote {destination(args.out)}: {plural(len(selection.items), 'tensor', spec=',')}{dequantized}, "
          f"{human_size(total)} "
          f"({args.to})", file=sys.stderr)
    return 0


def _merged(checkpoint, source: str):
    """The merged model of an adapter, or CkptfsError saying why there is none."""
    merged = checkpoint.merged
    if merged is None:
        why = [n for n in checkpoint.notes if n.startswith("no merged/")]
        raise CkptfsError(why[0] if why else f"{source}: not a PEFT adapter folder; --merged and --base are for those")
    if merged.notes:  # a module that does not fit its base: no half-merged model
        raise CkptfsError(f"{source}: the merged model cannot be written: {merged.notes[0]}")
    return merged


COMMAND = Command(
    "export", "write a checkpoint's tensors as safetensors, a Hugging Face folder or a torch.save file",
    "Convert SOURCE, of any format, tensor by tensor into OUT: one .safetensors file, a Hugging Face folder of "
    "safetensors shards with model.safetensors.index.json and, for a Hugging Face source, its config.json and "
    "other top-level files (hf), or a torch.save file of the state dict that "
    "torch.load(weights_only=True) reads (torch). Streams: memory stays within a copy block, however large the "
    "tensors. The bytes of --to safetensors are those of a mount's .ckptfs/export/model.safetensors. With --merged "
    "or --base, a PEFT adapter's base model with the adapter merged (and, --to hf, the base's config.json and the "
    "other files from_pretrained reads).",
    _arguments, run,
)
