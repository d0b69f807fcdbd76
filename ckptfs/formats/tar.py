"""Tar archives (`.nemo`): members served zero-copy from their byte ranges.

Member offsets come from Python's `tarfile`; every member's data is one byte
range of the (possibly decompressed) tar stream. A gzip-compressed tar (NeMo
before 1.7) is read through a seek-point index (see `gzindex`).
"""

from __future__ import annotations

import copy
import math
import os
import tarfile
import time
from dataclasses import asdict, dataclass

from ..errors import FormatError, RepackError
from ..humanize import plural
from ..limits import LIMITS
from ..pack.changes import below, is_edited
from ..pack.output import Blob, ContentBlob, GzipOutput
from ..sources import pathnames
from ..sources.base import SeekableReader, Source
from ..tree import names
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Dir, File, PathConflict, Symlink
from ..tree.rawfiles import raw_file
from .base import DirectoryFormat, FileFormat, FileWriter, Opening, WriterKind, nested_writer
from .nested import Grafts, Members, directory_format

BLOCK = 512
PAGE = 4096


def sniff(head: bytes) -> bool:
    """A POSIX or GNU tar header: `ustar` magic and a valid checksum."""
    if len(head) < BLOCK or head[257:262] != b"ustar":
        return False
    try:
        stored = int(head[148:156].split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:BLOCK])


@dataclass(frozen=True, slots=True)
class Member:
    """One tar member, by normalized path ('' is the archive's `./`)."""

    name: str
    kind: str  # "file", "dir", "symlink" or "hardlink"
    offset: int  # of the data in the tar stream
    size: int
    mtime_ns: int
    link: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def list_members(fileobj, path: str) -> tuple[list[Member], list[str]]:
    """The members of the tar read from `fileobj`, checked, and notes on
    members skipped. Raises FormatError for a truncated or unsafe archive,
    or one of more than `max_members` members."""
    notes = []
    members = []
    try:
        archive = tarfile.open(fileobj=fileobj, mode="r:")
        last, count = -1, 0
        while (info := archive.next()) is not None:
            archive.members.clear()  # tarfile keeps every header it reads: a million of them take a gigabyte
            count += 1
            if count > LIMITS.members:
                raise FormatError(path, f"more than {plural(LIMITS.members, 'member')} (-o max_members raises the limit)")
            if info.size < 0:
                raise FormatError(path, f"member {info.name!r} claims a negative size ({info.size})")
            if info.offset <= last:  # a header that sends the reader back: it would read forever
                raise FormatError(path, f"member {info.name!r} at byte {info.offset} comes before the one it follows")
            last = info.offset
            member = _member(info, path)
            if member is None:
                notes.append(f"member {info.name!r} skipped: {_kind_text(info)} is not supported")
            else:
                members.append(member)
        end = archive.offset
    except (tarfile.TarError, EOFError, OverflowError) as e:  # OverflowError: tarfile on a PAX length past 2^63
        if str(e) == "unexpected end of data":
            last = f" inside member {members[-1].name!r}" if members else ""
            raise FormatError(path, f"tar archive is truncated: its data ends{last}") from None
        raise FormatError(path, f"not a readable tar archive: {e}") from None
    except OSError as e:
        raise FormatError(path, f"cannot read the archive: {e}") from None
    fileobj.seek(end)
    block = fileobj.read(BLOCK)
    if len(block) < BLOCK:
        last = f" (the last member read is {members[-1].name!r})" if members else ""
        raise FormatError(path, f"tar archive is truncated: no end-of-archive block at byte {end}{last}")
    if block.strip(b"\0"):
        raise FormatError(path, f"tar archive has a corrupt member header at byte {end}")
    return members, notes


def _member(info: tarfile.TarInfo, path: str) -> Member | None:
    name = _normalize(info.name, path)
    if info.issparse() or not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
        return None
    if info.isdir():
        return Member(name, "dir", 0, 0, _ns(info.mtime))
    if info.issym():
        return Member(name, "symlink", 0, 0, _ns(info.mtime), info.linkname)
    if info.islnk():
        return Member(name, "hardlink", 0, 0, _ns(info.mtime), _normalize(info.linkname, path))
    return Member(name, "file", info.offset_data, info.size, _ns(info.mtime))


