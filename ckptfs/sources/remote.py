"""Checkpoints on object storage, web servers and the Hugging Face Hub:
`s3://bucket/key`, a prefix `s3://bucket/folder/` as a directory,
`https://host/file`, and `hf://org/name[@revision]` as a directory (its
revision pinned to the commit; HF_ENDPOINT and HF_TOKEN as the Hub's own
tools read them).

Each object is pinned when it is first listed or asked about: its size and
version (S3's ETag, HTTP's ETag). Every range request carries the version
(`If-Match`) and every reply is checked (206, its `Content-Range`, its
ETag), so an object replaced while mounted fails the read with
SourceChangedError (EIO, one log line), and bytes of two versions are never
mixed. Reads go through the mount's PageCache; credentials are the storage
library's own (environment, config files) and never logged.

Every request that reads (HEAD, LIST, GET, the Hub's API) is watched for
progress (sources/stall.py): one that makes none for `-o stall_timeout=`
seconds is dropped with its connection and asked once more, on another
connection, then fails with RemoteError naming the URL and the bytes.

fsspec and its filesystems (s3fs; aiohttp for HTTP) are the optional
`remote` extra: imported only when a URL is opened.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import stat as stat_module
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from ..errors import CkptfsError, SourceChangedError
from ..humanize import plural
from . import pathnames
from .base import Source
from .directory import Directory
from .pagecache import DEFAULT_BLOCK, DEFAULT_DISK, DEFAULT_MEMORY, DiskCache, PageCache
from .stall import DEFAULT_SECONDS, PROGRESS, Stalled, Watchdog

SCHEMES = ("s3://", "http://", "https://", "hf://")
HF_ENDPOINT = "https://huggingface.co"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
log = logging.getLogger(__name__)
#: the longest Hub API answer read (a listing of 100,000 files is about 20 MB)
MAX_API_ANSWER = 256 << 20
#: the most objects a prefix's listing is read for (a server may say "truncated" for ever), in pages of LIST_PAGE
MAX_LISTED, LIST_PAGE = 10_000_000, 1000


def is_url(path: str) -> bool:
    return path.startswith(SCHEMES)


class RemoteError(CkptfsError):
    """A remote source cannot be reached or read."""


class RangesIgnored(RemoteError):
    """A web server that sends the whole object when asked for a range (as
    `python -m http.server` does), or says it serves none."""

    def __init__(self, url: str, what: str):
        super().__init__(f"{url}: the server ignores range requests ({what}); mount it with -o fetch=whole "
                         "to download it once into the disk cache and read it there")


@dataclass(frozen=True)
class RemoteObject:
    """One object as it was when pinned: where, how big, which version."""

    url: str
    size: int
    version: str  # the ETag (quotes kept), "" where the server gives none
    mtime: float

    @property
    def key(self) -> str:
        """The cache's name for this version of the object."""
        return f"{self.url}\0{self.version}"

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of this version: one range request."""
        try:
            return store_for(self.url).get(self, start, end)
        except CkptfsError:
            raise
        except Exception as e:  # the network's own (timeouts, resets, refused connections)
            raise RemoteError(f"{self.url}: bytes {start}-{end - 1}: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- stores


def _missing(what: str) -> RemoteError:
    return RemoteError(f"{what} needs the remote extra: pip install -e '.[remote]' in a clone of ckptfs")


class HttpStore:
    """https:// and http://: HEAD for the size and ETag, ranged GETs."""

    def __init__(self):
        try:
            import aiohttp
            from fsspec.asyn import sync
            from fsspec.implementations.http import HTTPFileSystem
        except ImportError:
            raise _missing("an http(s):// source") from None
        # no total timeout (aiohttp's is 300 s): a transfer that keeps arriving
        # may take as long as it takes; one that stalls is cut by its Watchdog
        client = {"timeout": aiohttp.ClientTimeout(total=None)}
        self.fs, self.sync = HTTPFileSystem(skip_instance_cache=True, client_kwargs=client), sync

    def stat(self, url: str) -> RemoteObject:
        async def head(watch: Watchdog):
            session = await self.fs.set_session()
            async with session.head(url, allow_redirects=True) as r:
                return r.status, _lower(r.headers)

        status, headers = _watched(self, url, head)
        if status == 404:
            raise RemoteError(f"{url}: no such object (HTTP 404)")
        if status >= 400:
            raise RemoteError(f"{url}: HTTP {status}")
        size = headers.get("content-length")
        if size is None or not size.isdigit():
            raise RemoteError(f"{url}: the server gives no size (Content-Length); ckptfs reads byte ranges of a known size")
        if headers.get("accept-ranges", "").lower() == "none" and SETTINGS.fetch != "whole":
            raise RangesIgnored(url, "it says Accept-Ranges: none")
        return RemoteObject(url, int(size), headers.get("etag", ""), _http_time(headers.get("last-modified")))

    def get(self, obj: RemoteObject, start: int, end: int) -> bytes:
        headers = {"Range": f"bytes={start}-{end - 1}", **_hub_auth(obj.url)}
        if obj.version and not obj.version.startswith("W/"):  # a weak ETag never matches If-Match: the reply's is checked
            headers["If-Match"] = obj.version

        async def get(watch: Watchdog):
            session = await self.fs.set_session()
            async with session.get(obj.url, headers=headers) as r:
                watch.progress()
                if r.status != 206:  # never read a whole object that was asked for a range
                    return r.status, _lower(r.headers), b""
                return r.status, _lower(r.headers), await _body(r, watch, end - start)

        status, reply, data = _watched(self, f"{obj.url}: bytes {start}-{end - 1}", get)
        if status == 412:
            raise SourceChangedError(f"{obj.url}: the object changed since it was mounted (its ETag is no longer "
                                     f"{obj.version}); remount to read the new one")
        if status == 200:
            raise RangesIgnored(obj.url, f"asked for bytes {start}-{end - 1}, it sent the whole object")
        if status != 206:
            raise RemoteError(f"{obj.url}: HTTP {status} for bytes {start}-{end - 1}")
        _check_reply(obj, start, end, reply.get("content-range", ""), reply.get("etag", ""), data)
        return data

    def download(self, obj: RemoteObject, fd: int) -> None:
        """The whole of the pinned version into the file `fd`, with one GET
        (`-o fetch=whole`): checked as a range is (its status, its length
        against the pinned size, its ETag), and never more than that size
        read. A second try, after a stall, starts the file again."""
        headers = _hub_auth(obj.url)
        if obj.version and not obj.version.startswith("W/"):
            headers["If-Match"] = obj.version

        async def get(watch: Watchdog):
            os.ftruncate(fd, 0)
            session = await self.fs.set_session()
            async with session.get(obj.url, headers=headers) as r:
                watch.progress()
                reply = _lower(r.headers)
                if r.status != 200 or reply.get("content-length", str(obj.size)) != str(obj.size):
                    return r.status, reply, 0
                written = credited = 0
                while written <= obj.size and (chunk := await r.content.readany()):
                    os.pwrite(fd, chunk[: max(0, obj.size - written)], written)
                    written += len(chunk)
                    if written - credited >= PROGRESS:
                        credited = written
                        watch.progress()
                if written > obj.size:
                    r.close()
                return r.status, reply, written

        status, reply, written = _watched(self, f"{obj.url}: the whole object", get)
        if status == 412:
            raise SourceChangedError(f"{obj.url}: the object changed since it was mounted (its ETag is no longer "
                                     f"{obj.version}); remount to read the new one")
        if status != 200:
            raise RemoteError(f"{obj.url}: HTTP {status} for the whole object")
        etag, length = reply.get("etag", ""), reply.get("content-length")
        if obj.version and etag and etag != obj.version:
            raise SourceChangedError(f"{obj.url}: the object changed since it was mounted (ETag {etag}, mounted "
                                     f"{obj.version}); remount to read the new one")
        if length is not None and length != str(obj.size):
            raise SourceChangedError(f"{obj.url}: the reply is of {length} bytes (Content-Length), the object "
                                     f"was {obj.size} when mounted")
        if written != obj.size:
            held = f"more than {obj.size}" if written > obj.size else str(written)
            raise SourceChangedError(f"{obj.url}: the reply holds {held} bytes, the object was {obj.size} "
                                     "when mounted")

    def json(self, url: str):
        """A JSON document (a Hub API answer): one GET."""
        async def get(watch: Watchdog):
            session = await self.fs.set_session()
            async with session.get(url, headers=_hub_auth(url)) as r:
                watch.progress()
                return r.status, await _body(r, watch, MAX_API_ANSWER)

        status, body = _watched(self, url, get)
        if len(body) > MAX_API_ANSWER:
            raise RemoteError(f"{url}: an answer of more than {MAX_API_ANSWER:,} bytes; a repository's listing is far less")
        if status in (401, 403, 404):
            raise RemoteError(f"{url}: HTTP {status} (no such repository or revision, or it needs a token: HF_TOKEN)")
        if status != 200:
            raise RemoteError(f"{url}: HTTP {status}")
        try:
            return json.loads(body)
        except ValueError:
            raise RemoteError(f"{url}: the answer is not JSON") from None


