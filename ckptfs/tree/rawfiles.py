"""Files served byte for byte from a source: archive members, the raw mirror."""

from __future__ import annotations

import os

from ..sources.base import Source
from ..sources.directory import Directory
from . import names, xattrs
from .nodes import Access, Content, Dir, Extent, File, Symlink


def raw_file(source: Source, offset: int, length: int, *, mtime_ns: int | None = None) -> File:
    """A file of `length` bytes of `source` from `offset`, readable by whom
    the file on disk holding them is."""
    path, start = source.locate(offset)
    origin = source.origin
    access = Access.of(origin.stat) if origin is not None else None
    return File(Content([Extent(source, offset, length)]), mtime_ns=mtime_ns,
                xattrs={xattrs.SOURCE: path, xattrs.RANGE: f"{start}-{start + length}"}, access=access)


def raw_mirror(source: Source) -> Dir:
    """The `.ckptfs/raw/` of a single-file checkpoint: the file itself."""
    raw = Dir()
    raw.add(names.file_parts(os.path.basename(source.path))[0], raw_file(source, 0, source.size))
    return raw


#: why a directory with links that lead outside it mounts read-only: a
#: repack could not write them back as they are
LINKS_OUTSIDE = "holds links that lead outside it ({}), shown as links: copy what they point to, to edit"


def add_links(directory: Directory, links: list[str], *trees: Dir) -> None:
    """Put the links of `directory` that are not followed (they leave the
    checkpoint) into `trees` as symbolic links, as they are written: shown,
    never served."""
    for name in links:
        parts = names.file_parts(name)
        for tree in trees:
            tree.subdir(parts[:-1]).children.setdefault(parts[-1], Symlink(directory.link_target(name)))
