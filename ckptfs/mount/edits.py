"""The checkpoint a mount serves and its edit session: opened at mount
(writable, or read-only with the reason said), repacked at unmount or on
`ckptfs commit`, which then serves the new checkpoint."""

from __future__ import annotations

import gc
import logging
import os

from .. import advice
from ..errors import CkptfsError, EditsKept, EditsWaiting, SourceChangedError
from ..humanize import human_size
from ..sources.location import location
from ..tree import xattrs
from ..tree.checkpoint import VIEW_NAME
from ..tree.nodes import Access
from . import logs, mounts
from .sdnotify import Notifier

log = logging.getLogger(__name__)

REMOTE_READ_ONLY = ("a remote checkpoint mounts read-only unless its edits have somewhere to go: --output DEST, "
                    "or --replace (docs/remote.md)")


def _read_only(checkpoint, reason: str, say: bool = True) -> None:
    """Serve the checkpoint read-only, saying why in the log and on stderr
    (unless asked for) and in the root's `user.ckptfs.read_only` attribute."""
    checkpoint.root.xattrs[xattrs.READ_ONLY] = reason
    if say:
        logs.tell(log, logging.WARNING, f"{reason}; mounted read-only")


#: notes said at mount, at most; the rest are in .ckptfs/info.yaml
NOTES_SAID = 20


def say_notes(checkpoint, mountpoint: str) -> None:
    """What a reader noted instead of refusing (a tensor cut off, a member
    skipped, a file shown plain because it cannot be read), one line each
    on stderr and in the log."""
    notes = checkpoint.notes
    for note in notes[:NOTES_SAID]:
        logs.tell(log, logging.WARNING, f"{checkpoint.source_path}: {note}")
    if len(notes) > NOTES_SAID:
        logs.tell(log, logging.WARNING, f"{checkpoint.source_path}: {len(notes) - NOTES_SAID} more notes in "
                                        f"{os.path.join(mountpoint, VIEW_NAME, 'info.yaml')}")


def _edit_session(checkpoint, opts, resume: bool = False):
    """The edit session of a writable mount, or None: read-only when asked,
    when the format has no writer, or when the overlay cannot be had
    (another writable mount, edits of a crashed one waiting, no write access).
    `resume` takes up the waiting edits instead (CkptfsError if it cannot)."""
    from ..write.session import EditSession

    source = checkpoint.source_path
    if opts.read_only:
        return _read_only(checkpoint, "mounted with -o ro", say=False)
    if checkpoint.writer is None:
        reason = checkpoint.root.xattrs.get(xattrs.READ_ONLY) or f"ckptfs cannot write {checkpoint.format} checkpoints"
        return _read_only(checkpoint, f"{source}: {reason}")
    if location(source).remote:
        if not (opts.output or opts.replace):
            return _read_only(checkpoint, REMOTE_READ_ONLY, say=False)
    else:
        parent = os.path.dirname(os.path.abspath(source))
        if not os.access(parent, os.W_OK):  # edits live beside the source
            return _read_only(checkpoint, f"{parent}: not writable, so edits cannot be kept beside the source")
    if resume:
        try:
            return EditSession.resume(checkpoint)
        except SourceChangedError as e:
            raise CkptfsError(f"{e}; {advice.elsewhere(source)}") from None
    try:
        if opts.ignore is None:
            return EditSession.start(checkpoint)
        return EditSession.start(checkpoint, opts.ignore)
    except EditsWaiting as e:
        return _read_only(checkpoint, f"{e} ({advice.waiting(source)})")
    except (CkptfsError, OSError) as e:
        return _read_only(checkpoint, str(e) if isinstance(e, CkptfsError) else f"{source}: {e}")