async def _body(reply, watch: Watchdog, most: int | None = None) -> bytes:
    """An aiohttp reply's body (at most `most` + 1 bytes: one more than
    asked for is enough to refuse it). A body that fails or stalls
    takes its connection with it: never handed to another request."""
    try:
        return await watch.body(reply.content.readany, most)
    except BaseException:
        reply.close()
        raise


class StalledTwice(RemoteError, Stalled):
    """A request that stalled, and stalled again on another connection."""


def _watched(store, what: str, request):
    """`request(watch)`, a coroutine function, run on the store's event
    loop under a Watchdog of `-o stall_timeout` seconds. After a stall it
    is asked once more: the stalled connection was closed, so the second
    try goes out on another. A second stall is a RemoteError naming `what`
    (the URL, and the bytes)."""
    async def attempt():
        async with Watchdog(SETTINGS.stall) as watch:
            return await request(watch)

    try:
        return store.sync(store.fs.loop, attempt)
    except Stalled as e:
        log.debug("%s: %s; asking once more on another connection", what, e)
    try:
        return store.sync(store.fs.loop, attempt)
    except Stalled as e:
        raise StalledTwice(f"{what}: {e}, twice (the second time on another connection)") from None


def _hub_auth(url: str) -> dict[str, str]:
    """The Hub token (HF_TOKEN), sent to the Hub's own host only."""
    token = os.environ.get("HF_TOKEN")
    endpoint = os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")
    return {"Authorization": f"Bearer {token}"} if token and url.startswith(endpoint + "/") else {}


