"""gzip-compressed tars (NeMo before 1.7) with random access.

A gzip stream cannot be entered in the middle, so the first mount inflates it
once, whole, front to back: `tarfile` lists the members while rapidgzip
records seek points and checks the stream's CRC and length at its end, and a
CRC-32 of each span of the inflated bytes is taken (`sources.gzip`). Nothing
is served from a stream that failed its check. Later reads start at the
nearest seek point, and each span they inflate is checked against its
CRC-32. The index, the span checksums and the member list are kept on disk,
keyed by the source's device, inode, size and mtime, so the next mount of
the same file reads none of them again; so are the bytes the tree's build
read (`KEY.reads`, sources/gzip_reads.py), which the next build is served
from instead of inflating a span for each.

Reads go through `sources.gzip.GzipSource`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import tempfile

from ..errors import FormatError
from ..humanize import plural
from ..limits import LIMITS
from ..sources import gzip_reads
from ..sources.base import Source
from ..sources.gzip import GzipSource, Inflated, SpanSums, open_gzip
from ..tree.checkpoint import Checkpoint
from . import tar
from .base import FileFormat, Opening, Pickles, WriterKind

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
CACHE_VERSION = 4


def sniff(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC


def open_gzip_tar(compressed: Source, st: os.stat_result, cache_dir: str) -> Checkpoint:
    """The tree of a gzip tar. The reads its build makes of the inflated
    stream are kept beside the seek index (`sources.gzip_reads`), and the
    next mount builds its tree from them, inflating nothing."""
    stem = _stem(compressed, st, cache_dir)
    source, members, notes = open_tar_stream(compressed, st, cache_dir)
    # a remote file's version (its ETag) is in the key already: no requests for its ends
    fingerprint = 0 if getattr(compressed, "identity", "") else gzip_reads.fingerprint(compressed)
    source.record_reads(_load_reads(stem, source.size, fingerprint), fingerprint)
    try:
        checkpoint = tar.build("nemo (tar.gz)", source, members, st, notes)
    finally:
        reads = source.recorded()
    if reads is not None:
        _save_file(stem + ".reads", reads.to_bytes())
    return checkpoint


def _stem(compressed: Source, st: os.stat_result, cache_dir: str) -> str:
    return os.path.join(cache_dir, "gzindex", _cache_key(st, getattr(compressed, "identity", "")))


def _load_reads(stem: str, size: int, fingerprint: int) -> gzip_reads.ReadLog | None:
    """The reads kept for this file's tree, or None (missing, damaged, of
    another file or version: the tree is built from the stream, and the
    file written anew)."""
    try:
        with open(stem + ".reads", "rb") as f:
            if os.fstat(f.fileno()).st_size > gzip_reads.MAX_FILE:
                raise ValueError("a read log larger than any kept")
            blob = f.read(gzip_reads.MAX_FILE + 1)
        return gzip_reads.parse(blob, size, fingerprint)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.info("%s.reads: not used (%s)", stem, e)
        return None


def open_tar_stream(compressed: Source, st: os.stat_result, cache_dir: str) -> tuple[GzipSource, list[tar.Member], list[str]]:
    """The inflated tar stream of a gzip file with random access, its
    members and notes on members skipped; from the cache when it has them.
    (A remote file is read whole, once, to build the index.)"""
    stem = _stem(compressed, st, cache_dir)
    cached = _load_cached(stem)
    if cached is not None:
        index, doc, sums, members = cached
        notes, size = doc["notes"], doc["size"]
    else:
        index, size, sums, members, notes = _scan(compressed)
        _save(stem, index, {"size": size, "spans": base64.b64encode(sums.to_bytes()).decode(),
                            "members": [m.to_json() for m in members], "notes": notes})
    return GzipSource(compressed, size, index, sums), members, list(notes)


def _scan(compressed: Source):
    """Inflate once, whole: list the tar's members, build the seek index,
    check the stream's CRC and take its span checksums."""
    path = compressed.path
    try:
        with open_gzip(compressed) as reader:
            stream = Inflated(reader, SpanSums(), LIMITS.header_bytes)
            head = stream.read(tar.BLOCK)
            if len(head) < tar.BLOCK:
                raise FormatError(path, f"gzip stream is truncated (it inflates to {plural(len(head), 'byte')})")
            if not tar.sniff(head):
                raise FormatError(path, "gzip file that does not hold a tar archive")
            stream.seek(0)
            members, notes = tar.list_members(stream, path)
            size = stream.to_end()
            index = io.BytesIO()
            reader.export_index(index)
    except (OSError, ValueError, EOFError, RuntimeError) as e:  # rapidgzip says a bad CRC or length with RuntimeError
        raise FormatError(path, f"gzip stream is truncated or corrupt ({e})") from None
    return index.getvalue(), size, stream.sums, members, notes


def _cache_key(st: os.stat_result, identity: str = "") -> str:
    """A local file by its device, inode, size and time; a remote one also by
    its `identity` (its URL and version)."""
    ident = f"v{CACHE_VERSION}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" + (f":{identity}" if identity else "")
    return hashlib.sha256(os.fsencode(ident)).hexdigest()[:32]  # a URL may hold a path's bytes that are not UTF-8


def _load_cached(stem: str) -> tuple[bytes, dict, SpanSums, list[tar.Member]] | None:
    """The index, the member list and the span checksums kept for this
    file, or None (missing, or kept by another version: indexed again)."""
    try:
        with open(stem + ".json") as f:
            doc = json.load(f)
        with open(stem + ".gzidx", "rb") as f:
            index = f.read()
        members = [tar.Member(**m) for m in doc["members"]]
        if not isinstance(doc["notes"], list):
            raise TypeError("notes that are not a list")
        return index, doc, SpanSums.from_bytes(base64.b64decode(doc["spans"]), doc["size"]), members
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(stem: str, index: bytes, doc: dict) -> None:
    """Write the index, then the member list, each atomically; a cache that
    cannot be written only costs the next mount its speed."""
    try:
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        _atomic(stem + ".gzidx", index)
        _atomic(stem + ".json", json.dumps(doc).encode())
    except OSError as e:
        log.warning("cannot keep the gzip index in %s: %s", os.path.dirname(stem), e)


def _save_file(path: str, data: bytes) -> None:
    try:
        _atomic(path, data)
    except OSError as e:
        log.warning("cannot keep %s: %s", path, e)


def _atomic(final: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException:
        os.unlink(tmp)
        raise


def open_file(opening: Opening) -> Checkpoint:
    return open_gzip_tar(opening.source, opening.stat, opening.cache_dir)


FORMAT = FileFormat("nemo (gzip tar)", sniff, open_file, "NeMo .nemo archives (gzip tar, older NeMo)", WriterKind.FILE,
                    pickles=Pickles.GZIP)
