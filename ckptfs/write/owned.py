"""Folders and files ckptfs keeps for its user in a place others may write
to: an overlay and its lock beside a checkpoint, in the checkpoint's folder.

Anyone who can create names there could have planted one first: a link that
sends a write elsewhere (`/etc/nologin`), or a forged overlay that would
have the edits it holds written into the checkpoint. So each is made and
opened relative to a descriptor of its folder, never following a link
(`O_NOFOLLOW`, `mkdir` + `open` with `dir_fd`), made with mode 0700 (a
folder) or 0600 (a file), and an existing one is used only while it is this
user's, is not a link, has one name, and lets nobody else in. Anything else
is refused in one line naming it (`NotOwned`), never used.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from ..errors import CkptfsError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotOwned(CkptfsError):
    """An overlay, lock or state file that this user did not make for
    ckptfs, or that others may change: refused, never used."""


def open_folder(path: str) -> int:
    """A descriptor of the folder `path` (the one holding an overlay)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def folder(parent: int, name: str, path: str, create: bool) -> int | None:
    """A descriptor of the folder `name` in `parent` (`path` names it in
    messages): made with mode 0700 when missing and `create`, else None
    when missing; NotOwned unless it is this user's own."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotOwned(f"{path}: {_what(parent, name)}, not a folder ckptfs made; refusing to use it "
                           "(remove it if it should not be there)") from None
        raise
    return _checked(fd, path)


def file(parent: int, name: str, path: str, flags: int) -> int:
    """A descriptor of the file `name` in `parent`, opened with `flags`
    (`O_CREAT` makes it with mode 0600); NotOwned unless it is this user's own."""
    try:
        fd = os.open(name, flags | _FILE_FLAGS, 0o600, dir_fd=parent)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotOwned(f"{path}: a symbolic link, not a file ckptfs made; refusing to use it "
                           "(remove it if it should not be there)") from None
        if e.errno == errno.EACCES:  # another user's file, or one the kernel keeps us from (protected_regular)
            raise NotOwned(f"{path}: {_what(parent, name)}; refusing to use it") from None
        raise
    return _checked(fd, path)


def _checked(fd: int, path: str) -> int:
    st = os.fstat(fd)
    problem = _problem(st)
    if problem is not None:
        os.close(fd)
        only_open = problem.startswith("mode")  # this user's own, but open to others
        hint = (f"if it is yours (an older ckptfs made overlays 0755), chmod -R go= {path}, else remove it"
                if only_open else "remove it if it should not be there")
        raise NotOwned(f"{path}: {problem}; ckptfs uses only what its user made, closed to others ({hint})")
    return fd


def _problem(st: os.stat_result) -> str | None:
    if st.st_uid != os.geteuid():
        return f"belongs to {_user(st.st_uid)}, not to {_user(os.geteuid())}"
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return "neither a file nor a folder"
    if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
        return f"a file with {st.st_nlink} names (a hard link to another file)"
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o} opens it to other users"
    return None


def _what(parent: int, name: str) -> str:
    """What stands at `name`, for a message."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if st.st_uid != os.geteuid():
        return f"belongs to {_user(st.st_uid)}, not to {_user(os.geteuid())}"
    return "not a regular file" if not stat.S_ISDIR(st.st_mode) else "a folder"


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def same(parent: int, name: str, fd: int) -> bool:
    """Whether `name` in `parent` is still the file or folder open as `fd`
    (and not something put in its place)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def read(parent: int, name: str, path: str) -> bytes:
    """The whole of the file `name` in `parent`, if it is this user's own."""
    fd = file(parent, name, path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()