class MountEdits:
    """The checkpoint a mount serves and its edit session: loaded at mount,
    repacked at unmount (`finish`) or on demand (`commit`, which then serves
    the new checkpoint)."""

    def __init__(self, source: str, opts, state: mounts.MountState, resume: bool = False, notifier=None):
        self.source, self.opts, self.state, self.resume = source, opts, state, resume
        self.notifier = notifier or Notifier("")
        self.session = None
        self.operations = None

    def load(self):
        from ..formats import open_checkpoint
        from ..view import metaview

        # Reading the metadata makes hundreds of thousands of objects that live as
        # long as the mount: collecting during the parse only re-scans them (a
        # third of the parse time), and frozen they are never scanned again.
        gc.disable()
        try:
            checkpoint = open_checkpoint(self.source, self.opts.cache_dir, self.opts.base)
            if self.operations is None:  # at mount; a commit's new checkpoint has the same to say
                say_notes(checkpoint, self.state.mountpoint)
            # what the edits are made on, and what advice must name: for hf://ORG/NAME@main,
            # the commit main was at (its overlay is that commit's)
            self.source = checkpoint.source_path
            self.session = _edit_session(checkpoint, self.opts, self.resume)
            try:
                if self.session is not None:
                    self.session.editable.before_first_change.append(lambda: self.state.write_edits_waiting(True))
                self.resume = False  # a commit starts afresh
                view = metaview.build(checkpoint, self.session)
                view.read_only = True
                view.access = Access.of(checkpoint.stat)  # not what the tree's root may say of its tensors
                checkpoint.root.add(VIEW_NAME, view)
            except BaseException:
                self.abandon()
                raise
        finally:
            gc.freeze()
            gc.enable()
        return checkpoint

    def abandon(self) -> None:
        """A mount that did not come to be: let go of the lock, so that it
        leaves nothing beside the source (the overlay is made on the first
        edit; one that `--resume` took up stays, its edits waiting)."""
        if self.session is not None:
            self.session.editable.overlay.release()
            self.session = None

    def finish(self) -> tuple[int, str]:
        """At unmount: repack, or drop the edits when `umount --discard` asked."""
        options = self.state.finish_options()
        try:
            return 0, self.session.finish(
                discard=options.get("discard", False), output_path=self.opts.output,
                backup=options.get("backup", False), progress=self._progress,
            )
        except EditsKept as e:
            self.session.editable.overlay.release()  # the lock goes with the mount; the edits stay
            return 1, advice.after_repack(e, self.source, self.state.mountpoint, mounted=False)
        except CkptfsError as e:
            return 1, str(e)
        except Exception as e:  # a bug: still a line for `umount` to show, and the edits kept
            log.exception("the repack failed")
            overlay = self.session.editable.overlay
            return 1, (f"{self.source}: the repack failed ({type(e).__name__}: {e}); the edits are kept in "
                       f"{overlay.path}; see the log, {self.opts.log_file or self.state.log_file}")

    def commit(self, force: bool = False, backup: bool = False) -> tuple[int, str]:
        """`ckptfs commit`: repack now, then serve the new checkpoint with an
        empty overlay. Files already open keep reading what they opened.
        A mount with --output writes there once, at unmount."""
        if self.opts.output:
            return 1, (f"{self.source}: this mount writes its edits to {self.opts.output} when it is unmounted; "
                       "commit writes over the source only")
        try:
            message = self.session.finish(force=force, backup=backup, progress=self._progress)
        except EditsKept as e:
            return 1, advice.after_repack(e, self.source, self.state.mountpoint, mounted=True)
        except CkptfsError as e:
            return 1, str(e)
        self.state.write_edits_waiting(False)  # written: whatever is served next, nothing waits
        try:
            checkpoint = self.load()
        except CkptfsError as e:
            return 1, f"{message}, but it cannot be mounted again ({e}); the mount serves what it served"
        if self.session is None:
            return 1, f"{message}; the mount is read-only from now on ({checkpoint.root.xattrs[xattrs.READ_ONLY]})"
        self.operations.replace_tree(checkpoint.root, self.session.editable, self.session.check,
                                     self.session.check_move)
        return 0, message

    def _progress(self, done: int, total: int) -> None:
        """The repack's progress, for `ckptfs umount` and for systemd."""
        self.state.write_progress(done, total)
        self.notifier.progress(f"writing the checkpoint: {human_size(done)} of about {human_size(total)}")
