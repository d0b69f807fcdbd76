"""Files served byte for byte from a source: archive members, the raw mirror."""

from __future__ import annotations

from ..sources.base import Source
from .nodes import Content, Extent, File


def raw_file(source: Source, offset: int, length: int, *, mtime_ns: int | None = None) -> File:
    path, start = source.locate(offset)
    xattrs = {"ckptfs.source": path, "ckptfs.range": f"{start}-{start + length}"}
    return File(Content([Extent(source, offset, length)]), mtime_ns=mtime_ns, xattrs=xattrs)
