"""The `ckptfs` program: the command line as a user or mount(8) writes it,
one command run (commands/), its problems said in one line, exit codes."""

from __future__ import annotations

import os
import sys

from .commands import NAMES, build_parser
from .errors import CkptfsError


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
    if argv and argv[0] not in NAMES and not argv[0].startswith("-"):
        if not _is_mount_form(argv):
            print(f"ckptfs: unknown command {argv[0]!r} (commands: {', '.join(NAMES)}; "
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
    command = NAMES[args.command]
    if command.printing:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `ckptfs cat ... | head` ends as cat does
    try:
        return command.run(args)
    except CkptfsError as e:
        print(f"ckptfs: {e}", file=sys.stderr)
        return command.trouble
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line, the traceback only when asked for
        if args.debug:
            raise
        print(f"ckptfs: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return command.trouble
