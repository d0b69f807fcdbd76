"""`ckptfs scan`: every global the pickles of a checkpoint name, where each
is, and whether loading would stay safe (docs/security.md, "Scanning
pickles").

The scan walks the bytes, not the tree a mount shows, so a part the mount
would refuse or show as a plain file is scanned all the same: a file or a
directory (links to folders followed); in it tar members as
extraction leaves them (`scan_tar`: hard and symbolic links, sparse
members; gzip-compressed too), zip records, the byte items of a distributed
checkpoint (each loaded with `torch.load`), torch's pre-1.0 tar format and
legacy files, NumPy object arrays and plain pickles; and inside those
again, a few levels deep. In a zip, every record whose name ends in `.pkl`
in any case is read: `torch.load` finds `<archive>/data.pkl` through miniz,
which ignores case, so a record named `DATA.PKL` is loaded too. Tensor
storages (`<archive>/data/N`) are raw bytes that nothing unpickles, and are
skipped.

Any other file is read as `pickle.load` would read it, whatever its name:
pickles of protocols 0 and 1 start with no marker. A file is no pickle only
if it breaks off before its STOP without naming a global (the opcode reader
stops where `pickle.load` does, so nothing was imported); anything else that
does not read to its STOP is a problem, never "safe". Whatever the scan
cannot read is a problem in the verdict, never silence.

Nothing found is imported or run: pickles are read by `pickle.audit`.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

from .errors import CkptfsError, FormatError, SourceChangedError
from .formats import file_formats, gzindex, hdf5, keras, torchlegacy, torchzip
from .formats.base import SNIFF_BYTES, Pickles
from .formats.dcp.metadata import Metadata, is_metadata
from .formats.dcp.reader import Reader
from .formats.keras_code import code_in
from .formats.torchzip_records import CONSEQUENCE, read_records
from .humanize import plural
from .limits import LIMITS
from .pickle.allowlist import Verdict, classify
from .pickle.audit import UNNAMED, Audit, audit
from .pickle.inert import Global
from .pickle.torch_classes import STORAGE_DTYPES
from .scan_tar import Extracted, extract, is_tar
from .sources.base import FileSource, SeekableReader, Source
from .sources.cachedir import default_cache_dir
from .tree.dtypes import BY_TORCH
from .version import __version__

#: containers inside containers the scan enters
MAX_DEPTH = 8
#: folders a directory's walk enters, links to folders followed (each real folder once)
MAX_FOLDERS = 10_000
#: names of text files that no loader unpickles: read as pickles only if they start with PROTO
TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".txt", ".md", ".rst", ".py", ".cfg", ".ini", ".toml", ".csv",
                 ".tsv", ".jinja", ".html")
_PROTO = 0x80
#: the end record of an empty zip: np.load takes a file that starts so for a zip too
EMPTY_ZIP = b"PK\x05\x06"
#: an .npy header longer than this is not parsed (np.load reads any length when it may unpickle)
NPY_HEADER_BYTES = 1 << 20
#: bytes of a file read for its pickles at first; more only for a pickle that runs past them
FIRST_READ = 1 << 20
#: what torch.load reads from its pre-1.6 tar format, in its order
TORCH_TAR = ("storages", "tensors", "pickle")
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
    #: the Keras configs read for the code they name (formats/keras_code.py)
    configs: list[str] = field(default_factory=list)

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
            "keras_configs": self.configs,
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
        """Every folder below `root`, links to folders followed wherever they
        lead, as a loader follows them (each real folder scanned once, up to
        MAX_FOLDERS)."""
        pending, seen = [(root, "")], {os.path.realpath(root)}
        while pending:
            if len(seen) > MAX_FOLDERS:
                self.report.problems.append(f"more than {MAX_FOLDERS} folders, links followed: "
                                            f"{', '.join(p for _, p in pending[:3])}... not scanned")
                return
            folder, prefix = pending.pop(0)
            files, subfolders = self._entries(folder, prefix, seen)
            self.folder(files, prefix, 0)
            pending[:0] = subfolders

    def _entries(self, folder: str, prefix: str, seen: set[str]):
        """The files of one folder (links followed) and its subfolders to walk."""
        files: dict[str, Source] = {}
        subfolders = []
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            self.report.problems.append(f"{prefix or '.'}: {e.strerror or e}")
            return files, subfolders
        for name in names:
            path, location = os.path.join(folder, name), prefix + name
            try:
                st = os.stat(path)
                if stat.S_ISREG(st.st_mode):
                    files[name] = FileSource(path)
                    continue
            except OSError as e:
                self.report.problems.append(f"{location}: {e.strerror or e}")
                continue
            if not stat.S_ISDIR(st.st_mode):
                self.report.problems.append(f"{location}: not a regular file or folder: a loader reads whatever "
                                            "it gives; not scanned")
                continue
            real = os.path.realpath(path)
            if real in seen:
                self.report.notes.append(f"{location}: a link to a folder scanned in its own place")
            else:
                seen.add(real)
                subfolders.append((path, location + "/"))
        return files, subfolders

    def folder(self, files: dict[str, Source], prefix: str, depth: int) -> None:
        """The files of one folder: a distributed checkpoint's shards through
        its metadata, every other file by its bytes."""
        distributed = any(is_metadata(name) for name in files)
        if distributed:
            self.distributed(files, prefix.rstrip("/") or ".", prefix, depth)
        for name, source in files.items():
            if distributed and name.endswith(".distcp"):  # only its items are loaded, each read through the metadata
                continue
            self.blob(source, prefix + name, depth)

    def top_file(self, path: str, st: os.stat_result) -> None:
        try:
            source = FileSource(path)
        except OSError as e:
            raise FormatError(path, e.strerror or str(e)) from None
        name = os.path.basename(path)
        if Pickles.GZIP in _pickles(source.pread(0, SNIFF_BYTES)):
            self.gzip_tar(source, st, name)
        else:
            self.blob(source, name, 0)

    def gzip_tar(self, compressed: Source, st: os.stat_result, location: str) -> None:
        try:
            stream, _, notes = gzindex.open_tar_stream(compressed, st, self.cache_dir or default_cache_dir())
        except FormatError as e:
            self.report.problems.append(f"{location}: {e.problem}")
            return
        self.report.notes += [f"{location}: {note}" for note in notes if "skipped" not in note]
        self.tar(stream, location, 0)

    # -- one file's bytes
    def blob(self, source: Source, location: str, depth: int) -> None:
        """Whatever `source` holds, found by its first bytes: a container,
        else a pickle if its bytes read as one."""
        try:
            head = source.pread(0, SNIFF_BYTES)
        except OSError as e:
            self.report.problems.append(f"{location}: {e.strerror or e}")
            return
        if not head:
            return
        pickles = _pickles(head)
        if depth > MAX_DEPTH:
            self.report.problems.append(f"{location}: more than {MAX_DEPTH} archives deep; not scanned")
        elif keras.sniff(head) or Pickles.ZIP in pickles or head.startswith(EMPTY_ZIP):
            self.zip(source, location, depth)  # its records as any zip's, then a Keras config wherever it lies
            self.keras_config(lambda: keras.zip_config(source, location), f"{location}:{keras.CONFIG}")
        elif hdf5.sniff(head):
            self.h5_config(source, location)
        elif is_tar(head):  # torch.load tries tarfile first too
            self.tar(source, location, depth)
            self.pickles(source, location, loaded=False)  # pickle.load and np.load read it from its first byte
        elif Pickles.GZIP in pickles:
            self.report.notes.append(f"{location}: gzip-compressed inside another file; not scanned "
                                     "(neither torch.load nor pickle.load reads it)")
        elif Pickles.UNMARKED in pickles:
            self.pickles(source, location, loaded=False)  # torch.load reads a file not named .safetensors so
        elif Pickles.OBJECTS in pickles:
            self.object_array(source, location)
        elif len(head) > 1 and head[0] == _PROTO and 2 <= head[1] <= 5:
            self.pickles(source, location, loaded=True)
        elif location.lower().endswith(TEXT_SUFFIXES):
            self.report.notes.append(f"{location}: named as text, and read as a pickle only if it starts with "
                                     "PROTO: no loader unpickles it")
        else:
            self.pickles(source, location, loaded=False)
        if depth <= MAX_DEPTH and not hdf5.sniff(head) and hdf5.after_user_block(source):
            self.h5_config(source, location)  # whatever its user block holds, h5py and Keras read it as HDF5

    def h5_config(self, source: Source, location: str) -> None:
        self.keras_config(lambda: hdf5.model_config(source, location), f"{location}:model_config")

    def object_array(self, source: Source, location: str) -> None:
        """An `.npy` whose dtype holds Python objects holds a pickle after
        its header, which `np.load(allow_pickle=True)` loads (an `.npz`
        record too). The header is read by NumPy's own parser, so the
        dtype is found however it is spelled ('|O', "O", 'object', a field
        of a structured one) and wherever it lies."""
        from numpy.lib import format as npformat

        reader = SeekableReader(source)
        try:
            version = npformat.read_magic(reader)
            length_bytes = 2 if version == (1, 0) else 4
            length = int.from_bytes(source.pread(8, length_bytes), "little")
            if length > NPY_HEADER_BYTES:
                self.report.problems.append(f"{location}: an .npy header of {length} bytes, more than the "
                                            f"{NPY_HEADER_BYTES} read; not scanned")
                return
            read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            _, _, dtype = read_header(reader, max_header_size=NPY_HEADER_BYTES)
        except Exception as e:  # whatever NumPy raises here, np.load raises too, before it unpickles anything
            self.report.notes.append(f"{location}: an .npy header np.load refuses ({type(e).__name__}); "
                                     "nothing in it is unpickled")
            return
        if dtype.hasobject:
            start = reader.tell()
            self.pickles(source.slice(start, max(0, source.size - start)), f"{location} (its objects)", loaded=True)

    def tar(self, source: Source, location: str, depth: int) -> None:
        """A tar's files as extraction leaves them; torch's own tar format
        by torch's rules."""
        try:
            extracted = extract(source, location)
        except FormatError as e:
            self.report.problems.append(e.args[0])
            return
        self.report.problems += extracted.problems
        if "storages" in extracted.by_name:  # torch.load reads it as its pre-1.0 tar format
            self.torch_tar(extracted, location)
        self.report.notes += [f"{location}:{link}: a link to the folder {target}, scanned in its own place"
                              for link, target in extracted.folder_links.items()]
        folders: dict[str, dict[str, Source]] = {}
        for path, data in extracted.files.items():
            if path not in TORCH_TAR or "storages" not in extracted.by_name:
                parent, _, leaf = path.rpartition("/")
                folders.setdefault(parent, {})[leaf] = data
        for parent, files in folders.items():
            self.folder(files, f"{location}:{parent + '/' if parent else ''}", depth + 1)

    def torch_tar(self, extracted: Extracted, location: str) -> None:
        """torch's tar format (before 1.0): `storages` holds a count, then
        for each storage a pickle and its raw bytes, then a pickle of
        views; `tensors` a count, then for each tensor a pickle and its
        raw sizes; `pickle` the object. torch.load unpickles every one."""
        walk = _TarWalk(self, extracted.by_name["storages"], f"{location}:storages")
        for _ in walk.counted():
            size = _element_size(walk.next_pickle())
            if size is None or not walk.skip(8, lambda head: int.from_bytes(head, "little") * size):
                walk.stop("a storage whose type or size cannot be followed")
        walk.next_pickle()  # the storage views
        if "tensors" in extracted.by_name:
            walk = _TarWalk(self, extracted.by_name["tensors"], f"{location}:tensors")
            for _ in walk.counted():
                walk.next_pickle()
                if not walk.skip(4, lambda head: 4 + 16 * struct.unpack("<i", head)[0] + 8):  # ndim, sizes, strides
                    walk.stop("a tensor whose sizes cannot be followed")
        if "pickle" in extracted.by_name:
            self.pickles(extracted.by_name["pickle"], f"{location}:pickle", loaded=True)

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

    def keras_config(self, read, location: str) -> None:
        """The code a Keras config names (formats/keras_code.py), each a
        global of the report: Lambda bytecode always dangerous, an import
        of a module outside Keras judged as a pickle's global is."""
        try:
            config = read()
        except FormatError as e:
            self.report.problems.append(e.args[0])
            return
        if config is None:
            return
        found, problems = code_in(config)
        self.report.problems += [f"{location}: {p}" for p in problems]
        self.report.configs.append(location)
        for code in found:
            g = Global(code.module, code.name)
            verdict = Verdict(False, code.reason) if code.bytecode else classify(g, self.allowed)
            if not verdict.safe and not code.bytecode:
                verdict = Verdict(False, code.reason)
            self.report.found.append(Found(g, f"{location} ({code.where})", verdict))

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
        """The byte items and chunks of a distributed checkpoint: each
        loaded with `torch.load` (items with `weights_only=False`), a zip or
        a bare pickle alike."""
        try:
            metadata = Metadata.read(name, files)
        except FormatError as e:
            self.report.problems.append(f"{e.args[0]} (its shards' items cannot be found without it)")
            return
        reader = Reader(name, files)
        for (fqn, _), info in metadata.storage.items():
            try:
                record = reader.record(fqn, info)
                self.blob(record.data, f"{prefix}{info['relative_path']}@{record.start} ({fqn})", depth + 1)
            except (FormatError, SourceChangedError, OSError) as e:
                self.report.problems.append(str(e))

    # -- pickles
    def pickles(self, source: Source, location: str, loaded: bool) -> None:
        """Pickles back to back from the start of `source`, as long as the
        bytes after one read as another (a legacy torch.save file: its five).
        `loaded`: a loader unpickles the first whatever it holds (a PROTO
        marker, an object array's data), so it is a pickle even if it
        breaks off; otherwise bytes that break off naming no global are no
        pickle. The first MiB is read first, and more (up to the bound)
        only if a pickle runs past it."""
        cap = min(source.size, LIMITS.pickle_bytes)
        data = source.pread(0, min(cap, FIRST_READ))
        audits = _back_to_back(data, loaded, complete=len(data) == source.size)
        if audits and audits[-1].ran_out and len(data) < cap:
            data = source.pread(0, cap)
            audits = _back_to_back(data, loaded, complete=len(data) == source.size)
        for n, result in enumerate(audits):
            label = location if n == 0 else f"{location} (pickle {n + 1})"
            self.record(result, label, truncated=result.ran_out and source.size > len(data))

    def record(self, result: Audit, location: str, truncated: bool) -> None:
        """`truncated`: the pickle runs past the bytes that were read. A
        pickle that does not read to its STOP is a problem: what it would
        do past there is not known, so it is never safe."""
        unseen = result.unseen
        if truncated:
            unseen = unseen or (f"larger than the {plural(LIMITS.pickle_bytes, 'byte')} read (-o max_pickle_bytes raises "
                                "the limit)")
        self.report.pickles.append({"location": location, "globals": [g.path for g in result.globals],
                                    "whole": result.whole, "problem": result.problem})
        for g in result.globals:
            if g.module == UNNAMED:
                verdict = Verdict(False, f"a STACK_GLOBAL at {g.name} whose names could not be followed")
            elif not importable(g):
                self.report.notes.append(f"{location}: names {g.path!r}, which no module answers to (an import "
                                         "of a name with NUL or '/' fails before anything runs)")
                continue
            else:
                verdict = classify(g, self.allowed)
            self.report.found.append(Found(g, location, verdict))
        if unseen:
            self.report.problems.append(f"{location}: not scanned to its end: {unseen}")
        elif not result.whole:
            why = f" ({result.problem})" if result.problem else ""
            self.report.problems.append(f"{location}: the pickle breaks off at byte {result.end}{why}: "
                                        "loading it fails there, and it is no verdict")