def _lower(headers) -> dict[str, str]:
    """HTTP headers by lower-case name (servers and aiohttp spell them as they like: ETag, Etag)."""
    return {name.lower(): value for name, value in headers.items()}


class S3Store:
    """s3:// through s3fs: the endpoint, region and credentials are boto's
    (AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws/...)."""

    def __init__(self):
        try:
            import s3fs
            from fsspec.asyn import sync
        except ImportError:
            raise _missing("an s3:// source") from None
        self.fs, self.sync = s3fs.S3FileSystem(skip_instance_cache=True), sync

    def _object(self, url: str, info: dict) -> RemoteObject:
        modified = info.get("LastModified")
        return RemoteObject(url, int(info["size"]), str(info.get("ETag", "")),
                            modified.timestamp() if hasattr(modified, "timestamp") else 0.0)

    def stat(self, url: str) -> RemoteObject:
        async def head(watch: Watchdog):
            return await self.fs._info(url)

        try:
            info = _watched(self, url, head)
        except FileNotFoundError:
            raise RemoteError(f"{url}: no such object") from None
        except (OSError, ValueError) as e:
            raise RemoteError(f"{url}: {e}") from None
        if info.get("type") != "file":
            raise RemoteError(f"{url}: a prefix, not an object (end it with / to mount it as a directory)")
        return self._object(url, info)

    def listing(self, url: str) -> dict[str, RemoteObject]:
        """Every object below the prefix `url` (ending in /), by relative
        path: one LIST, a request for each page of a thousand keys."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        found: dict[str, RemoteObject] = {}
        more: dict[str, str] = {}
        pages = 0
        while True:
            try:
                page = _watched(self, url, functools.partial(self._list_page, bucket, prefix, more))
            except (OSError, ValueError) as e:
                raise RemoteError(f"{url}: {e}") from None
            for item in page.get("Contents", ()):
                key, size = item.get("Key"), item.get("Size")
                if not isinstance(key, str) or not key.startswith(prefix) or not isinstance(size, int) or size < 0:
                    continue  # a server's answer is checked like a file's
                if key.endswith("/") and not size:
                    continue  # a folder marker (what "Create folder" makes), not a file
                modified = item.get("LastModified")
                found[key[len(prefix):]] = RemoteObject(
                    f"s3://{bucket}/{key}", size, str(item.get("ETag", "")),
                    modified.timestamp() if hasattr(modified, "timestamp") else 0.0)
            if not page.get("IsTruncated"):
                return found
            if not page.get("NextContinuationToken"):
                raise RemoteError(f"{url}: the listing says it goes on, but not where")
            pages += 1
            if pages * LIST_PAGE > MAX_LISTED:
                raise RemoteError(f"{url}: more than {MAX_LISTED:,} objects under this prefix; mount a prefix below it")
            more = {"ContinuationToken": page["NextContinuationToken"]}

    async def _list_page(self, bucket: str, prefix: str, more: dict[str, str], watch: Watchdog) -> dict:
        return await self.fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **more, **self.fs.req_kw)

    def get(self, obj: RemoteObject, start: int, end: int) -> bytes:
        bucket, key, _ = self.fs.split_path(obj.url)
        pin = {"IfMatch": obj.version} if obj.version else {}

        async def get(watch: Watchdog):
            reply = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                                           **pin)
            watch.progress()
            try:  # closed, its connection with it, however the body ends
                return reply, await watch.body(functools.partial(reply["Body"].read, PROGRESS), end - start)
            finally:
                reply["Body"].close()

        try:
            reply, data = _watched(self, f"{obj.url}: bytes {start}-{end - 1}", get)
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                raise SourceChangedError(f"{obj.url}: the object changed since it was mounted (its ETag is no "
                                         f"longer {obj.version}); remount to read the new one") from None
            raise RemoteError(f"{obj.url}: {e}") from None
        _check_reply(obj, start, end, reply.get("ContentRange", ""), reply.get("ETag", ""), data)
        return data

    # Writing: one PUT, or a multipart upload whose parts are invisible until
    # it completes. Both carry a condition the store checks at that moment,
    # when the object appears: `If-None-Match: *` (the key is new) or
    # `If-Match: ETAG` (the key still holds the version that was mounted).

    def check_conditional_writes(self, url: str) -> None:
        """RemoteError unless this botocore can send `If-Match` and
        `If-None-Match` with S3's writes (its models have them since late
        2024): without them a write would not be safe."""
        import botocore.session

        model = botocore.session.get_session().get_service_model("s3")
        for operation in ("PutObject", "CompleteMultipartUpload"):
            if not {"IfMatch", "IfNoneMatch"} <= set(model.operation_model(operation).input_shape.members):
                raise RemoteError(f"{url}: this botocore ({botocore.__version__}) cannot make S3's conditional "
                                  "writes, which keep an upload from overwriting what it should not: pip install -U "
                                  "botocore aiobotocore s3fs")

    def exists(self, url: str) -> bool:
        """Whether an object or a prefix is at `url`."""
        async def look(watch: Watchdog):
            return await self.fs._exists(url)

        try:
            return bool(_watched(self, url, look))
        except (OSError, ValueError) as e:
            raise RemoteError(f"{url}: {e}") from None

    def put(self, url: str, data: bytes, condition: dict[str, str]) -> None:
        bucket, key, _ = self.fs.split_path(url)
        self._write(url, "put_object", Bucket=bucket, Key=key, Body=data, **condition)

    def start_upload(self, url: str) -> str:
        bucket, key, _ = self.fs.split_path(url)
        return self._write(url, "create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]

    def upload_part(self, url: str, upload: str, number: int, data: bytes) -> str:
        bucket, key, _ = self.fs.split_path(url)
        reply = self._write(url, "upload_part", Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)
        return reply["ETag"]

    def complete_upload(self, url: str, upload: str, etags: list[str], condition: dict[str, str]) -> None:
        bucket, key, _ = self.fs.split_path(url)
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, 1)]
        self._write(url, "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload,
                    MultipartUpload={"Parts": parts}, **condition)

    def abort_upload(self, url: str, upload: str) -> None:
        bucket, key, _ = self.fs.split_path(url)
        self._write(url, "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload)

    def delete(self, url: str) -> None:
        """Remove an object this process made (an upload given up); quietly,
        since it runs while another error is on its way to the user."""
        bucket, key, _ = self.fs.split_path(url)
        with contextlib.suppress(RemoteError):
            self._write(url, "delete_object", Bucket=bucket, Key=key)

    def _write(self, url: str, method: str, **arguments) -> dict:
        async def call():
            return await self.fs._call_s3(method, **arguments)

        try:
            return self.sync(self.fs.loop, call)
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                raise PreconditionFailed(url) from None
            raise RemoteError(f"{url}: {e}") from None


class PreconditionFailed(RemoteError):
    """A conditional write found the key other than expected: taken, or
    holding another version than the one mounted."""


def identity(url: str) -> dict:
    """What an object (or a prefix, a Hub folder) is now: a remote
    source's `source_identity`, to tell whether it changed since it was
    mounted. One request: a HEAD, a LIST or the Hub's API."""
    try:
        if url.startswith("hf://"):
            return _listing_identity(url, hub_listing(url)[1])
        store = store_for(url)
        if url.endswith("/"):
            return _listing_identity(url, store.listing(url) if isinstance(store, S3Store) else {})
        return _object_identity(store.stat(url))
    except CkptfsError:
        raise
    except Exception as e:  # the network's own
        raise RemoteError(f"{url}: {type(e).__name__}: {e}") from None


