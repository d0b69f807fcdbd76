"""`ckptfs scan`: every global the pickles of a checkpoint name, where each
is, and whether loading would stay safe (docs/security.md, "Scanning
pickles").

The scan walks the bytes, not the tree a mount shows, so a part the mount
would refuse or show as a plain file is scanned all the same: a file or a
directory; in it tar members (gzip-compressed too), zip records, the byte
items of a distributed checkpoint (each a torch.save zip that
`torch.distributed.checkpoint` loads), legacy torch.save files and plain
pickles; and inside those again, a few levels deep. In a zip, every record
whose name ends in `.pkl` in any case is read: `torch.load` finds
`<archive>/data.pkl` through miniz, which ignores case, so a record named
`DATA.PKL` is loaded too. Tensor storages (`<archive>/data/N`) are raw bytes
that nothing unpickles, and are skipped.

Nothing found is imported or run: pickles are read by `pickle.audit`.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field

from . import __version__
from .errors import CkptfsError, FormatError, SourceChangedError
from .formats import default_cache_dir, gzindex, safetensors, tar, torchlegacy, torchzip
from .formats.dcp.metadata import Metadata, is_metadata
from .formats.dcp.reader import Reader
from .formats.torchzip_records import CONSEQUENCE, read_records
from .limits import LIMITS
from .pickle.allowlist import Verdict, classify
from .pickle.audit import UNNAMED, Audit, audit
from .pickle.inert import Global
from .sources.base import FileSource, SeekableReader, Source

#: containers inside containers the scan enters
MAX_DEPTH = 8
#: file names whose bytes `torch.load` or `pickle.load` is run on, though they may not start with PROTO
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".metadata")
_PROTO = 0x80
NPY_MAGIC = b"\x93NUMPY"
#: bytes of a file read for its pickles at first; more only for a pickle that runs past them
FIRST_READ = 1 << 20
#: what a zip that torch.load and other zip readers read differently is reported as, in place of a global
READ_DIFFERENTLY = Global("<zip>", "read differently")


@dataclass
class Found:
    """One global, where it was named, and the verdict on it."""

    glob: Global
    location: str
    verdict: Verdict

    def to_json(self) -> dict:
        return {"global": self.glob.path, "location": self.location, "safe": self.verdict.safe,
                "reason": self.verdict.reason}


@dataclass
class Report:
    source: str
    #: every pickle read: its location, the globals it names, whether it is whole
    pickles: list[dict] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)
    #: parts that could not be scanned: the verdict is then "error" unless something dangerous was found
    problems: list[str] = field(default_factory=list)
    #: what was passed over, and why that is not a problem
    notes: list[str] = field(default_factory=list)

    @property
    def dangerous(self) -> list[Found]:
        return [f for f in self.found if not f.verdict.safe]

    @property
    def verdict(self) -> str:
        return "dangerous" if self.dangerous else "error" if self.problems else "safe"

    def to_json(self) -> dict:
        """The documented schema of `ckptfs scan --json` (docs/cli.md)."""
        return {
            "source": self.source,
            "verdict": self.verdict,
            "pickles": self.pickles,
            "globals": [f.to_json() for f in self.found],
            "dangerous": [f.to_json() for f in self.dangerous],
            "problems": self.problems,
            "notes": self.notes,
            "ckptfs_version": __version__,
        }


def scan(path: str, allowed: tuple[str, ...] = (), cache_dir: str | None = None) -> Report:
    """Scan the file or directory at `path`; `allowed` adds fnmatch patterns
    of globals to take as safe. Raises FormatError if `path` cannot be read at all."""
    scanner = _Scanner(Report(path), allowed, cache_dir)
    try:
        st = os.stat(path)
    except OSError as e:
        raise FormatError(path, e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        scanner.directory(path)
    elif stat.S_ISREG(st.st_mode):
        scanner.top_file(path, st)
    else:
        raise FormatError(path, "not a regular file or directory")
    return scanner.report


class _Scanner:
    def __init__(self, report: Report, allowed: tuple[str, ...], cache_dir: str | None):
        self.report, self.allowed, self.cache_dir = report, allowed, cache_dir

    # -- what holds files
    def directory(self, root: str) -> None:
        for folder, subdirs, file_names in os.walk(root, onerror=self._walk_error):
            subdirs.sort()
            files = {}
            for name in sorted(file_names):
                path = os.path.join(folder, name)
                location = os.path.relpath(path, root)
                try:
                    if not stat.S_ISREG(os.stat(path).st_mode):
                        self.report.notes.append(f"{location}: not a regular file, not scanned")
                        continue
                    files[name] = FileSource(path)
                except OSError as e:
                    self.report.problems.append(f"{location}: {e.strerror or e}")
            relative = os.path.relpath(folder, root)
            self.folder(files, "" if relative == "." else relative + "/", 0)

    def _walk_error(self, error: OSError) -> None:
        self.report.problems.append(f"{error.filename}: {error.strerror or error}")

    def folder(self, files: dict[str, Source], prefix: str, depth: int) -> None:
        """The files of one folder: a distributed checkpoint's shards through
        its metadata, every other file by its bytes."""
        distributed = any(is_metadata(name) for name in files)
        if distributed:
            self.distributed(files, prefix.rstrip("/") or ".", prefix, depth)
        for name, source in files.items():
            if name.endswith(".distcp"):  # only its byte items are loaded, each a zip of its own
                if not distributed:
                    self.report.notes.append(f"{prefix}{name}: no metadata beside it names its items; not scanned")
                continue
            self.blob(source, prefix + name, depth)

    def top_file(self, path: str, st: os.stat_result) -> None:
        try:
            source = FileSource(path)
        except OSError as e:
            raise FormatError(path, e.strerror or str(e)) from None
        name = os.path.basename(path)
        if gzindex.sniff(source.pread(0, 2)):
            self.gzip_tar(source, st, name)
        else:
            self.blob(source, name, 0)

    def gzip_tar(self, compressed: Source, st: os.stat_result, location: str) -> None:
        try:
            stream, members, notes = gzindex.open_tar_stream(compressed, st, self.cache_dir or default_cache_dir())
        except FormatError as e:
            self.report.problems.append(f"{location}: {e.problem}")
            return
        self.report.notes += [f"{location}: {note}" for note in notes]
        self.members(stream, members, location, 0)

    # -- one file's bytes
    def blob(self, source: Source, location: str, depth: int) -> None:
        """Whatever `source` holds, found by its first bytes (and, for
        pickles of protocols 0 and 1, which start with no marker, its name)."""
        try:
            head = source.pread(0, 512)
        except OSError as e:
            self.report.problems.append(f"{location}: {e.strerror or e}")
            return
        if depth > MAX_DEPTH and head:
            self.report.problems.append(f"{location}: more than {MAX_DEPTH} archives deep; not scanned")
        elif torchzip.sniff(head):
            self.zip(source, location, depth)
        elif tar.sniff(head):
            self.tar(source, location, depth)
        elif gzindex.sniff(head):
            self.report.notes.append(f"{location}: gzip-compressed inside another file; not scanned "
                                     "(neither torch.load nor pickle.load reads it)")
        elif safetensors.sniff(head[: safetensors.MAGIC_LENGTH]):
            return
        elif head.startswith(NPY_MAGIC):
            self.object_array(source, location, head)
        elif torchlegacy.sniff(head):
            self.pickles(source, location, count=5)  # magic, protocol, system info, the object, storage keys
        elif len(head) > 1 and head[0] == _PROTO and 2 <= head[1] <= 5:
            self.pickles(source, location)
        elif head and location.lower().endswith(_PICKLE_SUFFIXES):
            self.pickles(source, location, quiet=True)

    def object_array(self, source: Source, location: str, head: bytes) -> None:
        """An `.npy` of Python objects holds a pickle after its header, which
        `np.load(allow_pickle=True)` loads (an `.npz` record too)."""
        major = head[6] if len(head) > 9 else 0
        size_bytes = 2 if major == 1 else 4
        start = 8 + size_bytes + int.from_bytes(head[8:8 + size_bytes], "little")
        header = source.pread(0, min(start, 1 << 16))
        if b"O'" in header and start < source.size:  # descr '|O', or a field of objects in a structured one
            self.pickles(source.slice(start, source.size - start), f"{location} (its objects)")

    def members(self, stream: Source, members: list[tar.Member], location: str, depth: int) -> None:
        folders: dict[str, dict[str, Source]] = {}
        for m in members:
            if m.kind == "file":
                parent, _, leaf = m.name.rpartition("/")
                folders.setdefault(parent, {})[leaf] = stream.slice(m.offset, m.size)
        for parent, files in folders.items():
            self.folder(files, f"{location}:{parent + '/' if parent else ''}", depth + 1)

    def tar(self, source: Source, location: str, depth: int) -> None:
        try:
            members, notes = tar.list_members(SeekableReader(source), location)
        except FormatError as e:
            self.report.problems.append(e.args[0])
            return
        self.report.notes += [f"{location}: {note}" for note in notes]
        self.members(source, members, location, depth)

    def zip(self, source: Source, location: str, depth: int) -> None:
        """A zip's records as torch.load finds them (`torchzip_records`).
        One that other zip readers would read otherwise is dangerous
        whatever its pickles name: what a scanner built on zipfile saw is
        not what torch.load runs. One torch.load cannot read at all is read
        as zipfile reads it, as np.load does."""
        try:
            archive = read_records(source, location)
        except (FormatError, SourceChangedError) as unreadable:
            self.report.notes.append(f"{unreadable.args[0]}; read as Python's zipfile reads it")
            self.python_zip(source, location, depth)
            return
        # torch.load reads <the first record's folder>/data.pkl; its storages are the records in data/
        folder = archive.entries[0].name_bytes.partition(b"/")[0] if archive.entries else b""
        storages = (folder + b"/data/").lower()
        for entry in archive.entries:
            if entry.name_bytes.endswith(b"/") and not entry.compress_size:
                continue  # a folder
            inner = f"{location}:{entry.filename}"
            lower = entry.name_bytes.lower()
            try:
                if lower.endswith(b".pkl"):
                    data = self.pickle_record(archive.contents(entry), inner)
                    if len(data) == entry.file_size:
                        archive.check_crc(entry, data)
                elif lower.startswith(storages) and b"/" not in lower[len(storages):]:
                    continue
                else:  # stored, or deflated and inflated as far as reads go (savez_compressed's object arrays)
                    self.blob(archive.contents(entry), inner, depth + 1)
            except (FormatError, SourceChangedError, OSError, zlib.error) as e:
                self.report.problems.append(e.args[0] if isinstance(e, CkptfsError) else f"{inner}: cannot read it ({e})")
        for problem in archive.disagreements:
            self.read_differently(location, problem)

    def python_zip(self, source: Source, location: str, depth: int) -> None:
        """A zip torch.load cannot read, as Python's zipfile reads it."""
        try:
            records = [i for i in zipfile.ZipFile(SeekableReader(source)).infolist() if not i.filename.endswith("/")]
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, ValueError, OSError) as e:
            self.report.problems.append(f"{location}: not a readable zip archive ({e})")
            return
        for info in records:
            inner = f"{location}:{info.filename}"
            try:
                contents = torchzip.record_source(source, info, inner)
                if info.filename.lower().endswith(".pkl"):
                    self.pickle_record(contents, inner)
                else:
                    self.blob(contents, inner, depth + 1)
            except (FormatError, SourceChangedError, OSError, zlib.error) as e:
                self.report.problems.append(e.args[0] if isinstance(e, CkptfsError) else f"{inner}: cannot read it ({e})")

    def read_differently(self, location: str, problem: str) -> None:
        """A zip whose records depend on the reader: as dangerous as a global
        outside the allowlist, since torch.load runs a pickle other tools never saw."""
        self.report.found.append(Found(READ_DIFFERENTLY, location, Verdict(False, f"{problem}: {CONSEQUENCE}")))

    def pickle_record(self, contents: Source, location: str) -> bytes:
        """A zip record read as `torch.load` reads `data.pkl`: one pickle, up
        to the bound. Returns the bytes read."""
        data = contents.pread(0, min(contents.size, LIMITS.pickle_bytes))
        result = audit(data, 0)
        self.record(result, location, truncated=result.ran_out and contents.size > len(data))
        return data

    def distributed(self, files: dict[str, Source], name: str, prefix: str, depth: int) -> None:
        """The byte items and chunks of a distributed checkpoint: each a
        torch.save zip that `torch.distributed.checkpoint` loads (items
        with `weights_only=False`)."""
        try:
            metadata = Metadata.read(name, files)
        except FormatError as e:
            self.report.problems.append(f"{e.args[0]} (its shards' items cannot be found without it)")
            return
        reader = Reader(name, files)
        for (fqn, _), info in metadata.storage.items():
            try:
                record = reader.record(fqn, info)
                if torchzip.sniff(record.data.pread(0, 4)):
                    location = f"{prefix}{info['relative_path']}@{record.start} ({fqn})"
                    self.zip(record.data, location, depth + 1)
            except (FormatError, SourceChangedError, OSError) as e:
                self.report.problems.append(str(e))

    # -- pickles
    def pickles(self, source: Source, location: str, count: int | None = None, quiet: bool = False) -> None:
        """Pickles back to back from the start of `source`: `count` of them,
        or as many as follow one another. The first MiB is read first, and
        more (up to the bound) only if a pickle runs past it."""
        cap = min(source.size, LIMITS.pickle_bytes)
        data = source.pread(0, min(cap, FIRST_READ))
        audits = _back_to_back(data, count)
        if audits and audits[-1].ran_out and len(data) < cap:
            data = source.pread(0, cap)
            audits = _back_to_back(data, count)
        if quiet and audits and not audits[0].whole and not audits[0].globals:
            return  # not a pickle: pickle.load would stop before importing anything
        for n, result in enumerate(audits):
            label = location if n == 0 else f"{location} (pickle {n + 1})"
            self.record(result, label, truncated=result.ran_out and source.size > len(data))

    def record(self, result: Audit, location: str, truncated: bool) -> None:
        """`truncated`: the pickle runs past the bytes that were read."""
        unseen = result.unseen
        if truncated:
            unseen = unseen or (f"larger than the {LIMITS.pickle_bytes} bytes read (-o max_pickle_bytes raises "
                                "the limit)")
        self.report.pickles.append({"location": location, "globals": [g.path for g in result.globals],
                                    "whole": result.whole, "problem": result.problem})
        for g in result.globals:
            if g.module == UNNAMED:
                verdict = Verdict(False, f"a STACK_GLOBAL at {g.name} whose names could not be followed")
            else:
                verdict = classify(g, self.allowed)
            self.report.found.append(Found(g, location, verdict))
        if unseen:
            self.report.problems.append(f"{location}: not scanned to its end: {unseen}")