def _ns(seconds: float) -> int:
    """PAX headers give fractional mtimes; keep them to the nanosecond. One
    no file system can hold (infinite, not a number, beyond 64 bits of
    nanoseconds) becomes 0, the epoch."""
    if not math.isfinite(seconds) or abs(seconds) >= 9.2e9:
        return 0
    return round(seconds * 10**9)


def _kind_text(info: tarfile.TarInfo) -> str:
    return "a sparse file" if info.issparse() else f"member type {info.type!r}"


def _normalize(name: str, path: str) -> str:
    if name.startswith("/"):
        raise FormatError(path, f"member {name!r} has an absolute path; refusing to mount it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FormatError(path, f"member {name!r} points outside the archive; refusing to mount it")
    return "/".join(parts)


def build(fmt: str, source: Source, members: list[Member], st: os.stat_result, notes: list[str]) -> Checkpoint:
    """The checkpoint tree of a tar: every member in the main tree and,
    byte for byte, in the raw mirror."""
    root, raw = Dir(), Dir()
    files = {m.name: m for m in members if m.kind == "file"}
    for m in members:
        if m.name == "":
            root.mtime_ns = m.mtime_ns
            continue
        if m.kind == "hardlink":
            target = files.get(m.link)
            if target is None:
                notes.append(f"member {m.name!r} skipped: hard link to missing member {m.link!r}")
                continue
            m = Member(m.name, "file", target.offset, target.size, m.mtime_ns)
            files[m.name] = m
        for tree in (root, raw):
            _place(tree, m, source, source.path)
    grafts = Grafts(notes=notes)
    folders = _nested_folders(files.values(), source, st)
    _expand_checkpoints(root, files.values(), source, grafts, folders)
    _expand_folders(root, folders, grafts)
    ckpt = Checkpoint(fmt, source.path, st, root, raw, grafts.placed, grafts.notes, grafts.pickle_globals)
    ckpt.writer = Writer(source, compressed=fmt.endswith(".gz)"))
    return ckpt


def _nested_folders(files, source: Source, st: os.stat_result) -> dict[str, tuple[DirectoryFormat, Members]]:
    """The folders of the archive that hold a checkpoint of a directory
    format that nests (NeMo's `model_weights/`, a distributed checkpoint),
    each with its format and its files."""
    by_folder: dict[str, dict[str, Member]] = {}
    for m in files:
        folder, _, name = m.name.rpartition("/")
        by_folder.setdefault(folder, {})[name] = m
    nested = {}
    for folder, in_folder in sorted(by_folder.items()):
        mtimes = {name: m.mtime_ns for name, m in in_folder.items()}
        members = Members(f"{source.path}:{folder}", st, mtimes,
                          lambda name, in_folder=in_folder: source.slice(in_folder[name].offset, in_folder[name].size))
        fmt = directory_format(members)
        if fmt is not None and fmt.nest.deep:  # it reads its subfolders too: every file below the folder
            prefix = f"{folder}/" if folder else ""
            below = {m.name[len(prefix):]: m for m in files if m.name.startswith(prefix)}
            members = Members(members.path, st, {name: m.mtime_ns for name, m in below.items()},
                              lambda name, below=below: source.slice(below[name].offset, below[name].size))
        if fmt is not None:
            nested[folder] = (fmt, members)
    return nested


def _expand_folders(root: Dir, folders: dict[str, tuple[DirectoryFormat, Members]], grafts: Grafts) -> None:
    """Folders of the archive that hold a directory checkpoint appear
    expanded in place, served from the tar's bytes; the files of the folder
    that are not its own stay beside it as they are."""
    for folder, (fmt, members) in folders.items():
        if not folder:
            continue
        try:
            inner = fmt.nest.open(members)
        except FormatError as e:
            grafts.notes.append(f"{folder} is shown as plain files: {e.problem}")
            continue
        parts = names.file_parts(folder)
        parent = root.subdir(parts[:-1])
        shown = parent.children[parts[-1]]
        inner.root.mtime_ns = shown.mtime_ns
        inner.root.writer = inner.writer
        for name, node in shown.children.items():
            if not fmt.nest.owns(name):
                inner.root.children.setdefault(name, node)  # other files of the folder stay as they are
        grafts.graft(parent, parts[-1], "/".join(parts), inner.root, inner.tensors, inner.notes, inner.pickle_globals)


def _expand_checkpoints(root: Dir, files, source: Source, grafts: Grafts, folders: dict) -> None:
    """Members that are checkpoints themselves (torch.save archives) appear
    expanded at their own name (docs/layout.md). The files a directory
    checkpoint's folder holds of its own are not: a distributed
    checkpoint's shards hold torch.save archives one after another, read
    through the metadata beside them (`_expand_folders`); a deep nest's
    folder shows every file below it itself."""
    deep = [f"{folder}/" for folder, (fmt, _) in folders.items() if folder and fmt.nest.deep]
    for m in files:
        folder, _, leaf = m.name.rpartition("/")
        if folder in folders and folders[folder][0].nest.owns(leaf) or m.name.startswith(tuple(deep)):
            continue
        parts = names.file_parts(m.name)
        parent = root.subdir(parts[:-1])
        grafts.file(parent, parts[-1], "/".join(parts), source.slice(m.offset, m.size), parent.children[parts[-1]].mtime_ns)


def _place(tree: Dir, m: Member, source: Source, path: str) -> None:
    parts = names.file_parts(m.name)
    mtime_ns = m.mtime_ns
    try:
        if m.kind == "dir":
            tree.subdir(parts).mtime_ns = mtime_ns
            return
        parent = tree.subdir(parts[:-1])
        if isinstance(parent.children.get(parts[-1]), Dir):
            raise PathConflict(m.name)
        if m.kind == "symlink":
            node = Symlink(m.link, mtime_ns=mtime_ns)
        else:
            node = raw_file(source, m.offset, m.size, mtime_ns=mtime_ns)
        parent.add(parts[-1], node, replace=True)  # a later member of the same name wins, as in tar
    except PathConflict:
        raise FormatError(path, f"member {m.name!r} needs a folder where another member is a file, or the reverse") from None


def open_plain(source: Source, st: os.stat_result) -> Checkpoint:
    members, notes = list_members(SeekableReader(source), source.path)
    return build("nemo (tar)", source, members, st, notes)


# ---------------------------------------------------------------- the writer


def _latest(folder: str, files: dict) -> int | None:
    """When the last change under `folder` was made: it dates the member
    rewritten for it (so the same tree gives the same bytes)."""
    times = [n.mtime_ns for p, n in files.items() if p.startswith(folder + "/") and n.mtime_ns is not None]
    return max(times, default=files[folder].mtime_ns if folder in files else None)


class Writer(FileWriter):
    """Writes an edited tree of a tar: every member in its original order,
    unchanged ones copied byte for byte (headers included), edited ones with
    a new header, deleted ones left out, new files and folders appended in
    path order. A gzip source is written gzip-compressed."""

    def __init__(self, source: Source, compressed: bool):
        self.source, self.compressed = source, compressed

    def check(self, path: str, node: File) -> None:
        self.check_file_name(path)  # a member is a file on disk once the archive is unpacked

    def check_move(self, moved: list) -> None:
        self.check_moved_file_names(moved)

    def write(self, files: dict, before: dict, output) -> None:
        if self.compressed:
            compressed = GzipOutput(output)
            self._write(files, before, compressed)
            compressed.close()
        else:
            self._write(files, before, output)

    def _write(self, files: dict, before: dict, output) -> None:
        archive = tarfile.open(fileobj=SeekableReader(self.source), mode="r:")
        infos = archive.getmembers()
        prefix = "./" if any(i.name == "." or i.name.startswith("./") for i in infos) else ""
        written = set()
        in_folders = self._distributed(files, before)
        for info in infos:
            path = "/".join(names.file_parts(_normalize(info.name, self.source.path))) if info.name.strip("./") else ""
            node = files.get(path)
            if path and node is None and path in before or in_folders.get(path, info) is None:
                continue  # deleted
            written.add(path)
            end = info.offset_data + (-(-info.size // BLOCK) * BLOCK if info.isreg() else 0)
            nested = nested_writer(node)  # a checkpoint inside the tar, shown expanded
            blob = nested.blob(*below(path, files, before)) if nested and info.isreg() else in_folders.get(path)
            if is_edited(node) and info.isreg():
                self._edited(info, node.mtime_ns, ContentBlob(node.content), output, end)
            elif blob is not None and blob.size == info.size:  # header and padding as they were
                output.copy(self.source, info.offset, info.offset_data - info.offset)
                blob.write(output)
                output.copy(self.source, info.offset_data + info.size, end - info.offset_data - info.size)
            elif blob is not None:
                self._edited(info, _latest(path if path in files else path.rpartition("/")[0], files), blob, output, end)
            else:  # unchanged, or not shown in the main tree (a DCP folder's .metadata)
                output.copy(self.source, info.offset, end - info.offset)
        nested = {p + "/" for p, n in files.items() if nested_writer(n)}  # they write what is inside
        for path in sorted(p for p in files if p not in written and p not in before):
            if not any(path.startswith(folder) for folder in nested):
                self._new(prefix, path, files[path], output)
        for path, blob in sorted(in_folders.items()):
            if path not in written and blob is not None:  # a new shard of a distributed checkpoint
                info = tarfile.TarInfo(prefix + _member_name(path))
                info.mode, info.size = 0o644, blob.size
                info.mtime = (_latest(path.rpartition("/")[0], files) or time.time_ns()) / 1e9
                self._member(info, blob, output)
        output.write(b"\0" * (2 * BLOCK))
        output.write(b"\0" * (-output.written % tarfile.RECORDSIZE))

    @staticmethod
    def _distributed(files: dict, before: dict) -> dict:
        """The members of the distributed checkpoints in the tar (a Megatron
        `.nemo`'s `model_weights/`) that the edits change, by path: how to
        write each (`size`, `write`), or None to leave it out."""
        changed = {}
        for folder, node in files.items():
            writer = nested_writer(node)
            if writer is not None and writer.directory:
                for name, blob in writer.new_files(*below(folder, files, before)).items():
                    changed[f"{folder}/{names.file_parts(name)[0]}"] = blob
        return changed

    def _edited(self, info: tarfile.TarInfo, mtime_ns: int | None, blob: Blob, output, source_end: int) -> None:
        """A member whose bytes changed: a new header, then `blob` (a file's
        bytes, or those of a nested checkpoint). The header is padded so
        that the member ends where the old one did, modulo a page: the
        members copied after it keep their alignment, which the kernel
        copies faster."""
        info = copy.copy(info)
        size = info.size = blob.size
        info.mtime = (mtime_ns or time.time_ns()) / 1e9
        info.pax_headers = {k: v for k, v in info.pax_headers.items() if k not in ("size", "mtime", "atime", "ctime")}
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        body = size + -size % BLOCK
        for padding in range(0, PAGE * 2, BLOCK) if output.in_kernel else ():
            if (output.written + len(header) + body - source_end) % PAGE == 0:
                break
            info.pax_headers["comment"] = "ckptfs: padding that keeps the next members page-aligned".ljust(padding, ".")
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self._member(info, blob, output, header)

    def _new(self, prefix: str, path: str, node, output) -> None:
        info = tarfile.TarInfo(prefix + _member_name(path))
        info.mtime = (node.mtime_ns or time.time_ns()) / 1e9
        if isinstance(node, Dir):
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self._member(info, None, output)
        elif isinstance(node, File):
            info.mode, info.size = 0o644, node.content.size
            self._member(info, ContentBlob(node.content), output)

    def _member(self, info: tarfile.TarInfo, blob: Blob | None, output, header: bytes | None = None) -> None:
        output.write(header or info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if blob is not None:
            blob.write(output)
            output.write(b"\0" * (-info.size % BLOCK))


def _member_name(path: str) -> str:
    """The member name a new file of the tree stands for; RepackError if it
    is one the reader refuses and that unpacking would put outside its folder."""
    name = names.disk_path(path)
    problem = pathnames.path_problem(name)
    if problem is not None:
        raise RepackError(f"a member of the archive cannot be named {name!r}: {problem} (rename or remove it in "
                          "the mount)")
    return name


def open_file(opening: Opening) -> Checkpoint:
    return open_plain(opening.source, opening.stat)


FORMAT = FileFormat("nemo (tar)", sniff, open_file, "NeMo .nemo archives (plain tar, NeMo 1.7 and later)", WriterKind.FILE)
