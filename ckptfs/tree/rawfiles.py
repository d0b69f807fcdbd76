"""Files served byte for byte from a source: archive members, the raw mirror."""

from __future__ import annotations

import os

from ..sources.base import Source
from . import names
from .nodes import Content, Dir, Extent, File


def raw_file(source: Source, offset: int, length: int, *, mtime_ns: int | None = None) -> File:
    path, start = source.locate(offset)
    xattrs = {"ckptfs.source": path, "ckptfs.range": f"{start}-{start + length}"}
    return File(Content([Extent(source, offset, length)]), mtime_ns=mtime_ns, xattrs=xattrs)


def raw_mirror(source: Source) -> Dir:
    """The `.ckptfs/raw/` of a single-file checkpoint: the file itself."""
    raw = Dir()
    raw.add(names.file_parts(os.path.basename(source.path))[0], raw_file(source, 0, source.size))
    return raw