def pinned_identity(url: str) -> dict | None:
    """The identity of `url` as this process opened it (`open_url`), with
    no request: what a mount's tree was read from. None if not opened."""
    return _PINNED.get(url)


def _object_identity(obj: RemoteObject) -> dict:
    return {"url": obj.url, "size": obj.size, "version": obj.version}


def _listing_identity(url: str, objects: dict[str, RemoteObject]) -> dict:
    """A prefix has no version of its own: its objects' names, sizes and
    versions, hashed."""
    listed = sorted((name, o.size, o.version) for name, o in objects.items())
    digest = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    return {"url": url, "size": sum(o.size for o in objects.values()), "version": digest}


def hub_listing(url: str) -> tuple[str, dict[str, RemoteObject]]:
    """`hf://[datasets/]ORG/NAME[@REVISION][/FOLDER/]`: (the URL with the
    revision pinned to its commit, every file below FOLDER by relative path),
    from one API request. Files are read from the commit's `resolve/` URLs,
    which never change: no ETag to pin."""
    rest = url[len("hf://"):]
    kind = "datasets" if rest.startswith("datasets/") else "models"
    rest = rest.removeprefix("datasets/")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise RemoteError(f"{url}: name a repository, hf://ORG/NAME[@REVISION][/FOLDER/]")
    name, _, revision = parts[1].partition("@")
    repo, folder = f"{parts[0]}/{name}", "/".join(parts[2:])
    endpoint = os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")
    store = store_for(endpoint + "/")
    info = store.json(f"{endpoint}/api/{kind}/{repo}/revision/{quote(revision or 'main', safe='')}?blobs=true")
    sha = info.get("sha") if isinstance(info, dict) else None
    siblings = info.get("siblings") if isinstance(info, dict) else None
    if not isinstance(sha, str) or not isinstance(siblings, list):
        raise RemoteError(f"{url}: the Hub's answer names no commit and files")
    prefix = "" if kind == "models" else "datasets/"
    modified = _iso_time(info.get("lastModified"))
    objects = {}
    for sibling in siblings:
        path, size = (sibling.get("rfilename"), sibling.get("size")) if isinstance(sibling, dict) else (None, None)
        if not isinstance(path, str) or not isinstance(size, int) or size < 0:
            continue
        if folder and not path.startswith(folder.rstrip("/") + "/"):
            continue
        relative = path[len(folder.rstrip("/")) + 1:] if folder else path
        objects[relative] = RemoteObject(f"{endpoint}/{prefix}{repo}/resolve/{sha}/{quote(path)}", size, "", modified)
    pinned = f"hf://{prefix}{repo}@{sha}/" + (folder.rstrip("/") + "/" if folder else "")
    return pinned, objects


