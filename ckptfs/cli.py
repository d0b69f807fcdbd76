"""The `ckptfs` command: argument parsing, user messages, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import advice, limits
from .errors import CkptfsError, EditsKept, SourceChangedError
from .humanize import human_size, parse_size, plural
from .mount import logs, mounts, options
from .mount.destination import check_edit_options, check_output, destination, use_overlay_dir
from .version import __version__

log = logging.getLogger("ckptfs")

SUBCOMMANDS = ("mount", "umount", "unmount", "commit", "recover", "status", "info", "ls", "cat", "diff", "scan",
               "export", "install-helper", "completion")
UMOUNT_TIMEOUT = 600.0
#: stands in a description for the formats' list, which `_Parser` reads from their registry
FORMATS = "{formats}"


class _Parser(argparse.ArgumentParser):
    """Its description names the formats as their registry describes them
    (formats/__init__.py), imported only when help or the man page reads it:
    importing every format would slow each command by a quarter second."""

    @property
    def description(self) -> str | None:
        if self._description and FORMATS in self._description:
            from .formats import described

            return self._description.replace(FORMATS, described())
        return self._description

    @description.setter
    def description(self, text: str | None) -> None:
        self._description = text


MOUNT_EPILOG = """\
mount options (-o, comma-separated):
  ro                 read-only (default: writable; edits are written back on unmount,
                     see docs/writing.md)
  allow_other        let other users see the mount (needs user_allow_other)
  uid=N, gid=N       show every file as owned by this user and group (root only,
                     or your own uid and groups)
  umask=022          take these mode bits away from files and folders
  fmask=, dmask=     the same for files only, for folders only
  noexec, noatime, ...   kernel mount flags, passed through; every mount is nosuid,nodev
                     (suid and dev, which mount.fuse3 adds, are ignored)
  nonempty           mount over a directory that holds files (they are hidden until unmounted)
  ignore=GLOB:GLOB   names of editors' temporary files, never packed (default:
                     .*.swp:.*.swx:.*.swo:*~:4913:.#*:*.tmp:.~lock.*#; ignore=+GLOB adds
                     to them, ignore= packs everything)
  debug, log_level=LEVEL, log_file=PATH, cache_dir=PATH  as the long options
  max_NAME=N         raise a bound on what a checkpoint may make ckptfs spend: max_pickle_ops,
                     max_pickle_memo, max_pickle_nesting, max_pickle_bytes, max_yaml_values,
                     max_header_bytes, max_members (defaults in docs/security.md)
  block_size=8M      a remote source's largest range request (docs/remote.md)
  cache_memory=256M  remote bytes kept in memory
  cache_disk=2G      remote bytes kept on disk under the cache dir across mounts (0: none)
  stall_timeout=30   seconds a remote request may go without progress: then it is
                     asked once more, on another connection, then the read fails (EIO)
  fetch=whole        a file on a web server that ignores range requests (python -m http.server):
                     download it once into the disk cache and read it there
  defaults, noauto, nofail, _netdev, x-systemd.*, ...  fstab-only, ignored

