"""What to do next, in the words of commands that work in the state the
user is in; the tests run every command these suggest. NEW and MOUNTPOINT
are for the user to choose."""

from __future__ import annotations

from .errors import EditsKept


def _named(source: str) -> str:
    """The source as the commands name it: a remote one with the overlays
    folder its edits are in, when it is not the default."""
    from .sources.location import location
    from .sources.settings import SETTINGS

    if location(source).remote and SETTINGS.overlays:
        return f"{source} --overlay-dir {SETTINGS.overlays}"
    return source


def _to(source: str) -> str:
    """Where a resumed mount of a remote source writes: it must be told."""
    from .sources.location import location

    return " --output NEW" if location(source).remote else ""


def _write_new(source: str) -> str:
    return f"write them to a new file: ckptfs recover {_named(source)} --resume --output NEW"


def _drop(source: str) -> str:
    return f"drop them: ckptfs recover {_named(source)} --discard"


def elsewhere(source: str) -> str:
    """For edits made on a source that has changed since: never over it."""
    return f"{_write_new(source)}, or {_drop(source)}"


def waiting(source: str) -> str:
    """For a mount that found an earlier mount's edits waiting."""
    return f"to take them up: ckptfs mount --resume {_named(source)} MOUNTPOINT{_to(source)}; to {_drop(source)}"


def after_repack(error: EditsKept, source: str, mountpoint: str | None, mounted: bool) -> str:
    """The message for edits a repack did not write. `mounted`: `ckptfs
    commit` failed and the mount goes on, so `recover` (which refuses while
    mounted) is not a way out yet."""
    if mounted and error.kind == "changed":
        todo = f"unmount (ckptfs umount {mountpoint}), then {_write_new(source)}"
    elif mounted:
        todo = (f"fix the file in {mountpoint}, then commit again: ckptfs commit {mountpoint}, "
                f"or drop every edit: ckptfs umount {mountpoint} --discard")
    elif error.kind == "changed":
        todo = elsewhere(source)
    elif error.kind == "edit":
        todo = (f"fix them in a mount: ckptfs mount --resume {_named(source)} {mountpoint or 'MOUNTPOINT'}"
                f"{_to(source)}, or {_drop(source)}")
    else:
        todo = f"once that is fixed: ckptfs recover {_named(source)} --resume{_to(source)}, or {_drop(source)}"
    return f"{error}; {todo}"
