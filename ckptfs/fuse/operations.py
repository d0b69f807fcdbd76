"""The FUSE operations: inodes, handles, attributes, errno. No format here.

A directory's entries get inode numbers when it is first looked into, so
mount time does not depend on the size of the tree; numbers then stay the
same for the life of the mount. What an inode costs is kept small (a walk
of 200,000 entries): its node, its parent's number and its name are slots
of three arrays, and a folder's listing is its sorted names beside the range
of numbers they got (a list only where edits renumbered some). Every handler is wrapped so that only FUSEError reaches pyfuse3: an
unexpected exception is logged and answered with EIO, never ending the mount.
"""

from __future__ import annotations

import bisect
import errno
import functools
import inspect
import logging
import os
import stat
import time
from array import array
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import pyfuse3
import trio

from ..errors import CkptfsError
from ..sources.readahead import FETCHED, Reader
from ..tree import xattrs
from ..tree.nodes import Access, Content, Dir, File, LazyDir, Node, Symlink

log = logging.getLogger(__name__)

#: The content never changes under a mount, so the kernel may cache names,
#: attributes and pages for as long as it likes.
CACHE_SECONDS = 24 * 3600
#: A writable mount changes only through the kernel, which updates what it
#: caches, but a short timeout keeps times and sizes honest after edits: for
#: what an edit made or changed, and for what follows the edits (views);
#: the rest of a writable mount is cached as a read-only one (`cache_seconds`).
EDIT_CACHE_SECONDS = 1.0
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
#: pyfuse3 built with vendor/pyfuse3's patch passes the inode as the handle
#: where the kernel opened without asking (zero-message opens, Linux 5.1)
ZERO_MESSAGE_OPENS = getattr(pyfuse3, "NO_OPEN_FH_IS_INODE", False)
BLKSIZE = 1 << 20  # tells cp and friends to read in large blocks


class Edits(Protocol):
    """All the operations know of a writable mount's edit session (the edit
    session's `EditableTree` is one; a file's content says itself whether it
    is `edited`): changes by path, bytes written through an edited file's
    content, and where they are kept."""

    def edit(self, path: str) -> File: ...  # a file of the source made editable: its content is edited

    def create(self, path: str) -> File: ...

    def mkdir(self, path: str) -> Dir: ...

    def remove(self, path: str) -> None: ...

    def rename(self, old: str, new: str) -> None: ...

    def exchange(self, a: str, b: str) -> None: ...

    def write(self, content: Any, offset: int, data: bytes) -> int: ...

    def truncate(self, content: Any, size: int) -> None: ...

    def holds(self, content: Any) -> bool: ...  # False for an edited content of before a commit

    def describe(self, path: str, file: File) -> None: ...  # an edited file that passed its check

    def fsync(self, file: File | None = None) -> None: ...  # the journal, and a file's written bytes

    def room(self) -> int: ...  # bytes free where the edits are kept


@dataclass(frozen=True)
class Ownership:
    """What every node inherits from the source: owner, group, read bits, times."""

    uid: int
    gid: int
    read_bits: int  # the source's r bits, e.g. 0o444
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Ownership:
        return cls(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode) & 0o444, st.st_mtime_ns)


@dataclass(frozen=True)
class Shown:
    """`-o uid=,gid=,fmask=,dmask=`: the owner and group every entry is shown
    with, in place of the source's, and mode bits taken away. Masks only
    take away: what the source does not let its readers read stays unread."""

    uid: int | None = None
    gid: int | None = None
    fmask: int = 0
    dmask: int = 0

    def apply(self, attr: pyfuse3.EntryAttributes) -> None:
        if self.uid is not None:
            attr.st_uid = self.uid
        if self.gid is not None:
            attr.st_gid = self.gid
        mask = self.dmask if stat.S_ISDIR(attr.st_mode) else self.fmask if stat.S_ISREG(attr.st_mode) else 0
        attr.st_mode &= ~mask


