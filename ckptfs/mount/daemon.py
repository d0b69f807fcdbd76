"""The mount's lifecycle: fork, readiness pipe, signals, trio + pyfuse3.

The checkpoint is parsed before forking, so a bad source is reported by the
CLI itself. The child mounts (`pyfuse3.init`), tells the waiting parent
through a pipe, serves until unmounted or signalled, then unmounts and
records its exit status for `ckptfs umount`.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import tempfile
import time

import pyfuse3
import trio

from ..errors import CkptfsError
from . import mounts
from .sdnotify import Notifier

log = logging.getLogger(__name__)

#: read_ahead_kb of a mount (root only; the kernel's default is 128): reads
#: then come in 1 MiB requests (libfuse 3.14's largest), and a random read of
#: 1 MiB, which spans 257 pages where it is not aligned, is still less than
#: the window, so the kernel reads just its pages: at 1024 it takes it for
#: a stream's start and reads 2-3 MiB (docs/benchmarks.md, "Issue 31: reads")
READ_AHEAD_KB = 2048
READY = b"ok\n"


def serve(operations: pyfuse3.Operations, mountpoint: str, fuse_options: set[str], notify, finish=None, commit=None,
          notifier: Notifier | None = None, source: str = ""):
    """Mount, call `notify(message)` once mounted, serve until unmounted,
    then run `finish()` (the repack of a writable mount). SIGUSR1 runs
    `commit()` (`ckptfs commit`) meanwhile. Returns the exit code and a line
    for `ckptfs umount` (what the repack did, or why not). `notifier` tells
    systemd: READY=1 once the mount answers, STOPPING=1 when it ends, and
    STATUS= lines meanwhile (the repack's progress among them)."""
    notifier = notifier or Notifier("")
    _init(operations, mountpoint, fuse_options)
    serving = f"serving {source} at {mountpoint}" + (" (writable)" if finish else " (read-only)")
    try:
        trio.run(_main, mountpoint, notify, commit, notifier, serving)
    finally:
        pyfuse3.close(unmount=True)
    log.info("unmounted %s", mountpoint)
    notifier.stopping("unmounted; writing the edits, if any" if finish else "unmounted")
    if finish is None:
        return 0, ""
    code, message = finish()
    (log.error if code else log.info)("%s", message)
    notifier.status(message)
    _close_files_after_exit()
    return code, message


def _init(operations: pyfuse3.Operations, mountpoint: str, fuse_options: set[str]) -> None:
    """`pyfuse3.init`, which says only "fuse_session_mount failed": the
    reason is what libfuse or fusermount3 wrote on stderr meanwhile (the
    daemon's is /dev/null), so stderr is a file of its own for the call and
    its last line goes into the error (passed on to stderr when it mounted)."""
    with tempfile.TemporaryFile() as said:
        saved = os.dup(2)
        os.dup2(said.fileno(), 2)
        error = None
        try:
            pyfuse3.init(operations, mountpoint, {_FuseOption(o) for o in fuse_options})
        except RuntimeError as e:
            error = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        text = said.read(64 << 10)
    if error is None:
        _try_write(2, text)
        return
    lines = text.decode(errors="surrogateescape").strip().splitlines()
    raise CkptfsError(f"{mountpoint}: cannot mount: {lines[-1].strip() if lines else error}")


class _FuseOption(str):
    """A mount option as bytes for libfuse, whatever bytes it holds.
    pyfuse3 (3.5, `make_fuse_args`) encodes each option with
    `.encode('us-ascii')`, so `fsname=` of a source named `modèle/…` (or with
    bytes that are not UTF-8) cannot be given as a plain str; libfuse and the
    kernel take any bytes but NUL there, and /proc/self/mountinfo then names
    the source as it is on disk, for findmnt and `ckptfs status`."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return os.fsencode(str(self))


def _close_files_after_exit() -> None:
    """Leave the last close of the daemon's files to a helper that outlives
    it by a moment. A repack renames the new checkpoint over the source, and
    the last close of the old file frees its blocks (a quarter of a second
    per GB on ext4), which `ckptfs umount`, waiting for the daemon to exit,
    need not wait for."""
    read_end, write_end = os.pipe()  # write_end stays open until the daemon exits
    if os.fork() == 0:
        os.close(write_end)
        os.read(read_end, 1)  # end of file: the daemon is gone
        os._exit(0)
    os.close(read_end)


async def _main(mountpoint: str, notify, commit, notifier: Notifier, serving: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, notifier)
        nursery.start_soon(_commit_on_signal, mountpoint, commit, notifier, serving)
        nursery.start_soon(_when_usable, mountpoint, notify, notifier, serving)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _when_usable(mountpoint: str, notify, notifier: Notifier, serving: str) -> None:
    """Once the kernel has finished FUSE INIT (a stat of the mount point is
    answered only then), raise the read-ahead window, which INIT resets, and
    tell the waiting parent that the mount is usable."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    entry = mounts.mounted_at(mountpoint)
    if entry and mounts.raise_read_ahead(entry, READ_AHEAD_KB):
        log.debug("read_ahead_kb of %s set to %d", entry.device, READ_AHEAD_KB)
    else:
        log.info("could not raise read_ahead_kb (needs root); reads arrive as 128 KiB requests")
    log.info("mounted at %s", mountpoint)
    notify(READY)
    notifier.ready(serving)


async def _commit_on_signal(mountpoint: str, commit, notifier: Notifier, serving: str) -> None:
    """SIGUSR1 (from `ckptfs commit`): repack now. It runs in the event loop,
    so requests wait meanwhile and every edit before it is in the repack.
    A read-only mount (`commit` None) answers that it has nothing to write."""
    state = mounts.MountState(mountpoint)
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            requested = state.commit_requested()
            if requested is None:
                continue
            if commit is None:
                code, message = 1, f"{mountpoint}: mounted read-only; there are no edits to write"
            else:
                notifier.status("ckptfs commit: writing the edits")
                code, message = commit(requested.get("force", False), requested.get("backup", False))
            (log.error if code else log.info)("commit: %s", message)
            notifier.status(f"{serving}; last commit: {message}")
            state.write_commit_result(requested["request"], code, message)


async def _stop_on_signal(notifier: Notifier) -> None:
    """pyfuse3 installs no signal handlers: turn SIGTERM/SIGINT/SIGHUP into a
    clean unmount instead of a dead mount."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received, unmounting", signal.Signals(signum).name)
            notifier.stopping(f"{signal.Signals(signum).name} received, unmounting")
            pyfuse3.terminate()
            return


def ignore_commit_signal() -> None:
    """Before a daemon's pid is written where `ckptfs commit` finds it: a
    SIGUSR1 that arrives before the event loop listens must not kill it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def spawn(run, state: mounts.MountState, record: mounts.Record, end_log, log_where: str, timeout: float = 120,
          over_autofs: bool = False) -> int:
    """Run `run(notify)` in a background daemon; return 0 once it has
    mounted, or raise CkptfsError with the reason it could not. The daemon
    ends the log that is already set up (`end_log(code)`); `log_where` (a
    path, or "the journal") is named in messages.

    The daemon starts a session of its own, away from the terminal, except
    over an automount point (`over_autofs`): the kernel lets only the
    automounter's process group (systemd runs mount(8) in its own) walk to
    a mount point whose mount is pending; anybody else, this daemon mounting
    there included, would wait for the very mount it is making."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon: it never returns into the command's code, whatever happens
        code = 1
        try:
            os.close(read_end)
            code = _daemon(run, state, record, end_log, write_end, keep_stderr=log_where == "the journal",
                           new_session=not over_autofs)
        finally:
            os._exit(code)
    os.close(write_end)
    message = _wait_message(read_end, timeout)
    os.close(read_end)
    if message is None:
        os.kill(pid, signal.SIGTERM)  # it unmounts, if it had mounted, and exits
        mounts.wait_exit(pid, 30)
        raise CkptfsError(f"timed out after {timeout:.0f} s waiting for the mount daemon; see {log_where}")
    if message == READY.decode().strip():
        return 0
    raise CkptfsError(f"{message or 'the mount daemon exited before mounting'} (its log: {log_where})")


def _daemon(run, state: mounts.MountState, record: mounts.Record, end_log, pipe: int, keep_stderr: bool,
            new_session: bool) -> int:
    if new_session:
        os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    code, message = 1, ""
    try:
        ignore_commit_signal()
        state.write(os.getpid(), record)

        def notify(line: bytes) -> None:
            os.write(pipe, line)

        code, message = run(notify)
    except CkptfsError as e:
        log.error("%s", e)
        _try_write(pipe, os.fsencode(f"{e}\n"))  # a path's bytes as they are
    except BaseException as e:
        log.exception("the mount daemon failed")
        _try_write(pipe, os.fsencode(f"the mount daemon failed ({e!r})\n"))
    finally:
        state.write_exit(code, message)
        end_log(code)
    return code


def _try_write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass  # the parent is gone; the log has the message


def _wait_message(fd: int, timeout: float) -> str | None:
    """The daemon's one-line message: '' if it exited without one, None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    poller = select.poll()  # not select(): the fd may be above 1,024 once a checkpoint's files are open
    poller.register(fd, select.POLLIN)
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return os.fsdecode(data).strip()