def _iso_time(text) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _check_reply(obj: RemoteObject, start: int, end: int, content_range: str, etag: str, data: bytes) -> None:
    """The reply holds bytes [start, end) of the pinned version, or it is refused."""
    if obj.version and etag and etag != obj.version:
        raise SourceChangedError(f"{obj.url}: the object changed since it was mounted (ETag {etag}, mounted "
                                 f"{obj.version}); remount to read the new one")
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if not match or (int(match[1]), int(match[2]) + 1, int(match[3])) != (start, end, obj.size):
        raise SourceChangedError(f"{obj.url}: asked for bytes {start}-{end - 1} of {obj.size}, the reply holds "
                                 f"{content_range or 'no Content-Range'}")
    if len(data) != end - start:
        raise SourceChangedError(f"{obj.url}: bytes {start}-{end - 1}: the reply holds {plural(len(data), 'byte')}")


def _http_time(text: str | None) -> float:
    try:
        return parsedate_to_datetime(text).timestamp() if text else 0.0
    except (TypeError, ValueError):
        return 0.0


_STORES: dict[str, object] = {}
#: the identity of each object and prefix this process opened, by URL (`pinned_identity`)
_PINNED: dict[str, dict] = {}
_CACHES: dict[str, PageCache] = {}


def _after_fork() -> None:
    """The mount daemon forks after parsing: its stores (sessions bound to
    the parent's event loop) are made anew, and the caches' workers."""
    _STORES.clear()
    for cache in _CACHES.values():
        cache.after_fork()


