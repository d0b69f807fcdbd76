"""A tar as a loader finds it once extracted, for `ckptfs scan`.

NeMo extracts a `.nemo` and `torch.load`s its `model_weights.ckpt`; torch's
own pre-1.6 tar format extracts `storages` and `tensors`. What they then
read at a path is not always the member of that name: `tarfile` writes a
later member of a name over an earlier one, a hard link takes the bytes of
the last member before it of the name it gives, a symbolic link leads to
whatever its path reaches, and a GNU sparse member is its stored pieces at
their offsets with zeros between. `extract` lays out those bytes, each a
`Source` over the archive (nothing is written), and says what it could not
follow: a link out of the archive, a device, a FIFO.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field

from .errors import FormatError
from .sources.base import SeekableReader, Source

#: links followed one after another before a path is taken for a loop (Linux's own bound)
MAX_LINK_HOPS = 40


def is_tar(head: bytes) -> bool:
    """A first block `tarfile.open` (and so `torch.load`) takes for a tar:
    a valid checksum, with or without the `ustar` magic."""
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


@dataclass
class Extracted:
    #: each file's bytes by path ('a/b', no '.' parts), in archive order; links resolved
    files: dict[str, Source] = field(default_factory=dict)
    #: folders: directory members, and the parents of every path
    folders: set[str] = field(default_factory=set)
    #: links to folders inside the archive: path -> the folder it leads to
    folder_links: dict[str, str] = field(default_factory=dict)
    #: what `tarfile.extractfile(name)` reads for an exact member name (torch's tar format)
    by_name: dict[str, Source] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def extract(source: Source, location: str) -> Extracted:
    """The archive's paths and their bytes as extraction leaves them.
    Raises FormatError if `tarfile` cannot read the archive."""
    infos = _members(source, location)
    out = Extracted()
    symlinks: dict[str, str] = {}
    earlier: dict[str, Source | None] = {}  # the bytes of the last member so far of each name, for hard links
    for info in infos:
        path = _path(info.name)
        data: Source | None = None
        if info.isdir():
            out.folders.add(path)
        elif info.issym():
            symlinks[path] = info.linkname
        elif info.islnk():
            data = earlier.get(posixpath.normpath(info.linkname))
            if data is None:
                out.problems.append(f"{location}:{info.name}: a hard link to {info.linkname!r}, which no member "
                                    "before it is: extraction fails there; not scanned")
        elif info.issparse():
            data = SparseMember(source, info)
        elif info.isreg():
            data = source.slice(info.offset_data, info.size)
        else:
            out.problems.append(f"{location}:{info.name}: a {_KIND.get(info.type, 'special')} member: extraction "
                                "makes one, and a loader reads whatever it gives; not scanned")
        earlier[posixpath.normpath(info.name)] = data
        if data is not None:
            out.files.pop(path, None)  # a later member of the name replaces it, and takes its place in the order
            out.files[path] = data
            out.by_name[info.name] = data
        if path in symlinks and not info.issym():
            del symlinks[path]
    for folder in list(out.files) + list(symlinks):
        parent = folder.rpartition("/")[0]
        while parent and parent not in out.folders:
            out.folders.add(parent)
            parent = parent.rpartition("/")[0]
    for path, target in symlinks.items():
        _place_link(out, symlinks, path, target, location)
    return out


def _members(source: Source, location: str) -> list[tarfile.TarInfo]:
    try:
        archive = tarfile.open(fileobj=SeekableReader(source), mode="r:")
        infos, last = [], -1
        for info in archive:
            if info.size < 0:
                raise FormatError(location, f"member {info.name!r} claims a negative size ({info.size})")
            if info.offset <= last:  # a header that sends the reader back: it would read forever
                raise FormatError(location, f"member {info.name!r} at byte {info.offset} comes before the one it follows")
            last = info.offset
            infos.append(info)
    except (tarfile.TarError, EOFError, OverflowError, ValueError, OSError) as e:
        raise FormatError(location, f"not a readable tar archive ({e})") from None
    return infos


def _path(name: str) -> str:
    """A member's path as extraction joins it below the folder: '.' parts
    and empty ones dropped ('..' kept: it names nothing inside)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


_KIND = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


def _place_link(out: Extracted, symlinks: dict[str, str], path: str, target: str, location: str) -> None:
    reached = resolve(out, symlinks, path)
    if reached is None:
        out.problems.append(f"{location}:{path}: a symbolic link to {target!r}, which leads out of the archive "
                            "or nowhere: a loader reads whatever is there; not scanned")
    elif reached in out.files:
        out.files[path] = out.by_name[path] = out.files[reached]
    else:
        out.folder_links[path] = reached


def resolve(out: Extracted, symlinks: dict[str, str], path: str) -> str | None:
    """The file or folder of the archive that `path` reaches through its
    links once extracted, or None if it leads out of it, nowhere, or loops."""
    pending, done, hops = path.split("/"), [], 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        here = "/".join([*done, part])
        if here in symlinks:
            hops += 1
            link = symlinks[here]
            if hops > MAX_LINK_HOPS or link.startswith("/"):
                return None
            pending = link.split("/") + pending
            continue
        done.append(part)
    reached = "/".join(done)
    return reached if reached in out.files or reached in out.folders else None


class SparseMember(Source):
    """A GNU sparse member as `tarfile` extracts it: each stored piece at
    its offset in the file, in the order of its map (a later piece over an
    earlier one), zeros between, `info.size` bytes in all."""

    def __init__(self, archive: Source, info: tarfile.TarInfo):
        self.archive, self.path, self.size = archive, archive.path, info.size
        self.pieces: list[tuple[int, int, int]] = []  # (offset in the file, length, offset in the archive)
        stored = info.offset_data
        for offset, length in info.sparse or ():
            self.pieces.append((offset, length, stored))
            stored += length

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        out = bytearray(length)
        for start, n, stored in self.pieces:
            lo, hi = max(start, offset), min(start + n, offset + length)
            if lo < hi:
                out[lo - offset : hi - offset] = self.archive.pread(stored + lo - start, hi - lo).ljust(hi - lo, b"\0")
        return bytes(out)