class _TarWalk:
    """Pickles and raw runs one after another in a member of torch's tar
    format, each pickle recorded as it is read; raw runs are passed over
    unread, their sizes checked against the member's."""

    def __init__(self, scanner: _Scanner, member: Source, location: str):
        self.scanner, self.member, self.location = scanner, member, location
        self.pos, self.count, self.stopped = 0, 0, False

    def next_pickle(self) -> object:
        """The next pickle's value (None when it is not whole)."""
        if self.stopped:
            return None
        left = self.member.size - self.pos
        data = self.member.pread(self.pos, min(left, FIRST_READ))
        result = audit(data)
        if result.ran_out and len(data) < min(left, LIMITS.pickle_bytes):
            data = self.member.pread(self.pos, min(left, LIMITS.pickle_bytes))
            result = audit(data)
        self.count += 1
        label = f"{self.location} (pickle {self.count} at byte {self.pos})"
        self.scanner.record(result, label, truncated=result.ran_out and len(data) < left)
        if not result.whole:
            self.stopped = True
            return None
        self.pos += result.end
        return result.value

    def counted(self):
        """As many turns as the count pickled first says (each ends the
        walk early if it stops)."""
        count = self.next_pickle()
        if type(count) is not int or count < 0:
            self.stop("its count is not a number")
            return
        for _ in range(count):
            if self.stopped or self.pos >= self.member.size:
                return
            yield

    def skip(self, head_size: int, length_of) -> bool:
        """Pass raw bytes: `head_size` bytes, then `length_of(head)` more."""
        head = self.member.pread(self.pos, head_size)
        try:
            length = length_of(head) if len(head) == head_size else -1
        except struct.error:
            length = -1
        if length < 0 or self.pos + head_size + length > self.member.size:
            return False
        self.pos += head_size + length
        return True

    def stop(self, why: str) -> None:
        if not self.stopped:
            self.scanner.report.problems.append(f"{self.location}: {why} at byte {self.pos}: the pickles after it "
                                                "are not scanned")
        self.stopped = True


