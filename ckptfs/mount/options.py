"""`-o` mount options, as `ckptfs mount -o` and `mount -t fuse.ckptfs` pass them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import limits
from ..errors import CkptfsError

#: Kernel and FUSE options handed to the mount as they are.
PASSED_TO_FUSE = {
    "allow_other", "allow_root", "auto_unmount",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec",
    "atime", "noatime", "relatime", "norelatime", "strictatime", "sync", "async", "dirsync",
}
#: fstab bookkeeping that `mount` may pass along; meaningless to the filesystem.
FSTAB_ONLY = {"defaults", "_netdev", "noauto", "auto", "nofail", "user", "users", "nouser", "owner", "group"}
FSTAB_ONLY_PREFIXES = ("x-", "comment=")


@dataclass
class MountOptions:
    fuse: set[str] = field(default_factory=set)
    debug: bool = False
    log_file: str | None = None
    cache_dir: str | None = None
    read_only: bool = False
    #: mount over a directory that holds files (hidden while mounted)
    nonempty: bool = False
    #: names of temporary files never packed (None: the defaults of overlay.TEMP_PATTERNS)
    ignore: tuple[str, ...] | None = None
    #: `max_NAME=N`: bounds raised above the defaults of `limits.Limits`
    limits: dict[str, int] = field(default_factory=dict)


def parse(option_lists: list[str], into: MountOptions) -> MountOptions:
    for item in ",".join(option_lists).split(","):
        name, _, value = item.strip().partition("=")
        if not name or name in FSTAB_ONLY or item.startswith(FSTAB_ONLY_PREFIXES):
            continue
        if name in PASSED_TO_FUSE:
            into.fuse.add(name)
        elif name in ("ro", "rw"):
            into.read_only = name == "ro"
        elif name == "debug":
            into.debug = True
        elif name == "nonempty":
            into.nonempty = True
        elif name in ("log_file", "cache_dir") and value:
            setattr(into, name, value)
        elif name == "ignore":
            into.ignore = _patterns(value)
        elif name.startswith("max_") and name[4:] in limits.NAMES:
            into.limits[name[4:]] = _count(item, value)
        else:
            raise CkptfsError(f"unknown mount option {item!r} (see 'ckptfs mount --help')")
    return into


def _patterns(value: str) -> tuple[str, ...]:
    """`ignore=`'s glob patterns, separated by `:`; a leading `+` adds them
    to the default ones instead of replacing them."""
    from ..write.overlay import TEMP_PATTERNS

    patterns = tuple(p for p in value.removeprefix("+").split(":") if p)
    return TEMP_PATTERNS + patterns if value.startswith("+") else patterns


def _count(item: str, value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 1:
        raise CkptfsError(f"mount option {item!r} needs a positive whole number")
    return count
