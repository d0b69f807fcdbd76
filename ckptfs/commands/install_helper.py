"""`ckptfs install-helper`: what mount(8), fstab lines and systemd's .mount
units need to run this ckptfs, and the man page and completions system-wide.

mount(8) runs `/sbin/mount.fuse.ckptfs SRC MNT -o OPTS` for a `fuse.ckptfs`
mount, with a PATH of its own; the helper written here runs this
installation's `ckptfs` by its absolute path. Idempotent: a file already as
it would be written is left alone, one that install-helper wrote before is
brought up to date, and any other file in the way is refused, never
overwritten. `--uninstall` removes only files that install-helper wrote.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
import sysconfig

from ..errors import CkptfsError
from . import manual
from .command import Command

HELPER_MARK = "written by ckptfs install-helper"
HELPER = "sbin/mount.fuse.ckptfs"
#: where install-helper puts manual's files, under the root
SHARE = "usr/local/share"


def this_ckptfs() -> str:
    """The absolute path of this installation's `ckptfs` command."""
    candidates = [os.path.join(sysconfig.get_path("scripts"), "ckptfs")]
    if os.path.basename(sys.argv[0]) == "ckptfs":
        candidates.insert(0, sys.argv[0])
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    raise CkptfsError(f"cannot find this installation's ckptfs command (looked at {', '.join(candidates)}); "
                      "run install-helper as the ckptfs command that pip installed")


def helper_text(ckptfs: str) -> str:
    return (f"#!/bin/sh\n# {HELPER_MARK}: mount(8) runs this for -t fuse.ckptfs and fstab lines.\n"
            f"exec {shlex.quote(ckptfs)} \"$@\"\n")


def _paths(root: str) -> list[str]:
    return [os.path.join(root, HELPER)] + [os.path.join(root, SHARE, name) for name in manual.FILES.values()]


def _files(root: str) -> dict[str, tuple[str, int]]:
    """Path under `root` -> (text, mode) of everything install-helper writes."""
    from . import build_parser  # the package that lists this command

    helper, *made = _paths(root)
    texts = manual.render(build_parser())
    files = {helper: (helper_text(this_ckptfs()), 0o755)}
    files.update({path: (texts[kind], 0o644) for path, kind in zip(made, manual.FILES)})
    return files


def _ours(path: str) -> bool:
    try:
        with open(path, errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return HELPER_MARK in head or manual.MADE_HERE in head


def install(root: str = "/") -> list[str]:
    """Write the files; returns a line for each of what was done."""
    files = _files(root)
    in_the_way = [p for p in files if os.path.lexists(p) and not _ours(p)]
    if in_the_way:
        raise CkptfsError(f"{in_the_way[0]}: exists and was not written by ckptfs install-helper; "
                          "remove it first if it is to be replaced")
    done = []
    for path, (text, mode) in files.items():
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path) as f:
                if f.read() == text and stat.S_IMODE(os.stat(path).st_mode) == mode:
                    done.append(f"{path}: up to date")
                    continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.ckptfs-tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        done.append(f"{path}: written")
    if not shutil.which("fusermount3", path="/usr/bin:/bin"):
        done.append("fusermount3 is missing: install Debian's fuse3 package for unmounting")
    return done


def uninstall(root: str = "/") -> list[str]:
    done = []
    for path in _paths(root):
        if not os.path.lexists(path):
            continue
        if not _ours(path):
            done.append(f"{path}: not written by ckptfs install-helper; left alone")
            continue
        os.unlink(path)
        done.append(f"{path}: removed")
    return done or ["nothing to remove"]


def _arguments(parser) -> None:
    parser.add_argument("--uninstall", action="store_true", help="remove what install-helper installed")
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="install under DIR instead of / (for packages and images)")


def run(args) -> int:
    try:
        done = uninstall(args.root) if args.uninstall else install(args.root)
    except OSError as e:
        hint = " (install-helper writes system folders: run it as root)" if e.errno in (1, 13) else ""
        raise CkptfsError(f"{e.filename}: {e.strerror}{hint}") from None
    for line in done:
        print(f"ckptfs: {line}", file=sys.stderr)
    return 0


COMMAND = Command(
    "install-helper", "let mount(8), fstab and systemd mount with this ckptfs (root)",
    "Install /sbin/mount.fuse.ckptfs, which runs this installation's ckptfs by its absolute path (mount(8) resets "
    "PATH), with the man page and the bash and zsh completions under /usr/local/share. Run it again after moving "
    "ckptfs; files it did not write are left alone.", _arguments, run,
)
