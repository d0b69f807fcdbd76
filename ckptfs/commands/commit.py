"""`ckptfs commit`: a writable mount's edits written now, by its daemon
(asked by SIGUSR1), without unmounting."""

from __future__ import annotations

import os
import sys

from ..errors import CkptfsError
from ..mount import mounts
from . import arguments
from .command import Command
from .umount import TIMEOUT


def _arguments(parser) -> None:
    parser.add_argument("mountpoint")
    parser.add_argument("--force", action="store_true", help="write the checkpoint even if nothing changed")
    arguments.backup(parser)
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds to wait for the repack")


def run(args) -> int:
    import signal
    import time

    mountpoint = os.path.abspath(args.mountpoint)
    state = mounts.MountState(mountpoint)
    pid = state.pid()
    if mounts.mounted_at(mountpoint) is None or pid is None or not mounts.process_alive(pid):
        raise CkptfsError(f"{mountpoint}: not a running ckptfs mount")
    if not state.mounted().get("writable"):
        raise CkptfsError(f"{mountpoint}: mounted read-only; there are no edits to write")
    if state.mounted().get("output"):
        raise CkptfsError(f"{mountpoint}: its edits are written to {state.mounted()['output']} when it is unmounted; "
                          "commit writes over the source only")
    request = state.request_commit(force=args.force, backup=args.backup)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + args.timeout
    while (result := state.commit_result(request)) is None:
        if time.monotonic() > deadline or not mounts.process_alive(pid):
            raise CkptfsError(f"{mountpoint}: no answer from the daemon (pid {pid}); see {state.log_file}")
        time.sleep(0.05)
    code, message = result
    if message and (code or sys.stderr.isatty()):
        print(f"ckptfs: {message}", file=sys.stderr)
    return code


COMMAND = Command(
    "commit", "write a writable mount's edits now, without unmounting", "Repack the checkpoint mounted at "
    "MOUNTPOINT with its edits, as an unmount would, and go on serving the new checkpoint with no edits pending. "
    "Requests wait while it runs.",
    _arguments, run,
)
