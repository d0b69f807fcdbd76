"""The FUSE operations: inodes, handles, attributes, errno. No format here.

A directory's entries get inode numbers when it is first looked into, so
mount time does not depend on the size of the tree; numbers then stay the
same for the life of the mount. Every handler is wrapped so that only FUSEError reaches pyfuse3: an
unexpected exception is logged and answered with EIO, never ending the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from dataclasses import dataclass

import pyfuse3
import trio

from .errors import CkptfsError
from .tree import Dir, File, Node, Symlink

log = logging.getLogger(__name__)

#: The content never changes under a mount, so the kernel may cache names,
#: attributes and pages for as long as it likes.
CACHE_SECONDS = 24 * 3600
BLKSIZE = 1 << 20  # tells cp and friends to read in large blocks


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


def _handler(method):
    @functools.wraps(method)
    async def wrapper(self, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except CkptfsError as e:  # a source changed under the mount, a lazily read part is broken
            log.error("%s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as e:
            log.warning("%s%r: %s", method.__name__, args[:1], e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s%r", method.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Operations(pyfuse3.Operations):
    def __init__(self, root: Dir, owner: Ownership):
        super().__init__()
        self.owner = owner
        self.root = root
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self.listings: dict[int, list[tuple[bytes, int]]] = {}
        self.entries: dict[tuple[int, bytes], int] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1

    def _listing(self, inode: int) -> list[tuple[bytes, int]]:
        """The (name, inode) entries of a directory, numbered on first use."""
        listing = self.listings.get(inode)
        if listing is None:
            directory = self._node(inode)
            if not isinstance(directory, Dir):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            listing = []
            for name in sorted(directory.children):
                encoded = os.fsencode(name)
                self.nodes[self._next_inode] = directory.children[name]
                self.entries[inode, encoded] = self._next_inode
                listing.append((encoded, self._next_inode))
                self._next_inode += 1
            self.listings[inode] = listing
        return listing

    @functools.cached_property
    def totals(self) -> tuple[int, int]:
        """(bytes of all files, number of nodes), for statfs."""
        size, count, pending = 0, 1, [self.root]
        while pending:
            for child in pending.pop().children.values():
                count += 1
                if isinstance(child, Dir):
                    pending.append(child)
                elif isinstance(child, File):
                    size += child.content.size
        return size, count

    def _node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = CACHE_SECONDS
        attr.st_uid, attr.st_gid = self.owner.uid, self.owner.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = (
            node.mtime_ns if node.mtime_ns is not None else self.owner.mtime_ns
        )
        attr.st_blksize = BLKSIZE
        if isinstance(node, Dir):
            attr.st_mode = stat.S_IFDIR | self.owner.read_bits | (self.owner.read_bits >> 2)
            attr.st_nlink = 2 + node.subdir_count()
            attr.st_size = 0
        elif isinstance(node, Symlink):
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_nlink = 1
            attr.st_size = len(os.fsencode(node.target))
        else:
            attr.st_mode = stat.S_IFREG | self.owner.read_bits
            attr.st_nlink = 1
            attr.st_size = node.content.size
        attr.st_blocks = (attr.st_size + 511) // 512
        return attr

    @_handler
    async def getattr(self, inode, ctx=None):
        return self.attributes(inode)

    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        self._listing(parent_inode)
        inode = self.entries.get((parent_inode, name))
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(inode)

    @_handler
    async def opendir(self, inode, ctx):
        if not isinstance(self._node(inode), Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_handler
    async def readdir(self, fh, start_id, token):
        listing = self._listing(fh)
        for index in range(start_id, len(listing)):
            name, inode = listing[index]
            if not pyfuse3.readdir_reply(token, name, self.attributes(inode), index + 1):
                break

    @_handler
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Dir) else errno.ELOOP)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_handler
    async def read(self, fh, off, size):
        content = self.nodes[fh].content
        if content.slow:
            return await trio.to_thread.run_sync(content.read, off, size)
        return content.read(off, size)

    @_handler
    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_handler
    async def listxattr(self, inode, ctx):
        return [b"user." + name.encode() for name in self._node(inode).xattrs]

    @_handler
    async def getxattr(self, inode, name, ctx):
        key = name.decode("utf-8", "surrogateescape")
        value = self._node(inode).xattrs.get(key[5:]) if key.startswith("user.") else None
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode("utf-8", "surrogatepass")

    @_handler
    async def statfs(self, ctx):
        sv = pyfuse3.StatvfsData()
        sv.f_bsize = sv.f_frsize = 512
        total_bytes, total_nodes = self.totals
        sv.f_blocks = (total_bytes + 511) // 512
        sv.f_bfree = sv.f_bavail = 0
        sv.f_files = total_nodes
        sv.f_ffree = sv.f_favail = 0
        sv.f_namemax = 255
        return sv
