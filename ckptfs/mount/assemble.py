"""A mount put together, the composition root of `ckptfs mount`: the
options applied and checked, the mount point checked, the checkpoint opened
with its edit session, the FUSE operations made over its tree, then served
by a background daemon (or in the foreground). commands/mount.py hands it
what the command line says."""

from __future__ import annotations

import logging
import os
import sys

from .. import limits
from ..errors import CkptfsError
from . import logs, mounts, options
from .destination import check_edit_options

log = logging.getLogger("ckptfs")


def mount(source: str, mountpoint: str, opts: options.MountOptions, resume: bool, foreground: bool) -> int:
    """Refusals and the fall-back to read-only are logged as well as said."""
    state = mounts.MountState(mountpoint)
    to_stderr = foreground and not opts.log_file or not foreground and logs.stderr_is_journal()
    log_file = None if to_stderr else opts.log_file or state.log_file
    end_log = logs.setup(opts.log_level, log_file, keep=foreground or opts.log_file is not None)
    try:
        return _mount(source, mountpoint, opts, resume, foreground, state, log_file, end_log)
    except CkptfsError as e:
        log.error("mount refused: %s", e)
        end_log(1)
        if to_stderr:
            return 1
        raise


def _mount(source: str, mountpoint: str, opts: options.MountOptions, resume: bool, foreground: bool,
           state: mounts.MountState, log_file: str | None, end_log) -> int:
    from ..fuse.operations import Operations, Ownership, Shown
    from . import daemon
    from .edits import MountEdits
    from .sdnotify import Notifier

    limits.apply(opts.limits)
    _remote_settings(opts.remote)
    check_edit_options(opts, source, resume)
    over_autofs = _check_mountpoint(mountpoint, opts.nonempty)
    _check_ownership_options(opts)
    # only a foreground mount is the process systemd started (Type=notify);
    # a background daemon would be a stranger to it
    notifier = Notifier.from_environment() if foreground else Notifier("")
    edits = MountEdits(source, opts, state, resume=resume, notifier=notifier)
    checkpoint = edits.load()
    try:
        session = edits.session
        shown = Shown(opts.uid, opts.gid, opts.fmask, opts.dmask)
        operations = Operations(checkpoint.root, Ownership.of(checkpoint.stat), session and session.editable,
                                session and session.check, shown if shown != Shown() else None,
                                session and session.check_move)
        edits.operations = operations
        fuse_options = set(opts.fuse) | options.ALWAYS | {"default_permissions", "subtype=ckptfs", "fsname=" + _fsname(source)}
        if session is None:
            fuse_options.add("ro")
        log_where = log_file or ("the journal" if logs.stderr_is_journal() else "stderr")
        record = mounts.Record(source, checkpoint.format, session is not None, log_where, edits=bool(resume),
                               output=opts.output if session is not None else None)

        def run(notify):
            hooks = (edits.finish, edits.commit) if session else (None, None)
            try:
                return daemon.serve(operations, mountpoint, fuse_options, notify, *hooks, notifier=notifier,
                                    source=source)
            except BaseException:
                edits.abandon()  # in the daemon: the edits, if any, stay for recover
                raise

        if foreground:
            return _serve_in_foreground(run, state, record, log_file, end_log)
        return daemon.spawn(run, state, record, end_log, log_where, over_autofs=over_autofs)
    except BaseException:
        edits.abandon()  # a mount that failed leaves no lock beside the source
        raise


def _serve_in_foreground(run, state: mounts.MountState, record: mounts.Record, log_file: str | None, end_log) -> int:
    from . import daemon

    daemon.ignore_commit_signal()
    state.write(os.getpid(), record)
    code, message = 1, ""
    try:
        code, message = run(lambda message: None)
    finally:
        state.write_exit(code, message)
        end_log(code)
    if message and log_file is not None:
        print(f"ckptfs: {message}", file=sys.stderr)
    return code


def _remote_settings(values: dict[str, int]) -> None:
    from ..sources.settings import SETTINGS

    for name, value in values.items():
        setattr(SETTINGS, name, value)


def _check_mountpoint(mountpoint: str, nonempty: bool) -> bool:
    """A mount point must be an empty directory with nothing mounted on it,
    but for systemd's automount point: ckptfs mounts over its autofs entry,
    whose listing is not read. Returns whether it is such a point."""
    entry = mounts.mounted_at(mountpoint)
    if entry is not None and entry.fstype != "autofs":
        raise CkptfsError(f"{mountpoint}: already a mount point (unmount it first: ckptfs umount {mountpoint})")
    if not os.path.exists(mountpoint):
        raise CkptfsError(f"{mountpoint}: mount point does not exist")
    if not os.path.isdir(mountpoint):
        raise CkptfsError(f"{mountpoint}: mount point is not a directory")
    if entry is None and not nonempty and os.listdir(mountpoint):
        raise CkptfsError(f"{mountpoint}: mount point is not empty; its files would be hidden (-o nonempty mounts anyway)")
    return entry is not None


def _check_ownership_options(opts: options.MountOptions) -> None:
    """Only root hands a mount's files to another user or group."""
    if os.geteuid() == 0:
        return
    if opts.uid not in (None, os.geteuid()):
        raise CkptfsError(f"-o uid={opts.uid}: only root may show the files as another user's")
    if opts.gid not in (None, os.getegid(), *os.getgroups()):
        raise CkptfsError(f"-o gid={opts.gid}: not a group of yours; only root may show the files as its")


def _fsname(source: str) -> str:
    return source.replace("\\", "\\\\").replace(",", "\\,")
