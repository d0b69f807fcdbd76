"""gzip-compressed tars (NeMo before 1.7) with random access.

A gzip stream cannot be entered in the middle, so the first mount inflates it
once, sequentially: `tarfile` lists the members while indexed_gzip records a
seek point every few MiB. Later reads start at the nearest seek point. The
index and the member list are kept on disk, keyed by the source's device,
inode, size and mtime, so the next mount of the same file reads neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import indexed_gzip

from ..checkpoint import Checkpoint
from ..errors import FormatError
from ..sources import LockedSource
from . import tar

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
SPACING = 4 << 20  # inflate at most this much to reach any byte
READ_BUFFER = 1 << 20
CACHE_VERSION = 2


def sniff(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC


def open_gzip_tar(path: str, st: os.stat_result, cache_dir: str) -> Checkpoint:
    stem = os.path.join(cache_dir, "gzindex", _cache_key(st))
    cached = _load_cached(stem)
    try:
        if cached is not None:
            reader = _open(path, index_file=stem + ".gzidx")
            size, members, notes = cached["size"], [tar.Member(**m) for m in cached["members"]], cached["notes"]
        else:
            reader = _open(path)
            head = reader.read(tar.BLOCK)
            if not tar.sniff(head):
                raise FormatError(path, "gzip file that does not hold a tar archive")
            reader.seek(0)
            members, notes = tar.list_members(reader, path)
            reader.build_full_index()
            size = reader.seek(0, os.SEEK_END)
            _save(stem, reader, size, members, notes)
    except (OSError, EOFError) as e:  # indexed_gzip raises OSError subclasses
        raise FormatError(path, f"gzip stream is truncated or corrupt ({e or type(e).__name__})") from None
    source = LockedSource(path, size, reader)
    return tar.build("nemo (tar.gz)", source, members, st, list(notes))


def _open(path: str, index_file: str | None = None):
    return indexed_gzip.IndexedGzipFile(
        path, spacing=SPACING, drop_handles=False, index_file=index_file, buffer_size=READ_BUFFER
    )


def _cache_key(st: os.stat_result) -> str:
    ident = f"v{CACHE_VERSION}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _load_cached(stem: str) -> dict | None:
    try:
        with open(stem + ".json") as f:
            cached = json.load(f)
        if os.path.exists(stem + ".gzidx"):
            return cached
    except (OSError, ValueError):
        pass
    return None


def _save(stem: str, reader, size: int, members: list[tar.Member], notes: list[str]) -> None:
    """Write the index, then the member list, each atomically; a cache that
    cannot be written only costs the next mount its speed."""
    try:
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        _atomic(stem + ".gzidx", lambda tmp: reader.export_index(tmp))
        doc = {"size": size, "members": [m.to_json() for m in members], "notes": notes}
        _atomic(stem + ".json", lambda tmp: _write_json(tmp, doc))
    except OSError as e:
        log.warning("cannot keep the gzip index in %s: %s", os.path.dirname(stem), e)


def _atomic(final: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f)