def _back_to_back(data: bytes, count: int | None) -> list[Audit]:
    """The audits of the pickles from the start of `data`: `count` of them,
    or while another starts (with PROTO) where one ends; up to the first
    that is not whole."""
    audits: list[Audit] = []
    start = 0
    while start < len(data) and (count is None or len(audits) < count):
        if audits and count is None and data[start] != _PROTO:
            break
        audits.append(audit(data, start))
        if not audits[-1].whole:
            break
        start = audits[-1].end
    return audits


def text(report: Report, verbose: bool = False) -> str:
    """What `ckptfs scan` prints."""
    pickles = len(report.pickles)
    names = len({f.glob for f in report.found})
    counted = f"{names} global{'s' if names != 1 else ''} named by {pickles} pickle{'s' if pickles != 1 else ''}"
    dangerous = report.dangerous
    if dangerous:
        outside = len({f.glob for f in dangerous})
        head = (f"{report.source}: DANGEROUS: {outside} global{'s' if outside != 1 else ''} outside the allowlist "
                f"({counted}; nothing was imported or run)")
    elif report.problems:
        head = f"{report.source}: not scanned completely, no verdict ({counted} so far, all on the allowlist)"
    elif not pickles:
        head = f"{report.source}: safe: no pickles"
    else:
        head = f"{report.source}: safe: {counted}, all on the allowlist (nothing was imported or run)"
    lines = [head]
    places: dict[Global, list[Found]] = {}
    for f in report.found if verbose else dangerous:
        places.setdefault(f.glob, []).append(f)
    width = max((len(g.path) for g in places), default=0)
    for g, uses in places.items():
        mark = "" if not verbose else "safe       " if uses[0].verdict.safe else "DANGEROUS  "
        more = f" (and {len(uses) - 1} more)" if len(uses) > 1 else ""
        lines.append(f"  {mark}{g.path:<{width}}  in {uses[0].location}{more}: {uses[0].verdict.reason}")
    lines += [f"  cannot scan: {problem}" for problem in report.problems]
    if verbose:
        lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)