examples:
  ckptfs mount model.safetensors /mnt/m
  ckptfs mount megatron.nemo /mnt/m -o ro
  ckptfs mount ./hf-model-dir /mnt/m          # a Hugging Face model directory
  mount -t fuse.ckptfs model.nemo /mnt/m -o ro # through mount(8) / fstab (ckptfs install-helper)
  ckptfs mount s3://bucket/run/step_100/ /mnt/m     # a prefix of an object store (the remote extra)
  ckptfs mount https://host/model.safetensors /mnt/m
  ckptfs mount hf://org/model@main /mnt/m           # a Hugging Face repository at its commit
  ckptfs mount s3://bucket/model.nemo /mnt/m --output s3://bucket/fixed.nemo   # edits go to a new key
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckptfs",
        description=f"Mount a machine learning checkpoint as a directory: configs as files, every tensor as a "
        f".npy, nothing extracted. Reads {FORMATS}. Mounts of all but the read-only ones are writable: edits "
        "are written back in the same format on unmount.",
    )
    parser.add_argument("--version", action="version", version=f"ckptfs {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="log every detail; show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    mount = sub.add_parser(
        "mount", help="mount a checkpoint", epilog=MOUNT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common], description=f"Mount SOURCE at MOUNTPOINT. Returns once the mount is usable; "
        f"the filesystem is served by a background daemon until 'ckptfs umount'. SOURCE is any of: {FORMATS}.",
    )
    mount.add_argument("source", help="checkpoint file or directory")
    mount.add_argument("mountpoint", help="an existing empty directory (-o nonempty allows files there)")
    mount.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS", help="mount options, see below")
    mount.add_argument("-f", "--foreground", action="store_true", help="serve in the foreground until unmounted")
    mount.add_argument(
        "--resume", action="store_true",
        help="mount writable with the edits an earlier mount left waiting (a refused repack, a crash), to fix them",
    )
    mount.add_argument(
        "--log-file", metavar="PATH",
        help="where the daemon logs (default: a file named after the mount point in /run/ckptfs, or "
        "$XDG_RUNTIME_DIR/ckptfs for other users; removed when the mount ends cleanly, kept when not)",
    )
    mount.add_argument("--cache-dir", metavar="PATH", help="where gzip seek indexes are kept (default: ~/.cache/ckptfs)")
    to = mount.add_mutually_exclusive_group()
    to.add_argument(
        "--output", metavar="DEST",
        help="write the edited checkpoint to DEST (a new path, or a new s3:// key) at unmount; the source stays "
        "as it is. A remote source mounts writable only with --output or --replace",
    )
    to.add_argument(
        "--replace", action="store_true",
        help="a remote (s3://) source: upload the edited checkpoint over it at unmount, only if it still holds "
        "the version mounted",
    )
    mount.add_argument(
        "--overlay-dir", metavar="DIR",
        help="a remote source: where its edits are kept until written (default: ~/.cache/ckptfs/edits)",
    )
    mount.add_argument("--log-level", choices=logs.LEVELS, help="the least severe messages logged (default: info)")

    umount = sub.add_parser(
        "umount", aliases=["unmount"], help="unmount and wait for the daemon", parents=[common],
        description="Unmount MOUNTPOINT, wait for its daemon to finish and exit with its status. "
        "Also clears a stale mount whose daemon died ('Transport endpoint is not connected').",
    )
    umount.add_argument("mountpoint")
    umount.add_argument(
        "-z", "--lazy", action="store_true",
        help="detach now even if files are open there; the daemon exits once they are closed",
    )
    umount.add_argument("--timeout", type=float, default=UMOUNT_TIMEOUT, help="seconds to wait for the daemon")
    umount.add_argument("--discard", action="store_true", help="drop the edits instead of writing them")
    umount.add_argument("--backup", action="store_true", help="keep the original as SOURCE.orig when writing the edits")

    commit = sub.add_parser(
        "commit", help="write a writable mount's edits now, without unmounting", parents=[common],
        description="Repack the checkpoint mounted at MOUNTPOINT with its edits, as an unmount would, and go on "
        "serving the new checkpoint with no edits pending. Requests wait while it runs.",
    )
    commit.add_argument("mountpoint")
    commit.add_argument("--force", action="store_true", help="write the checkpoint even if nothing changed")
    commit.add_argument("--backup", action="store_true", help="keep the original as SOURCE.orig")
    commit.add_argument("--timeout", type=float, default=UMOUNT_TIMEOUT, help="seconds to wait for the repack")

    recover = sub.add_parser(
        "recover", help="write or drop the edits a crashed mount or a refused repack left", parents=[common],
        description="A writable mount whose daemon died, or whose repack was refused, leaves its edits in an "
        "overlay beside SOURCE (.NAME.ckptfs/). Write them into SOURCE (--resume) or drop them (--discard); "
        "to fix an edit first, 'ckptfs mount --resume SOURCE MOUNTPOINT'.",
    )
    recover.add_argument("source")
    action = recover.add_mutually_exclusive_group(required=True)
    action.add_argument("--resume", action="store_true", help="repack SOURCE with the edits")
    action.add_argument("--discard", action="store_true", help="drop the edits; SOURCE stays as it is")
    recover.add_argument(
        "--output", metavar="PATH",
        help="write the edited checkpoint here (a path or an s3:// key) instead of over SOURCE (also when SOURCE "
        "changed since the edits)",
    )
    recover.add_argument("--overlay-dir", metavar="DIR", help="a remote source: the --overlay-dir it was mounted with")
    recover.add_argument("--backup", action="store_true", help="keep the original as SOURCE.orig")

    status = sub.add_parser(
        "status", help="list the ckptfs mounts on this machine", parents=[common],
        description="Every ckptfs mount in this mount namespace (or the one at MOUNTPOINT): its source, format, "
        "read-only or writable, whether edits wait to be written, the daemon's pid and its log. What another "
        "user's daemon recorded is shown to root only; for the rest the kernel's mount table speaks.",
    )
    status.add_argument("mountpoint", nargs="?")
    status.add_argument("--json", action="store_true", help="a JSON list of objects, one per mount (docs/cli.md)")

    info = sub.add_parser(
        "info", help="what a checkpoint holds, without mounting it", parents=[common],
        description="Format, size, tensors, parameters by dtype and by top-level folder, the globals its pickles "
        "name (none is imported or run) and notes, read from the metadata alone.",
    )
    info.add_argument("source", help="checkpoint file or directory")
    info.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")

    ls = sub.add_parser(
        "ls", help="list a checkpoint's tree, as a mount shows it, without mounting", parents=[common],
        description="List the folder (or the file) at PATH in the tree a mount of SOURCE shows: the same "
        "names, the .ckptfs/ view included. Needs no FUSE.",
    )
    ls.add_argument("source", help="checkpoint file or directory")
    ls.add_argument("path", nargs="?", default=".", help="a path in the tree (default: its root)")
    ls.add_argument("-R", "--recursive", action="store_true", help="everything below PATH")
    ls.add_argument("-l", "--long", action="store_true", help="type, size and, for a tensor, dtype and shape")
    ls.add_argument("--json", action="store_true", help="a JSON list of objects, one per entry (docs/cli.md)")

    cat = sub.add_parser(
        "cat", help="write a file of a checkpoint's tree to stdout, without mounting", parents=[common],
        description="Write the file at PATH in the tree a mount of SOURCE shows, byte for byte as the mount "
        "serves it: a tensor as its .npy, a value as its YAML. Needs no FUSE.",
    )
    cat.add_argument("source", help="checkpoint file or directory")
    cat.add_argument("path", help="a path in the tree, such as model_config.yaml or encoder/0/weight.npy")

    diff = sub.add_parser(
        "diff", help="compare two checkpoints tensor by tensor, without mounting", parents=[common],
        description="Compare A and B, of any formats: tensors only one has, tensors whose dtype or shape "
        "changed, and for the others whether their bits are equal or how far apart they are (elements that "
        "differ, largest absolute and relative difference, cosine similarity); every non-tensor value by its "
        "path and both values; every other file, added, removed or changed (text as a unified diff). Exit "
        "status 0: nothing differs; 1: different; 2: trouble, as diff(1).",
    )
    diff.add_argument("a", metavar="A", help="checkpoint file or directory")
    diff.add_argument("b", metavar="B", help="checkpoint file or directory")
    diff.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                      help="rewrite the prefix OLD of A's tensor names to NEW before matching (repeatable)")
    diff.add_argument("--include", action="append", default=[], metavar="GLOB",
                      help="compare only the tensors, values and files whose names or paths match (repeatable)")
    diff.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                      help="leave out the tensors, values and files whose names or paths match (repeatable)")
    diff.add_argument("--tensors-only", action="store_true",
                      help="compare tensors only, not the files and values beside them (across formats)")
    diff.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")

    export = sub.add_parser(
        "export", help="write a checkpoint's tensors as safetensors, a Hugging Face folder or a torch.save file",
        parents=[common],
        description="Convert SOURCE, of any format, tensor by tensor into OUT: one .safetensors file, a Hugging "
        "Face folder of safetensors shards with model.safetensors.index.json (hf), or a torch.save file of the "
        "state dict that torch.load(weights_only=True) reads (torch). Streams: memory stays within a copy block, "
        "however large the tensors. The bytes of --to safetensors are those of a mount's "
        ".ckptfs/export/model.safetensors.",
    )
    export.add_argument("source", help="checkpoint file or directory")
    export.add_argument("out", metavar="OUT", help="the new file (a new folder for --to hf); must not exist. An "
                        "s3:// key (a prefix for --to hf) is uploaded as it is written, nothing staged on disk")
    export.add_argument("--to", choices=("safetensors", "hf", "torch"), default="safetensors",
                        help="the format to write (default: safetensors)")
    export.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="export only tensors whose names match (repeatable)")
    export.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out tensors whose names match (repeatable)")
    export.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                        help="write names that start with OLD with NEW in its place; globs match the names "
                        "before (repeatable)")
    export.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="largest shard of --to hf, as transformers says it: 5GB, 500MB, 2GiB (default: 5GB)")
    export.add_argument("--quantized", choices=("dequantize", "raw"), default="dequantize",
                        help="a quantized tensor (GGUF's Q4_0, Q6_K...) as float32 values, as its dequantized.npy "
                        "shows them, or as its blocks (uint8, its GGML type in the safetensors metadata) "
                        "(default: dequantize)")

    scan = sub.add_parser(
        "scan", help="check a checkpoint's pickles for code before anything loads them", parents=[common],
        description="List every global the pickles of SOURCE name (data.pkl and every other .pkl record, in any "
        "case, legacy torch.save files, distributed checkpoint metadata and items, common.pt, files inside "
        "archives) and check each against an allowlist of what checkpoints need: tensors, storages, dtypes, "
        "containers, NumPy arrays, OmegaConf configs. Nothing is imported or run. Exit status 0: safe; "
        "1: a global outside the allowlist (printed with where it is); 2: trouble, no verdict.",
    )
    scan.add_argument("source", help="checkpoint file or directory")
    scan.add_argument("--allow", action="append", default=[], metavar="GLOBAL",
                      help="also take globals matching GLOBAL (module.name, * as a wildcard) as safe (repeatable)")
    scan.add_argument("-v", "--verbose", action="store_true",
                      help="list every global with its verdict, and what was passed over")
    scan.add_argument("-o", dest="options", action="append", default=[], metavar="max_NAME=N",
                      help="raise a limit, as for mount (max_pickle_bytes, max_pickle_ops, ...)")
    scan.add_argument("--json", action="store_true", help="one JSON object (docs/cli.md)")

    helper = sub.add_parser(
        "install-helper", help="let mount(8), fstab and systemd mount with this ckptfs (root)", parents=[common],
        description="Install /sbin/mount.fuse.ckptfs, which runs this installation's ckptfs by its absolute path "
        "(mount(8) resets PATH), with the man page and the bash and zsh completions under /usr/local/share. "
        "Run it again after moving ckptfs; files it did not write are left alone.",
    )
    helper.add_argument("--uninstall", action="store_true", help="remove what install-helper installed")
    helper.add_argument("--root", default="/", metavar="DIR",
                        help="install under DIR instead of / (for packages and images)")

    completion = sub.add_parser(
        "completion", help="print a shell completion script", parents=[common],
        description="Print the completion script for SHELL; install-helper installs both system-wide. "
        "For one user: ckptfs completion bash > ~/.local/share/bash-completion/completions/ckptfs",
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def _is_mount_form(argv: list[str]) -> bool:
    """`mount -t fuse.ckptfs` runs `ckptfs SRC MNT -o OPTS`: two paths first."""
    paths = argv[:2]
    return len(paths) == 2 and not any(a.startswith("-") for a in paths) and (
        os.path.exists(paths[0]) or "/" in paths[0] or "." in paths[0]
    )


def _mount_helper_argv(argv: list[str]) -> list[str] | None:
    """`ckptfs mount` arguments for what mount(8) passes a helper,
    `SRC MNT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`; None for `-f` (a fake
    mount: nothing to do). -s (sloppy), -n (no mtab), -v and -t say nothing
    to ckptfs; -N (another mount namespace) is not supported."""
    out, rest = ["mount", *argv[:2]], argv[2:]
    while rest:
        arg = rest.pop(0)
        if arg in ("-o", "-t") and rest:
            value = rest.pop(0)
            out += ["-o", value] if arg == "-o" else []
        elif arg.startswith("-o") and len(arg) > 2:
            out += ["-o", arg[2:]]
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) <= set("sfnv"):
            if "f" in arg:
                return None
        elif arg == "-N" or arg.startswith("-N"):
            raise CkptfsError("mount -N (another mount namespace) is not supported; run the mount inside it")
        else:
            out.append(arg)  # ckptfs's own flags, such as --debug
    return out


