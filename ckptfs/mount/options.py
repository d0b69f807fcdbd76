"""`-o` mount options, as `ckptfs mount -o` and `mount -t fuse.ckptfs` pass them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from .. import limits
from ..errors import CkptfsError
from ..humanize import parse_size
from ..sources.location import location
from ..sources.pagecache import PAGE
from .logs import LEVELS

T = TypeVar("T")

#: Kernel and FUSE options handed to the mount as they are.
PASSED_TO_FUSE = {
    "allow_other", "allow_root", "auto_unmount", "exec", "noexec",
    "atime", "noatime", "relatime", "norelatime", "strictatime", "sync", "async", "dirsync",
}
#: Every mount is nosuid,nodev: a checkpoint has no business with either.
#: `suid` and `dev` are accepted and ignored, because mount.fuse3 adds them
#: for root whenever the fstab line does not say nosuid,nodev.
ALWAYS = {"nosuid", "nodev"}
IGNORED = {"suid", "dev"}
#: fstab bookkeeping that `mount` may pass along; meaningless to the filesystem.
FSTAB_ONLY = {"defaults", "_netdev", "noauto", "auto", "nofail", "user", "users", "nouser", "owner", "group"}
FSTAB_ONLY_PREFIXES = ("x-", "comment=")


#: remote source options -> the field of sources.settings.Settings they set
REMOTE_SIZES = {"block_size": "block", "cache_memory": "memory", "cache_disk": "disk"}
#: `fetch=`: read a remote file's byte ranges, or download a web server's file whole once
FETCH = ("ranges", "whole")


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
    log_level: str | None = None
    #: `uid=`, `gid=`: the owner and group every file is shown with (None: the source's)
    uid: int | None = None
    gid: int | None = None
    #: `umask=`, `fmask=`, `dmask=`: mode bits taken away from files and folders
    fmask: int = 0
    dmask: int = 0
    #: `block_size=`, `cache_memory=`, `cache_disk=`, `stall_timeout=`, `fetch=`: for remote sources (sources/settings.py)
    remote: dict[str, float | str] = field(default_factory=dict)
    #: `--output`: where the edited checkpoint goes at unmount (None: over the source)
    output: str | None = None
    #: `--replace`: a remote source is written over (it mounts read-only without this or --output)
    replace: bool = False
    #: `base=PATH`: a PEFT adapter's base model, its `merged/` made from it (formats/adapter.py)
    base: str | None = None
    #: `--overlay-dir`: where a remote source's edits are kept (None: ~/.cache/ckptfs/edits)
    overlay_dir: str | None = None


def parse(option_lists: list[str], into: MountOptions) -> MountOptions:
    for item in ",".join(option_lists).split(","):
        name, _, value = item.strip().partition("=")
        if not name or name in FSTAB_ONLY or item.startswith(FSTAB_ONLY_PREFIXES):
            continue
        if name in PASSED_TO_FUSE or name in ALWAYS:
            into.fuse.add(name)
        elif name in IGNORED:
            continue
        elif name in ("ro", "rw"):
            into.read_only = name == "ro"
        elif name == "debug":
            into.debug = True
        elif name == "nonempty":
            into.nonempty = True
        elif name in ("log_file", "cache_dir") and value:
            setattr(into, name, value)
        elif name == "base" and value:
            into.base = location(value).text  # a path made absolute, as the source's is
        elif name == "log_level" and value in LEVELS:
            into.log_level = value
        elif name in ("uid", "gid"):
            setattr(into, name, _count(item, value, least=0))
        elif name in ("umask", "fmask", "dmask"):
            mask = _mask(item, value)
            into.fmask = mask if name != "dmask" else into.fmask
            into.dmask = mask if name != "fmask" else into.dmask
        elif name == "ignore":
            into.ignore = _patterns(value)
        elif name in REMOTE_SIZES:
            into.remote[REMOTE_SIZES[name]] = _size(item, value, least=0 if name == "cache_disk" else PAGE)
        elif name == "stall_timeout":
            into.remote["stall"] = _seconds(item, value)
        elif name == "fetch":
            if value not in FETCH:
                raise CkptfsError(f"mount option {item!r}: give fetch=ranges (the default) or fetch=whole")
            into.remote["fetch"] = value
        elif name.startswith("max_") and name[4:] in limits.NAMES:
            into.limits[name[4:]] = _count(item, value)
        else:
            raise CkptfsError(f"unknown mount option {item!r} (see 'ckptfs mount --help')")
    return into


def limit_values(option_lists: list[str]) -> dict[str, int]:
    """The `max_NAME=N` options of commands that take no others (scan)."""
    values = {}
    for item in ",".join(option_lists).split(","):
        name, _, value = item.strip().partition("=")
        if not name:
            continue
        if not (name.startswith("max_") and name[4:] in limits.NAMES):
            raise CkptfsError(f"unknown option {item!r} (this command takes only max_NAME=N: "
                              f"{', '.join('max_' + n for n in limits.NAMES)})")
        values[name[4:]] = _count(item, value)
    return values


def _patterns(value: str) -> tuple[str, ...]:
    """`ignore=`'s glob patterns, separated by `:`; a leading `+` adds them
    to the default ones instead of replacing them."""
    from ..write.overlay import TEMP_PATTERNS

    patterns = tuple(p for p in value.removeprefix("+").split(":") if p)
    return TEMP_PATTERNS + patterns if value.startswith("+") else patterns


def _count(item: str, value: str, least: int = 1) -> int:
    return _parsed(item, value, int, lambda n: n >= least, f"a {'positive ' if least else ''}whole number")


def _size(item: str, value: str, least: int) -> int:
    return _parsed(item, value, parse_size, lambda n: n >= least, f"a size of at least {least} bytes, such as 8M or 2G")


def _seconds(item: str, value: str) -> float:
    return _parsed(item, value, float, lambda s: 0 < s < float("inf"), "a number of seconds above 0, such as 30")


def _mask(item: str, value: str) -> int:
    """An octal mask, as umask(1) writes it: 022, 0077."""
    return _parsed(item, value, lambda text: int(text, 8), lambda m: 0 <= m <= 0o777, "an octal mask such as 022")


def _parsed(item: str, value: str, parse: Callable[[str], T], fits: Callable[[T], bool], needs: str) -> T:
    """`value` as `parse` reads it, where it can and the result `fits`; else
    the error that says what the option `item` needs."""
    try:
        parsed: T | None = parse(value)
    except ValueError:
        parsed = None
    if parsed is None or not fits(parsed):
        raise CkptfsError(f"mount option {item!r} needs {needs}")
    return parsed