def _dot_attributes(inode: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_ino, attr.st_mode = inode, stat.S_IFDIR
    return attr


def _handler(method):
    """Only FUSEError reaches pyfuse3. Handlers that never wait are plain
    functions, called by one coroutine (the one pyfuse3 awaits): a request
    then costs one coroutine, not two."""
    name = method.__name__

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def waiting(self, *args):
            try:
                return await method(self, *args)
            except pyfuse3.FUSEError:
                raise
            except Exception as e:
                raise _fuse_error(e, name, args) from None

        return waiting

    @functools.wraps(method)
    async def wrapper(self, *args):
        try:
            return method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise _fuse_error(e, name, args) from None

    return wrapper


def _fuse_error(e: Exception, name: str, args: tuple) -> pyfuse3.FUSEError:
    """The answer to a handler's unexpected exception, logged."""
    if isinstance(e, CkptfsError):  # a source changed under the mount, a lazily read part is broken
        if not getattr(e, "logged", False):  # one failed fetch fails every read waiting for it: one line
            log.error("%s", e)
            e.logged = True
        return pyfuse3.FUSEError(errno.EIO)
    if isinstance(e, OSError):
        log.warning("%s%r: %s", name, args[:1], e)
        return pyfuse3.FUSEError(e.errno or errno.EIO)
    log.error("unexpected error in %s%r", name, args[:3], exc_info=e)
    return pyfuse3.FUSEError(errno.EIO)


@dataclass(slots=True)
class _Listing:
    """A directory's entries: names in sorted order, and their inode numbers."""

    names: list[str]
    inodes: Sequence[int]  # a range where numbered in one go


@dataclass
class _Handle:
    """An open file: its inode, and whether it was written through."""

    inode: int
    wrote: bool = False


class Operations(pyfuse3.Operations):
    """`editable` is None for a read-only mount; otherwise every change goes
    through it (and its on-disk overlay) and read-only parts of the tree
    (nodes marked `read_only`, and everything below them) answer EROFS.
    `check(path, node)` names what keeps an edited file from being written
    back, or returns None: a file is checked when it is closed after a write
    through that open file (the close fails with EINVAL), and when renamed
    (a warning: editors rename a finished file into place).
    `check_move(old, new)` returns the MoveRefused that keeps a rename from
    being made (its errno is the answer), or None."""

    def __init__(self, root: Dir, owner: Ownership, editable: Edits | None = None, check=None,
                 shown: Shown | None = None, check_move=None):
        super().__init__()
        self.owner = owner
        self.shown = shown
        self.default_access = Access(owner.uid, owner.gid, owner.read_bits)
        self.root = root
        self.editable, self.check, self.check_move = editable, check, check_move
        self.handles: dict[int, _Handle] = {}  # open files
        self.ahead: dict[int, Reader] = {}  # inode -> where its reader is, for read-ahead
        self._next_handle = 1
        # by inode number (0 is unused): the node, its parent's number, its name
        self.nodes: list[Node | None] = [None, root]
        self.parents = array("Q", [0, pyfuse3.ROOT_INODE])
        self.names: list[str] = ["", ""]
        self.listings: dict[int, _Listing] = {}
        #: id(node) -> inode of the entries of folders an edit changed, so that
        #: a node keeps its number when listed again (a read-only mount lists
        #: each folder once). Numbered nodes are never freed: ids stay unique.
        self.inode_of: dict[int, int] = {}
        #: read-only parts of a writable mount (a read-only mount is all of it)
        self.read_only: set[int] = set()
        #: files whose content follows the edits (info.yaml, tensors.tsv, the
        #: pretrained view's weights): the kernel forgets their size after each change
        self.following: set[int] = set()
        #: every mount answers opendir with ENOSYS: the kernel then opens
        #: folders without asking and caches their listings (dropping them when
        #: it changes a folder itself); a read-only mount answers open so too:
        #: the kernel opens files without asking and keeps their pages
        self.zero_message_opendirs = ZERO_MESSAGE_OPENS
        self.zero_message_opens = editable is None and ZERO_MESSAGE_OPENS
        #: inode -> who may read it, where a node (or a folder above it) says
        #: more than the source's owner and read bits (files of a directory source)
        self.access_of: dict[int, Access] = {}
        self._set_access(pyfuse3.ROOT_INODE, root.access)

    def replace_tree(self, root: Dir, editable: Edits | None, check=None, check_move=None) -> None:
        """Serve a new tree (after `ckptfs commit`). Nodes already numbered keep
        their inodes, so open files read on; names are looked up afresh."""
        # every name the kernel may have cached: the old root's (its listing
        # is dropped by an unlink or a rename there, its entries are not)
        listing = self.listings.get(pyfuse3.ROOT_INODE)
        old = sorted({*self.root.children, *(listing.names if listing else ())})
        self.root, self.editable, self.check, self.check_move = root, editable, check, check_move
        self.nodes[pyfuse3.ROOT_INODE] = root
        self.listings.clear()
        self.read_only = set()
        self.access_of = {}
        self._set_access(pyfuse3.ROOT_INODE, root.access)
        self.__dict__.pop("totals", None)
        # look them up again (which also drops the kernel's listing of the
        # root; other folders get new inodes), and the root's own attributes
        for name in old:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, os.fsencode(name), ignore_enoent=True)
        try:
            pyfuse3.invalidate_inode(pyfuse3.ROOT_INODE, attr_only=True)
        except OSError as e:  # unmounted meanwhile: nothing caches it any more
            log.debug("root attributes not invalidated: %s", e)

    def _listing(self, inode: int) -> _Listing:
        """A directory's entries, numbered on first use (a node keeps its
        number when the directory is listed again after an edit)."""
        listing = self.listings.get(inode)
        if listing is None:
            directory = self._node(inode)
            if not isinstance(directory, Dir):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            children = directory.children
            names = sorted(children)
            numbers: Sequence[int]
            if not self.inode_of:  # no folder was edited: every child is new
                numbers = range(len(self.nodes), len(self.nodes) + len(names))
                self.nodes.extend(children[name] for name in names)
            else:
                numbers = [self._number(children[name]) for name in names]
            self.parents.extend([0] * (len(self.nodes) - len(self.parents)))
            self.names.extend([""] * (len(self.nodes) - len(self.names)))
            inherited = self.access_of.get(inode)
            read_only = inode in self.read_only
            for name, number in zip(names, numbers):
                child = children[name]
                if isinstance(child, File) and not isinstance(child.content, Content) and not child.content.edited:
                    self.following.add(number)
                if read_only or child.read_only:
                    self.read_only.add(number)
                if child.access is not None or inherited is not None:
                    self._set_access(number, child.access or inherited)
                self.parents[number] = inode
                self.names[number] = name
            listing = self.listings[inode] = _Listing(names, numbers)
        return listing

    def _number(self, node: Node) -> int:
        number = self.inode_of.get(id(node))
        if number is None:
            number = len(self.nodes)
            self.nodes.append(node)
        return number

    def _set_access(self, inode: int, access: Access | None) -> None:
        """Keep who may read `inode` where it is not the source's owner and
        read bits (most nodes: they cost nothing)."""
        if access is not None and access != self.default_access:
            self.access_of[inode] = access
        else:
            self.access_of.pop(inode, None)

    def _changed(self, inode: int) -> None:
        """Forget a directory's listing after an edit; rebuilt on next use,
        with the numbers its entries had."""
        listing = self.listings.pop(inode, None)
        if listing is not None:
            for number in listing.inodes:
                self.inode_of[id(self.nodes[number])] = number
        self._views_changed()

    def _views_changed(self) -> None:
        """The files that follow the edits may have a new size: the kernel
        asks again rather than cut a read at the size it kept (attributes
        only: dropping pages could wait on a read this loop has to answer;
        their pages are dropped at each open)."""
        for inode in self.following:
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError:  # not known to the kernel (any more)
                pass

    def _path(self, inode: int, name: str | None = None) -> str:
        parts = [] if name is None else [name]
        while inode != pyfuse3.ROOT_INODE:
            parts.append(self.names[inode])
            inode = self.parents[inode]
        return "/".join(reversed(parts))

    def _writable(self, inode: int) -> Edits:
        if self.editable is None or inode in self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.editable

    def _child(self, parent_inode: int, name: bytes) -> int | None:
        listing = self._listing(parent_inode)
        wanted = os.fsdecode(name)
        index = bisect.bisect_left(listing.names, wanted)
        if index < len(listing.names) and listing.names[index] == wanted:
            return listing.inodes[index]
        return None

    @functools.cached_property
    def totals(self) -> tuple[int, int]:
        """(bytes of all files, number of nodes), for statfs, found once.
        `df` must not make folders made on first use: a table's folders
        are counted from the table, others (a shard's chunks, the export
        view) not, unless made before."""
        size, count, pending = 0, 1, [self.root]
        while pending:
            for child in pending.pop().children.values():
                count += 1
                unmade = isinstance(child, LazyDir) and not child.filled
                counted = child.unmade_totals() if unmade else None
                if counted is not None:
                    size, count = size + counted[0], count + counted[1]
                elif isinstance(child, Dir) and not unmade:
                    pending.append(child)
                elif isinstance(child, File):
                    size += child.content.size
        return size, count

    def _node(self, inode: int) -> Node:
        node = self.nodes[inode] if 0 < inode < len(self.nodes) else None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def cache_seconds(self, inode: int, node: Node) -> float:
        """How long the kernel may keep a node's name and attributes: as long
        as it likes where only the kernel's own requests can change them
        (it updates or drops what it caches when it writes, truncates,
        renames or removes), which is everything of a read-only mount and,
        of a writable one, every node neither edited nor in a read-only part
        (views whose entries follow edits) nor a file that follows the edits.
        A second `cat` of every file of a writable mount then costs an open,
        a flush and a release, not a lookup more per file and folder."""
        if self.editable is None:
            return CACHE_SECONDS
        if inode in self.read_only or inode in self.following or (isinstance(node, File) and node.edited):
            return EDIT_CACHE_SECONDS
        return CACHE_SECONDS

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = self.cache_seconds(inode, node)
        write_bits = 0 if self.editable is None or inode in self.read_only else 0o200
        access = self.access_of.get(inode)
        attr.st_uid, attr.st_gid = (access.uid, access.gid) if access else (self.owner.uid, self.owner.gid)
        read_bits = access.read_bits if access else self.owner.read_bits
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = (
            node.mtime_ns if node.mtime_ns is not None else self.owner.mtime_ns
        )
        attr.st_blksize = BLKSIZE
        if isinstance(node, Dir):
            attr.st_mode = stat.S_IFDIR | read_bits | (read_bits >> 2) | write_bits
            attr.st_nlink = 2 + node.subdir_count()
            attr.st_size = 0
        elif isinstance(node, Symlink):
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_nlink = 1
            attr.st_size = len(os.fsencode(node.target))
        else:
            attr.st_mode = stat.S_IFREG | read_bits | write_bits
            attr.st_nlink = 1
            attr.st_size = node.content.size
        attr.st_blocks = (attr.st_size + 511) // 512
        if self.shown is not None:
            self.shown.apply(attr)
        return attr

    @_handler
    def getattr(self, inode, ctx=None):
        return self.attributes(inode)

    @_handler
    def lookup(self, parent_inode, name, ctx=None):
        inode = self._child(parent_inode, name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(inode)

    @_handler
    def opendir(self, inode, ctx):
        if self.zero_message_opendirs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if not isinstance(self._node(inode), Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_handler
    def readdir(self, fh, start_id, token):
        listing = self._listing(fh)
        for index in range(start_id, len(listing.names) + 2):
            if index < 2:  # "." and "..": the kernel reads only their inode and type
                name, attributes = (b".", b"..")[index], _dot_attributes((fh, self.parents[fh])[index])
                if not pyfuse3.readdir_reply(token, name, attributes, index + 1):
                    break
                continue
            name, inode = os.fsencode(listing.names[index - 2]), listing.inodes[index - 2]
            try:
                attributes = self.attributes(inode)
            except (OverflowError, ValueError) as e:  # one bad entry: its own lookup fails, not the listing
                log.warning("%s: left out of its folder's listing: %s", self._path(inode), e)
                continue
            if not pyfuse3.readdir_reply(token, name, attributes, index + 1):
                break

    @_handler
    def open(self, inode, flags, ctx):
        if self.zero_message_opens:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Dir) else errno.ELOOP)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            editable = self._writable(inode)
            if not node.content.edited:
                editable.edit(self._path(inode))
            if flags & os.O_TRUNC:
                editable.truncate(node.content, 0)
        # content that can change (edited files, views that follow edits) is
        # not kept in the page cache across opens
        fh = self._open_handle(inode, wrote=bool(flags & os.O_TRUNC))
        return pyfuse3.FileInfo(fh=fh, keep_cache=isinstance(node.content, Content))

    def _open_handle(self, inode: int, wrote: bool = False) -> int:
        fh, self._next_handle = self._next_handle, self._next_handle + 1
        self.handles[fh] = _Handle(inode, wrote)
        return fh

    @_handler
    def release(self, fh):
        handle = self.handles.pop(fh, None)
        if handle is not None and handle.wrote:
            self._views_changed()
            problem = self.nodes[handle.inode].xattrs.get(xattrs.PROBLEM)
            if problem is not None:
                log.warning("%s (the repack will refuse it until it is fixed)", problem)

    @_handler
    async def read(self, fh, off, size):
        inode = fh if self.zero_message_opens else self.handles[fh].inode
        content = self.nodes[inode].content
        # a source's content answers in one buffer (`Content.reply`), what
        # the edits keep (and the views that follow them) with its bytes
        answer = content.reply if isinstance(content, Content) else content.read
        if content.slow:
            self._read_ahead(inode, content, off, size)
            # pyfuse3 built with vendor/pyfuse3's patches cancels a read the
            # kernel interrupts (its reader got a signal, SIGKILL too), and
            # answers EINTR; the thread is left to finish waiting for pages
            # other reads share, bounded by -o stall_timeout
            return await trio.to_thread.run_sync(answer, off, size, abandon_on_cancel=True)
        return answer(off, size)

    def _read_ahead(self, inode: int, content, off: int, size: int) -> None:
        """For a file whose bytes are fetched (a remote source): what the
        read-ahead policy for fetched files (sources/readahead.py) wants
        ahead of this read, of this file's bytes only, never its neighbours'."""
        reader = self.ahead.get(inode)
        if reader is None:
            reader = self.ahead[inode] = FETCHED.reader()
        wanted = reader.advance(off, size, content.size)
        if wanted is not None:
            content.prefetch(*wanted)

    # -- writes (docs/writing.md): each goes to the overlay before it returns

    @_handler
    def write(self, fh, off, buf):
        handle = self.handles[fh]
        node = self.nodes[handle.inode]
        if not node.content.edited:
            raise pyfuse3.FUSEError(errno.EBADF)
        editable = self._writable(handle.inode)
        if not editable.holds(node.content):
            raise pyfuse3.FUSEError(errno.ESTALE)  # opened before a commit: its edits were written; reopen it
        written = editable.write(node.content, off, buf)
        node.mtime_ns = time.time_ns()
        handle.wrote = True
        return written

    @_handler
    def flush(self, fh):
        if self.editable is None:  # nothing to check on close: the kernel stops asking
            raise pyfuse3.FUSEError(errno.ENOSYS)
        handle = self.handles[fh]
        if handle.wrote and self._checked(handle.inode) is not None:  # every close of it: dup'd descriptors too
            raise pyfuse3.FUSEError(errno.EINVAL)

    def _checked(self, inode: int) -> str | None:
        """Checks an edited file; its problem, if any, is shown in its
        `user.ckptfs.problem` attribute until it is fixed (and logged once,
        when the file is released: a shell's `>` closes a dup'd descriptor
        of the still empty file first). A `.npy` file's dtype and shape
        attributes follow its header."""
        node = self.nodes[inode]
        if self.check is None or not isinstance(node, File) or not node.content.edited:
            return None
        path = self._path(inode)
        problem = self.check(path, node)
        if problem is None:
            node.xattrs.pop(xattrs.PROBLEM, None)
            self.editable.describe(path, node)
        else:
            node.xattrs[xattrs.PROBLEM] = problem
        return problem

    @_handler
    def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if fields.update_size:
            if not isinstance(node, File):
                raise pyfuse3.FUSEError(errno.EISDIR)
            editable = self._writable(inode)
            if not node.content.edited:
                editable.edit(self._path(inode))
            editable.truncate(node.content, attr.st_size)
            node.mtime_ns = time.time_ns()
            self._views_changed()
            if fh in self.handles:  # ftruncate
                self.handles[fh].wrote = True
        elif fields.update_mtime:  # touch: accepted, and not an edit of the checkpoint
            self._writable(inode)
            node.mtime_ns = attr.st_mtime_ns
        elif fields.update_mode or fields.update_uid or fields.update_gid:
            self._writable(inode)  # chmod/chown: accepted where writable; the checkpoint keeps its modes
        return self.attributes(inode)

    @_handler
    def create(self, parent_inode, name, mode, flags, ctx):
        editable = self._writable(parent_inode)
        existing = self._child(parent_inode, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise pyfuse3.FUSEError(errno.EEXIST)
            self._writable(existing)
        editable.create(self._path(parent_inode, os.fsdecode(name)))
        self._changed(parent_inode)
        inode = self._child(parent_inode, name)
        return pyfuse3.FileInfo(fh=self._open_handle(inode), keep_cache=False), self.attributes(inode)

    @_handler
    def mkdir(self, parent_inode, name, mode, ctx):
        self._writable(parent_inode).mkdir(self._path(parent_inode, os.fsdecode(name)))
        self._changed(parent_inode)
        return self.attributes(self._child(parent_inode, name))

    @_handler
    def unlink(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, directory=False)

    @_handler
    def rmdir(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, directory=True)

    def _remove(self, parent_inode: int, name: bytes, directory: bool) -> None:
        inode = self._child(parent_inode, name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(self.nodes[inode], Dir) != directory:
            raise pyfuse3.FUSEError(errno.EISDIR if not directory else errno.ENOTDIR)
        # as in POSIX, a file goes with its folder's write permission (a
        # read-only view such as GGUF's dequantized.npy leaves with its tensor)
        editable = self._writable(inode if directory else parent_inode)
        self._writable(parent_inode)
        editable.remove(self._path(parent_inode, os.fsdecode(name)))
        self._changed(parent_inode)

    @_handler
    def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        inode = self._child(parent_inode_old, name_old)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        target = self._child(parent_inode_new, name_new)
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            self._writable(target)
        elif flags & RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        editable = self._writable(inode)
        self._writable(parent_inode_old)
        self._writable(parent_inode_new)
        old = self._path(parent_inode_old, os.fsdecode(name_old))
        new = self._path(parent_inode_new, os.fsdecode(name_new))
        self._may_move(old, new)
        if flags & RENAME_EXCHANGE:
            self._may_move(new, old)
            editable.exchange(old, new)
        else:
            editable.rename(old, new)
        self._changed(parent_inode_old)
        self._changed(parent_inode_new)
        self.parents[inode] = parent_inode_new  # the kernel may use it before a lookup
        self.names[inode] = os.fsdecode(name_new)
        moved = [inode]
        if flags & RENAME_EXCHANGE:
            self.parents[target], self.names[target] = parent_inode_old, os.fsdecode(name_old)
            moved.append(target)
        for number in moved:
            problem = self._checked(number)  # a file written under a temporary name (sed -i), now in place
            if problem is not None:
                log.warning("%s (the repack will refuse it until it is fixed)", problem)

    def _may_move(self, old: str, new: str) -> None:
        """Refuse, with the errno the format's writer gives and a line in the
        log saying why, a rename the checkpoint cannot hold."""
        refused = self.check_move(old, new) if self.check_move is not None else None
        if refused is not None:
            log.warning("rename refused: %s", refused)
            raise pyfuse3.FUSEError(refused.errno)

    @_handler
    def link(self, inode, new_parent_inode, new_name, ctx):
        self._refuse(new_parent_inode, new_name, "a hard link", errno.EPERM)

    @_handler
    def symlink(self, parent_inode, name, target, ctx):
        self._refuse(parent_inode, name, "a symbolic link", errno.EPERM)

    @_handler
    def mknod(self, parent_inode, name, mode, rdev, ctx):
        if stat.S_ISREG(mode):  # mknod(2) of a plain file: an empty file, as create makes it
            editable = self._writable(parent_inode)
            if self._child(parent_inode, name) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            editable.create(self._path(parent_inode, os.fsdecode(name)))
            self._changed(parent_inode)
            return self.attributes(self._child(parent_inode, name))
        self._refuse(parent_inode, name, "a device, FIFO or socket", errno.EPERM)

    def _refuse(self, parent_inode: int, name: bytes, what: str, code: int) -> None:
        self._writable(parent_inode)
        log.warning("%s: refused: a checkpoint cannot hold %s", self._path(parent_inode, os.fsdecode(name)), what)
        raise pyfuse3.FUSEError(code)

    @_handler
    def setxattr(self, inode, name, value, ctx):
        self._writable(inode)
        log.warning("%s: setting attribute %s refused: a checkpoint keeps no attributes (its user.ckptfs.* ones "
                    "are made from what it holds)", self._path(inode), os.fsdecode(name))
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_handler
    def removexattr(self, inode, name, ctx):
        self._writable(inode)
        log.warning("%s: removing attribute %s refused: a checkpoint keeps no attributes",
                    self._path(inode), os.fsdecode(name))
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_handler
    def fsync(self, fh, datasync):
        if self.editable is not None:
            self.editable.fsync(self.nodes[self.handles[fh].inode])

    @_handler
    def fsyncdir(self, fh, datasync):
        if self.editable is not None:
            self.editable.fsync()

    @_handler
    def readlink(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_handler
    def listxattr(self, inode, ctx):
        return [b"user." + name.encode() for name in self._node(inode).xattrs]

    @_handler
    def getxattr(self, inode, name, ctx):
        key = name.decode("utf-8", "surrogateescape")
        value = self._node(inode).xattrs.get(key[5:]) if key.startswith("user.") else None
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode("utf-8", "surrogatepass")

    @_handler
    def statfs(self, ctx):
        sv = pyfuse3.StatvfsData()
        sv.f_bsize = sv.f_frsize = 512
        total_bytes, total_nodes = self.totals
        sv.f_blocks = (total_bytes + 511) // 512
        sv.f_bfree = sv.f_bavail = 0
        if self.editable is not None:  # edits take room beside the source
            sv.f_bfree = sv.f_bavail = self.editable.room() // 512
            sv.f_blocks += sv.f_bfree
        sv.f_files = total_nodes
        sv.f_ffree = sv.f_favail = 0
        sv.f_namemax = 255
        return sv