def _names_as_bytes() -> None:
    """A path that is not UTF-8 (Python holds its bytes as surrogate
    escapes) is printed on stdout as the bytes it is, as ls and find print
    it, whatever the locale (a UTF-8 one other than C.UTF-8 would make it an
    error). Messages on stderr keep Python's escapes (`\\udcff`): text for
    a terminal, the journal and the tests that read them."""
    import io

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")


def _raise_open_files_limit() -> None:
    """A distributed checkpoint of 2,048 ranks is 2,048 files held open; the
    usual soft limit is 1,024. Raise it to the hard limit (to 2^20 where
    that is unlimited, the kernel's usual ceiling)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # the limit stays as it was (troubleshooting.md: "Too many open files")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _raise_open_files_limit()
    _names_as_bytes()
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        if not _is_mount_form(argv):
            print(f"ckptfs: unknown command {argv[0]!r} (commands: {', '.join(SUBCOMMANDS)}; "
                  "see 'ckptfs --help')", file=sys.stderr)
            return 2
        try:
            argv = _mount_helper_argv(argv)
        except CkptfsError as e:
            print(f"ckptfs: {e}", file=sys.stderr)
            return 1
        if argv is None:
            return 0
    args = build_parser().parse_args(argv)
    if args.command in PRINTING:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `ckptfs cat ... | head` ends as cat does
    trouble = TROUBLE_EXIT.get(args.command, 1)
    try:
        return COMMANDS[args.command](args)
    except CkptfsError as e:
        print(f"ckptfs: {e}", file=sys.stderr)
        return trouble
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line, the traceback only when asked for
        if args.debug:
            raise
        print(f"ckptfs: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return trouble


def _mount_options(args) -> options.MountOptions:
    opts = options.parse(args.options, options.MountOptions())
    opts.debug = opts.debug or args.debug
    opts.log_level = "debug" if opts.debug else args.log_level or opts.log_level or "info"
    opts.log_file = args.log_file or opts.log_file
    opts.cache_dir = args.cache_dir or opts.cache_dir or _default_cache_dir()
    opts.output, opts.replace = args.output and destination(args.output), args.replace
    opts.overlay_dir = args.overlay_dir
    return opts


def _default_cache_dir() -> str:
    from .sources.cachedir import default_cache_dir

    return default_cache_dir()


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


def mount(args) -> int:
    """Refusals and the fall-back to read-only are logged as well as said."""
    opts = _mount_options(args)
    mountpoint = os.path.abspath(args.mountpoint)
    state = mounts.MountState(mountpoint)
    to_stderr = args.foreground and not opts.log_file or not args.foreground and logs.stderr_is_journal()
    log_file = None if to_stderr else opts.log_file or state.log_file
    end_log = logs.setup(opts.log_level, log_file, keep=args.foreground or opts.log_file is not None)
    try:
        return _mount(args, opts, source_path(args.source), mountpoint, state, log_file, end_log)
    except CkptfsError as e:
        log.error("mount refused: %s", e)
        end_log(1)
        if to_stderr:
            return 1
        raise


def _mount(args, opts, source: str, mountpoint: str, state: mounts.MountState, log_file: str | None, end_log) -> int:
    from .fuse.operations import Operations, Ownership, Shown
    from .mount import daemon
    from .mount.edits import MountEdits
    from .mount.sdnotify import Notifier

    limits.apply(opts.limits)
    remote_settings(opts.remote)
    check_edit_options(opts, source, args.resume)
    over_autofs = _check_mountpoint(mountpoint, opts.nonempty)
    _check_ownership_options(opts)
    # only a foreground mount is the process systemd started (Type=notify);
    # a background daemon would be a stranger to it
    notifier = Notifier.from_environment() if args.foreground else Notifier("")
    edits = MountEdits(source, opts, state, resume=args.resume, notifier=notifier)
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
        record = mounts.Record(source, checkpoint.format, session is not None, log_where, edits=bool(args.resume),
                               output=opts.output if session is not None else None)

        def run(notify):
            hooks = (edits.finish, edits.commit) if session else (None, None)
            try:
                return daemon.serve(operations, mountpoint, fuse_options, notify, *hooks, notifier=notifier,
                                    source=source)
            except BaseException:
                edits.abandon()  # in the daemon: the edits, if any, stay for recover
                raise

        if args.foreground:
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
        return daemon.spawn(run, state, record, end_log, log_where, over_autofs=over_autofs)
    except BaseException:
        edits.abandon()  # a mount that failed leaves no lock beside the source
        raise


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


def commit(args) -> int:
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


def recover(args) -> int:
    from .formats import open_checkpoint
    from .sources import remote
    from .write.overlay import Overlay, overlay_dir
    from .write.session import EditSession, remove_stale_temp_files

    source = source_path(args.source)
    use_overlay_dir(source, args.overlay_dir)
    if args.output:
        check_output(destination(args.output), source)
    if not remote.is_url(source) and not os.path.lexists(source):
        waiting = f" (edits wait in {overlay_dir(source)}; remove it to drop them)" if os.path.isdir(overlay_dir(source)) else ""
        raise CkptfsError(f"{source}: no such file or directory{waiting}")
    if args.discard:  # needs no checkpoint: the source may be anything by now
        Overlay.discard_waiting(source, also=lambda: remove_stale_temp_files(source))
        print(f"ckptfs: {source}: edits discarded", file=sys.stderr)
        return 0
    checkpoint = open_checkpoint(source, _default_cache_dir())
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


def status(args) -> int:
    from .mount import status as mount_status

    if args.mountpoint is not None:
        mountpoint = os.path.abspath(args.mountpoint)
        found = [m for m in mount_status.ckptfs_mounts() if m["mountpoint"] == mountpoint]
        if not found:
            raise CkptfsError(f"{mountpoint}: not a ckptfs mount")
    else:
        found = mount_status.ckptfs_mounts()
    print(json.dumps(found, indent=2) if args.json else mount_status.table(found))
    return 0


def remote_settings(values: dict[str, int]) -> None:
    from .sources import remote

    for name, value in values.items():
        setattr(remote.SETTINGS, name, value)


def source_path(text: str) -> str:
    """A source as the command line names it: a URL as it is, a path made absolute."""
    from .sources.remote import is_url

    return text if is_url(text) else os.path.abspath(text)


def _open(source: str):
    from .formats import open_checkpoint

    return open_checkpoint(source_path(source), _default_cache_dir())


def info(args) -> int:
    from . import info as checkpoint_info

    summary = checkpoint_info.summary(_open(args.source))
    print(json.dumps(summary, indent=2) if args.json else checkpoint_info.text(summary))
    return 0


def ls(args) -> int:
    from .view import browse

    ckpt = _open(args.source)
    listed = list(browse.entries(browse.find(ckpt, args.path), args.path, args.recursive))
    if args.json:
        print(json.dumps([browse.describe(path, node) for path, node in listed], indent=2))
    else:
        shown = [(path if args.recursive else path.rsplit("/", 1)[-1], node) for path, node in listed]
        print("\n".join(browse.long_line(name, node) if args.long else name for name, node in shown))
    return 0


def cat(args) -> int:
    from .view import browse

    ckpt = _open(args.source)
    browse.copy(ckpt, args.path, browse.find(ckpt, args.path), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


def diff(args) -> int:
    """Exit status as diff(1): 0 the same, 1 different, 2 trouble."""
    from . import compare
    from .api import open_checkpoint

    maps = _prefix_maps(args.map)
    report = compare.compare(open_checkpoint(args.a), open_checkpoint(args.b), maps, args.include, args.exclude,
                             args.tensors_only)
    print(json.dumps(compare.json_safe(report), indent=2) if args.json else compare.text(report))
    return 0 if report["same"] else 1


def _prefix_maps(items: list[str]) -> list[tuple[str, str]]:
    maps = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise CkptfsError(f"--map {item!r}: give it as OLD=NEW")
        maps.append((old, new))
    return maps


def _byte_size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CkptfsError(f"--max-shard-size {text!r}: give a size such as 5GB, 500MB or 2GiB")
    return value


def export(args) -> int:
    from .formats import open_checkpoint
    from .tree.nodes import Access
    from .write import export as exporting

    maps = _prefix_maps(args.map)
    max_bytes = _byte_size(args.max_shard_size)
    source = source_path(args.source)
    checkpoint = open_checkpoint(source, _default_cache_dir())
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
    exporting.write(args.to, selection.items, args.out, max_bytes, progress, readers)
    if progress:
        print(file=sys.stderr)
    total = sum(i.length for i in selection.items)
    dequantized = f" ({len(selection.dequantized):,} dequantized to float32)" if selection.dequantized else ""
    print(f"ckptfs: wrote {destination(args.out)}: {plural(len(selection.items), 'tensor', spec=',')}{dequantized}, "
          f"{human_size(total)} "
          f"({args.to})", file=sys.stderr)
    return 0


def _transfer_printer(what: str):
    def show(done: int, total: int) -> None:
        percent = f" ({100 * done // total}%)" if total else ""
        print(f"\rckptfs: {what}: {human_size(done)} of {human_size(total)}{percent}\033[K", end="",
              file=sys.stderr, flush=True)

    return show


def scan(args) -> int:
    """Exit status 0 safe, 1 dangerous, 2 trouble."""
    from . import scan as pickle_scan

    limits.apply(options.limit_values(args.options))
    source = source_path(args.source)
    if source != os.path.abspath(args.source):
        raise CkptfsError(f"{source}: scan reads local files and folders only (download the pickles, or mount the "
                          "URL and scan the mount's .ckptfs/raw/)")
    report = pickle_scan.scan(source, tuple(args.allow))
    print(json.dumps(report.to_json(), indent=2) if args.json else pickle_scan.text(report, args.verbose))
    return {"safe": 0, "dangerous": 1}.get(report.verdict, 2)


def install_helper(args) -> int:
    from . import install

    try:
        done = install.uninstall(args.root) if args.uninstall else install.install(args.root)
    except OSError as e:
        hint = " (install-helper writes system folders: run it as root)" if e.errno in (1, 13) else ""
        raise CkptfsError(f"{e.filename}: {e.strerror}{hint}") from None
    for line in done:
        print(f"ckptfs: {line}", file=sys.stderr)
    return 0


def completion(args) -> int:
    from . import manual

    print(manual.completion(build_parser(), args.shell), end="")
    return 0


def _fsname(source: str) -> str:
    return source.replace("\\", "\\\\").replace(",", "\\,")


def umount(args) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    entry = mounts.mounted_at(mountpoint)
    state = mounts.MountState(mountpoint)
    pid = state.pid()
    if entry is None and pid is None:
        raise CkptfsError(f"{mountpoint}: not mounted")
    if entry is not None:
        if entry.fstype != "fuse.ckptfs":
            raise CkptfsError(f"{mountpoint}: not a ckptfs mount (it is {entry.fstype})")
        if args.discard or args.backup:
            state.request_finish(discard=args.discard, backup=args.backup)
        done, message = mounts.unmount(mountpoint, lazy=args.lazy)
        if not done:
            hint = " (a process has files open there; close them or use --lazy)" if "busy" in message else ""
            raise CkptfsError(f"{mountpoint}: cannot unmount: {message}{hint}")
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


COMMANDS = {"mount": mount, "umount": umount, "unmount": umount, "commit": commit, "recover": recover,
            "status": status, "info": info, "ls": ls, "cat": cat, "diff": diff, "scan": scan, "export": export,
            "install-helper": install_helper, "completion": completion}
#: commands whose output is read by pipes
PRINTING = ("status", "info", "ls", "cat", "diff", "scan", "completion")
#: commands whose exit status 1 is an answer (different, dangerous): their trouble exits 2, as diff(1)'s does
TROUBLE_EXIT = {"diff": 2, "scan": 2}
