"""`ckptfs umount`: unmount, wait for the daemon, exit with its status."""

from __future__ import annotations

import os
import sys

from ..errors import CkptfsError
from ..humanize import human_size
from ..mount import mounts
from . import arguments
from .command import Command

#: seconds to wait for a daemon's repack (umount, commit)
TIMEOUT = 600.0


def _arguments(parser) -> None:
    parser.add_argument("mountpoint")
    parser.add_argument(
        "-z", "--lazy", action="store_true",
        help="detach now even if files are open there; the daemon exits once they are closed",
    )
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds to wait for the daemon")
    parser.add_argument("--discard", action="store_true", help="drop the edits instead of writing them")
    arguments.backup(parser, "keep the original as SOURCE.orig when writing the edits")


def _progress_printer(state: mounts.MountState):
    """Shows the repack's progress on one terminal line while `umount` waits."""
    shown = []

    def show() -> None:
        progress = state.progress()
        if progress and progress != (shown[-1] if shown else None):
            done, total = progress
            print(f"\rckptfs: writing the checkpoint: {human_size(done)} of about {human_size(total)}\033[K", end="",
                  file=sys.stderr, flush=True)
            shown.append(progress)

    return show


def _unmount(mountpoint: str, entry: mounts.MountEntry, state: mounts.MountState, args) -> None:
    if entry.fstype != "fuse.ckptfs":
        raise CkptfsError(f"{mountpoint}: not a ckptfs mount (it is {entry.fstype})")
    if args.discard or args.backup:
        state.request_finish(discard=args.discard, backup=args.backup)
    done, message = mounts.unmount(mountpoint, lazy=args.lazy)
    if not done:
        hint = " (a process has files open there; close them or use --lazy)" if "busy" in message else ""
        raise CkptfsError(f"{mountpoint}: cannot unmount: {message}{hint}")


def run(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    entry = mounts.mounted_at(mountpoint)
    state = mounts.MountState(mountpoint)
    pid = state.pid()
    if entry is None and pid is None:
        raise CkptfsError(f"{mountpoint}: not mounted")
    if entry is not None:
        _unmount(mountpoint, entry, state, args)
    if pid is None:
        return 0
    if args.lazy and mounts.process_alive(pid):
        print(f"ckptfs: {mountpoint}: detached; its daemon exits once the last file open there is closed", file=sys.stderr)
        return 0
    show_progress = _progress_printer(state) if sys.stderr.isatty() else None
    if not mounts.wait_exit(pid, args.timeout, show_progress):
        raise CkptfsError(f"{mountpoint}: unmounted, but its daemon (pid {pid}) is still running after {args.timeout:.0f} s")
    code, message = state.exit_code(), state.exit_message()
    if show_progress is not None and state.progress():
        show_progress()  # the last it reported, however quick the repack was
        print(file=sys.stderr)  # end the progress line
    state.clear()
    if code is None:
        print(f"ckptfs: {mountpoint}: the daemon had died without an exit status; stale mount cleared", file=sys.stderr)
        return 1
    if message and (code or sys.stderr.isatty()):
        print(f"ckptfs: {message}", file=sys.stderr)
    return code


COMMAND = Command(
    "umount", "unmount and wait for the daemon", "Unmount MOUNTPOINT, wait for its daemon to finish and exit with "
    "its status. Also clears a stale mount whose daemon died ('Transport endpoint is not connected').",
    _arguments, run, aliases=("unmount",),
)