os.register_at_fork(after_in_child=_after_fork)


@dataclass
class Settings:
    """The remote options of this process (`-o block_size=`, `cache_memory=`, `cache_disk=`, `stall_timeout=`)."""

    block: int = DEFAULT_BLOCK
    memory: int = DEFAULT_MEMORY
    disk: int = DEFAULT_DISK
    #: where the overlays of writable remote mounts are kept (`--overlay-dir`; "": ~/.cache/ckptfs/edits)
    overlays: str = ""
    #: seconds a request may go without progress (`-o stall_timeout=`, sources/stall.py)
    stall: float = DEFAULT_SECONDS
    #: `-o fetch=`: "ranges" (read the bytes that are read), or "whole" (a web server's file
    #: downloaded once into the disk cache, for a server that ignores range requests)
    fetch: str = "ranges"


SETTINGS = Settings()


def page_cache(cache_dir: str) -> PageCache:
    """The page cache of this process, its disk part under `cache_dir/remote`."""
    if cache_dir not in _CACHES:
        disk = DiskCache(os.path.join(cache_dir, "remote"), SETTINGS.disk) if SETTINGS.disk else None
        _CACHES[cache_dir] = PageCache(SETTINGS.memory, SETTINGS.block, disk, failed_for=SETTINGS.stall)
    return _CACHES[cache_dir]


