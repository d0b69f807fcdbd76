"""Any protocol fsspec knows and ckptfs has no store of its own for
(memory://, file://, gs://, az://, ssh://, webdav://, ...), read-only,
with no code of ours per protocol. fsspec is imported only when such a
URL is used.

An object is pinned by what the filesystem's `info()` says identifies its
version: a generation, version id, ETag or checksum where it gives one,
else its modification time (and inode). Each range read (`cat_file`) is
followed by an `info()` of the object: a version other than the pinned
one fails the read in the same line as S3's ETag, so bytes of two
versions are never served as one. A prefix lists with `walk`, links not
followed, every name checked by the name rule where the directory takes
it (sources/remote.py), at most MAX_LISTED objects.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime

from .base import MAX_LISTED, RemoteError, RemoteObject, Store, changed, check_length, native_schemes

#: the keys of `info()` that name a version, the strongest first: the first found pins it
VERSIONS = ("generation", "version_id", "VersionId", "ETag", "etag", "md5Hash", "crc32c", "checksum")
#: where there is none of those, these together (the first time found, and an inode)
TIMES = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


class FsspecStore(Store):
    """One fsspec protocol, read-only."""

    kind = "an fsspec filesystem (read-only)"

    def __init__(self, protocol: str):
        self.protocol = protocol

    @classmethod
    def of(cls, protocol: str, url: str) -> FsspecStore:
        """The store of `protocol`, or the one line that says why there is none."""
        try:
            import fsspec
        except ImportError:
            raise RemoteError(f"{url}: no store for {protocol}://; ckptfs reads {', '.join(native_schemes())} "
                              "and, with fsspec installed (pip install fsspec), any protocol fsspec knows") from None
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise RemoteError(f"{url}: no store for {protocol}://; ckptfs reads {', '.join(native_schemes())} and, "
                              f"through fsspec, {', '.join(f'{p}://' for p in installed())}") from None
        except ImportError as e:
            raise RemoteError(f"{url}: {protocol}:// needs a package that is not installed: {e}") from None
        return cls(protocol)

    def _fs(self, url: str):
        from fsspec.core import url_to_fs

        return url_to_fs(url)

    def stat(self, url: str) -> RemoteObject:
        fs, path = self._fs(url)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise RemoteError(f"{url}: no such object") from None
        except (OSError, ValueError) as e:
            raise RemoteError(f"{url}: {e}") from None
        if info.get("type") == "directory":
            raise RemoteError(f"{url}: a folder, not an object (end it with / to mount it as a directory)")
        return _object(url, info)

    def folder(self, url: str) -> tuple[str, dict[str, RemoteObject]]:
        """Every file below the prefix `url` by relative path (links are
        not followed: a folder of objects has none)."""
        fs, path = self._fs(url)
        root, base = path.rstrip("/"), url if url.endswith("/") else url + "/"
        found: dict[str, RemoteObject] = {}
        try:
            for _, folders, files in fs.walk(root, detail=True, on_error="raise"):
                for name in [n for n, info in folders.items() if info.get("islink")]:
                    del folders[name]  # pruned: walk goes into what is left
                for info in files.values():
                    full = info.get("name")
                    if not isinstance(full, str) or not full.startswith(root + "/") or info.get("islink") \
                            or info.get("type") != "file":
                        continue  # a server's answer is checked like a file's
                    relative = full[len(root) + 1:]
                    found[relative] = _object(base + relative, info)
                    if len(found) > MAX_LISTED:
                        raise RemoteError(f"{url}: more than {MAX_LISTED:,} objects under this prefix; mount a "
                                          "prefix below it")
        except FileNotFoundError:
            return url, {}
        except (OSError, ValueError) as e:
            raise RemoteError(f"{url}: {e}") from None
        return url, found

    def get(self, obj: RemoteObject, start: int, end: int) -> bytes:
        fs, path = self._fs(obj.url)
        try:
            data = fs.cat_file(path, start, end)
            now = fs.info(path)
        except FileNotFoundError:
            raise changed(obj.url, "version", obj.version) from None
        if _version(now) != obj.version or now.get("size") != obj.size:
            raise changed(obj.url, "version", obj.version)
        check_length(obj, start, end, data)
        return data


def _object(url: str, info: dict) -> RemoteObject:
    size = info.get("size")
    if not isinstance(size, int) or size < 0:
        raise RemoteError(f"{url}: the filesystem gives no size; ckptfs reads byte ranges of a known size")
    return RemoteObject(url, size, _version(info), _seconds(next((info[k] for k in TIMES if k in info), None)))


def _version(info: dict) -> str:
    """What pins an object: its strongest version key, else its time (and inode)."""
    for key in VERSIONS:
        if info.get(key) not in (None, ""):
            return f"{key} {info[key]}"
    when = next((f"{key} {_text(info[key])}" for key in TIMES if info.get(key) is not None), "")
    return ", ".join(part for part in (when, f"ino {info['ino']}" if info.get("ino") else "") if part)


def _text(value) -> str:
    """A time as one text, however the filesystem gave it (`ls` and `info`
    of one filesystem may differ: a float, a datetime)."""
    return repr(_seconds(value)) if isinstance(value, (datetime, int, float)) else str(value)


def _seconds(value) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def installed() -> list[str]:
    """The protocols fsspec serves here without a store of ours: its own
    that need no other package, and those of packages that are installed."""
    from fsspec.registry import known_implementations, registry

    ours = {scheme.removesuffix("://") for scheme in native_schemes()}
    found = set(registry)
    for protocol, entry in known_implementations.items():
        top = entry["class"].split(".")[0]
        if (top == "fsspec" and "err" not in entry) or (top != "fsspec" and importlib.util.find_spec(top)):
            found.add(protocol)
    return sorted(found - ours - {"ckpt"})