def _element_size(args: object) -> int | None:
    """Bytes per element of a storage of torch's tar format, from its
    (key, location, storage type) pickle."""
    if not (isinstance(args, tuple) and len(args) == 3 and isinstance(args[2], Global)):
        return None
    dtype = STORAGE_DTYPES.get(args[2].name) if args[2].module == "torch" else None
    return BY_TORCH[dtype].bits // 8 if dtype else None


def _pickles(head: bytes) -> set[Pickles]:
    """Where loaders find pickles in a file that starts with `head`, as the
    formats that sniff it say (formats/base.py `Pickles`), whichever of
    them a mount would open: the scan follows the loaders' order."""
    return {fmt.pickles for fmt in file_formats(head) if fmt.pickles is not None}


def importable(g: Global) -> bool:
    """Whether a global's module could be imported at all: a name holding
    NUL or '/' (what bytes that are no pickle spell when read as one) finds
    no module, and the import fails before any code runs."""
    return g.module == UNNAMED or (bool(g.module) and "\0" not in g.module and "/" not in g.module)


def _back_to_back(data: bytes, loaded: bool, complete: bool) -> list[Audit]:
    """The audits of the pickles from the start of `data`, up to the first
    that is not whole. `complete`: `data` is the whole of the file."""
    audits: list[Audit] = []
    start, count = 0, None
    while start < len(data) and (count is None or len(audits) < count):
        result = audit(data, start)
        clean_stop = result.whole and not result.problem  # not a STOP on an empty stack, which pickle.load refuses
        is_pickle = (loaded and not audits) or count is not None or clean_stop or any(map(importable, result.globals))
        if not is_pickle and (complete or not result.ran_out):
            break  # no pickle: pickle.load stops where the reader stopped, before importing anything
        audits.append(result)
        if len(audits) == 1 and type(result.value) is int and result.value == torchlegacy.MAGIC_NUMBER:
            count = 5  # torch.load reads the legacy format's five: magic, protocol, system info, object, storage keys
        if not result.whole:
            break
        start = result.end
    return audits


def text(report: Report, verbose: bool = False) -> str:
    """What `ckptfs scan` prints."""
    pickles = len(report.pickles)
    names = len({f.glob for f in report.found})
    counted = f"{names} global{'s' if names != 1 else ''} named by {pickles} pickle{'s' if pickles != 1 else ''}"
    if report.configs:
        counted += f" and {plural(len(report.configs), 'Keras config')}"
    dangerous = report.dangerous
    if dangerous:
        outside = len({f.glob for f in dangerous})
        head = (f"{report.source}: DANGEROUS: {outside} global{'s' if outside != 1 else ''} outside the allowlist "
                f"({counted}; nothing was imported or run)")
    elif report.problems:
        head = f"{report.source}: not scanned completely, no verdict ({counted} so far, all on the allowlist)"
    elif not pickles and not report.configs:
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