def store_for(url: str):
    """One store per scheme and process (their sessions and connection pools are shared)."""
    scheme = "s3" if url.startswith("s3://") else "http"
    if scheme not in _STORES:
        _STORES[scheme] = S3Store() if scheme == "s3" else HttpStore()
    return _STORES[scheme]


# ---------------------------------------------------------------- sources


def synthetic_stat(size: int, mtime: float, directory: bool = False) -> os.stat_result:
    """What a remote object shows as its stat: the mounting user's, readable
    by that user only (the credentials that read it are that user's)."""
    mode = (stat_module.S_IFDIR | 0o500) if directory else (stat_module.S_IFREG | 0o400)
    when = mtime or time.time()
    ns = int(when * 1e9)
    return os.stat_result((mode, 0, 0, 1, os.getuid(), os.getgid(), size, int(when), int(when), int(when),
                           when, when, when, ns, ns, ns))


class RemoteSource(Source):
    """A remote object, read through the mount's page cache."""

    slow = True  # a read may wait for the network: the FUSE layer runs it in a worker thread

    def __init__(self, obj: RemoteObject, cache: PageCache):
        self.obj, self.cache = obj, cache
        self.path, self.size = obj.url, obj.size
        self.stat = synthetic_stat(obj.size, obj.mtime)

    def pread(self, offset: int, length: int) -> bytes:
        return self.cache.read(self.obj.key, self.size, self.obj.fetch, offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        self.cache.prefetch(self.obj.key, self.size, self.obj.fetch, offset, length)

    @property
    def identity(self) -> str:
        """Which object and version: what caches of parsed indexes key on."""
        return self.obj.key

    @property
    def origin(self) -> RemoteSource:
        """Itself: its `stat` (the mounting user's, owner-only) decides who reads it."""
        return self


class WholeSource(RemoteSource):
    """A web server's file downloaded whole into the disk cache once and
    read from there (`-o fetch=whole`): for a server that ignores range
    requests. The copy is of the pinned version, kept under its URL, ETag,
    size and modification time, so a later mount of the same version
    downloads nothing."""

    slow = False

    def __init__(self, obj: RemoteObject, cache: PageCache):
        super().__init__(obj, cache)
        if cache.disk is None:
            raise RemoteError(f"{obj.url}: -o fetch=whole keeps the file in the disk cache, which "
                              "-o cache_disk=0 turns off")
        key = f"{obj.key}\0{obj.size}\0{obj.mtime}"
        self.fd, downloaded = cache.disk.whole(key, obj.size, functools.partial(store_for(obj.url).download, obj))
        if downloaded:
            with cache.lock:
                cache.requests += 1
                cache.fetched += obj.size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, max(0, min(length, self.size - offset)), offset)

    def prefetch(self, offset: int, length: int) -> None:
        pass  # all of it is here


