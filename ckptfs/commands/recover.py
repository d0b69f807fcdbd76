"""`ckptfs recover`: the edits a crashed mount or a refused repack left,
written into the source or dropped, without mounting."""

from __future__ import annotations

import os
import sys

from .. import advice
from ..errors import CkptfsError, EditsKept, SourceChangedError
from ..mount.destination import check_output, destination, use_overlay_dir
from ..sources.cachedir import default_cache_dir
from . import arguments
from .command import Command


def _arguments(parser) -> None:
    parser.add_argument("source")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--resume", action="store_true", help="repack SOURCE with the edits")
    action.add_argument("--discard", action="store_true", help="drop the edits; SOURCE stays as it is")
    parser.add_argument(
        "--output", metavar="PATH",
        help="write the edited checkpoint here (a path or an s3:// key) instead of over SOURCE (also when SOURCE "
        "changed since the edits)",
    )
    parser.add_argument("--overlay-dir", metavar="DIR", help="a remote source: the --overlay-dir it was mounted with")
    arguments.backup(parser)


def run(args) -> int:
    from ..formats import open_checkpoint
    from ..sources.location import location
    from ..write.overlay import Overlay, overlay_dir
    from ..write.session import EditSession, remove_stale_temp_files

    source = arguments.source_path(args.source)
    use_overlay_dir(source, args.overlay_dir)
    if args.output:
        check_output(destination(args.output), source)
    if location(source).local and not os.path.lexists(source):
        waiting = f" (edits wait in {overlay_dir(source)}; remove it to drop them)" if os.path.isdir(overlay_dir(source)) else ""
        raise CkptfsError(f"{source}: no such file or directory{waiting}")
    if args.discard:  # needs no checkpoint: the source may be anything by now
        Overlay.discard_waiting(source, also=lambda: remove_stale_temp_files(source))
        print(f"ckptfs: {source}: edits discarded", file=sys.stderr)
        return 0
    checkpoint = open_checkpoint(source, default_cache_dir())
    try:
        session = EditSession.resume(checkpoint, source_changed_ok=args.output is not None)
    except SourceChangedError as e:
        raise CkptfsError(f"{e}; {advice.elsewhere(source)}") from None
    try:
        message = session.finish(output_path=args.output and destination(args.output), backup=args.backup)
    except EditsKept as e:
        raise CkptfsError(advice.after_repack(e, source, None, mounted=False)) from None
    finally:
        session.editable.overlay.release()  # the lock, and the overlay if it is still there
    print(f"ckptfs: {message}", file=sys.stderr)
    return 0


COMMAND = Command(
    "recover", "write or drop the edits a crashed mount or a refused repack left", "A writable mount whose daemon "
    "died, or whose repack was refused, leaves its edits in an overlay beside SOURCE (.NAME.ckptfs/). Write them "
    "into SOURCE (--resume) or drop them (--discard); to fix an edit first, 'ckptfs mount --resume SOURCE "
    "MOUNTPOINT'.",
    _arguments, run,
)
