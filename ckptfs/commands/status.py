"""`ckptfs status`: the ckptfs mounts on this machine (mount/status.py)."""

from __future__ import annotations

import json
import os

from ..errors import CkptfsError
from .command import Command


def _arguments(parser) -> None:
    parser.add_argument("mountpoint", nargs="?")
    parser.add_argument("--json", action="store_true", help="a JSON list of objects, one per mount (docs/cli.md)")


def run(args) -> int:
    from ..mount import status as mount_status

    if args.mountpoint is not None:
        mountpoint = os.path.abspath(args.mountpoint)
        found = [m for m in mount_status.ckptfs_mounts() if m["mountpoint"] == mountpoint]
        if not found:
            raise CkptfsError(f"{mountpoint}: not a ckptfs mount")
    else:
        found = mount_status.ckptfs_mounts()
    print(json.dumps(found, indent=2) if args.json else mount_status.table(found))
    return 0


COMMAND = Command(
    "status", "list the ckptfs mounts on this machine", "Every ckptfs mount in this mount namespace (or the one at "
    "MOUNTPOINT): its source, format, read-only or writable, whether edits wait to be written, the daemon's pid "
    "and its log. What another user's daemon recorded is shown to root only; for the rest the kernel's mount "
    "table speaks.",
    _arguments, run, printing=True,
)