class RemoteDirectory(Directory):
    """A prefix of an object store as a directory, from one listing. Each
    object's name is checked against the name rule (sources/pathnames.py)
    as it enters: a key such as `../x`, `/x` or `a//b` is kept under a name
    with those parts escaped (`%2E%2E/x`), so that no name of this
    directory leads outside a folder it is written to."""

    def __init__(self, url: str, objects: dict[str, RemoteObject], cache: PageCache):
        self.path, self.objects, self.cache = url, _checked_names(url, objects), cache
        self.folders: dict[str, set[str]] = {"": set()}
        for name in self.objects:
            parts = name.split("/")
            for depth in range(len(parts)):
                folder = "/".join(parts[:depth])
                self.folders.setdefault(folder, set()).add(parts[depth])
        newest = max((o.mtime for o in self.objects.values()), default=0.0)
        self._stat = synthetic_stat(0, newest, directory=True)

    def stat(self) -> os.stat_result:
        return self._stat

    def names(self, folder: str = "") -> list[str]:
        return sorted(self.folders.get(folder, ()))

    def is_file(self, name: str) -> bool:
        return name in self.objects

    def is_dir(self, name: str) -> bool:
        return name in self.folders and name not in self.objects

    def is_link(self, name: str) -> bool:
        return False

    def link_target(self, name: str) -> str:
        raise OSError(f"{self.path}{name}: object stores have no links")

    def open(self, name: str) -> RemoteSource:
        return RemoteSource(self.objects[name], self.cache)

    def mtime_ns(self, name: str) -> int:
        return int(self.objects[name].mtime * 1e9)

    def sub(self, folder: str) -> RemoteDirectory:
        prefix = folder + "/"
        return RemoteDirectory(self.path + prefix, {n[len(prefix):]: o for n, o in self.objects.items()
                                                   if n.startswith(prefix)}, self.cache)


def _checked_names(url: str, objects: dict[str, RemoteObject]) -> dict[str, RemoteObject]:
    """`objects` with each name that breaks the name rule escaped (one line
    in the log says which), or left out where its escaped name, or a folder
    of that name, is taken."""
    checked = {name: obj for name, obj in objects.items() if pathnames.path_problem(name) is None}
    folders = {name[:i] for name in checked for i, ch in enumerate(name) if ch == "/"}
    renamed, dropped = [], []
    for name, obj in objects.items():
        if name in checked:
            continue
        kept = pathnames.escaped(name)
        if kept in checked or kept in folders:
            dropped.append(name)
            continue
        checked[kept] = obj
        folders.update(kept[:i] for i, ch in enumerate(kept) if ch == "/")
        renamed.append(f"{name!r} as {kept!r}")
    if renamed or dropped:
        log.warning("%s: %s", url, "; ".join(
            ([f"names no folder can hold are shown escaped: {', '.join(renamed[:3])}"
              f"{f' and {len(renamed) - 3} more' if len(renamed) > 3 else ''}"] if renamed else []) +
            ([f"left out, their escaped names taken: {', '.join(map(repr, dropped[:3]))}"] if dropped else [])))
    return checked


def open_url(url: str, cache: PageCache) -> RemoteSource | RemoteDirectory:
    """The object or prefix at `url`: one request (a HEAD, or a LIST for a prefix)."""
    try:
        if url.startswith("hf://"):
            path, objects = hub_listing(url)
            if not objects:
                raise RemoteError(f"{url}: no files there")
        elif url.endswith("/"):
            path, objects = url, _prefix_listing(url, store_for(url))
        else:
            obj = store_for(url).stat(url)
            opened = WholeSource(obj, cache) if SETTINGS.fetch == "whole" else RemoteSource(obj, cache)
            _PINNED[opened.path] = _object_identity(opened.obj)
            return opened
    except CkptfsError:
        raise
    except Exception as e:  # the network's own, and the storage library's
        raise RemoteError(f"{url}: {type(e).__name__}: {e}") from None
    _PINNED[path] = _listing_identity(path, objects)  # of the names as listed, as `identity` sees them
    return RemoteDirectory(path, objects, cache)


def _prefix_listing(url: str, store) -> dict[str, RemoteObject]:
    if not isinstance(store, S3Store):
        raise RemoteError(f"{url}: a web server lists no folders; mount one file, or a prefix of s3://")
    objects = store.listing(url)
    if not objects:
        raise RemoteError(f"{url}: no objects under this prefix")
    return objects
