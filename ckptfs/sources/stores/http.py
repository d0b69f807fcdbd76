"""https:// and http://: a HEAD pins an object's size and ETag, ranged GETs
carry it (`If-Match`) and every reply is checked. A web server lists no
folders, and takes no writes. aiohttp through fsspec (the remote extra)."""

from __future__ import annotations

import json
import os
from email.utils import parsedate_to_datetime

from ...errors import SourceChangedError
from ..settings import SETTINGS
from ..stall import PROGRESS, Watchdog
from .base import RemoteError, RemoteObject, Store, changed, check_reply, etag_changed, missing
from .hub import MAX_API_ANSWER, hub_auth
from .watched import watched


class RangesIgnored(RemoteError):
    """A web server that sends the whole object when asked for a range (as
    `python -m http.server` does), or says it serves none."""

    def __init__(self, url: str, what: str):
        super().__init__(f"{url}: the server ignores range requests ({what}); mount it with -o fetch=whole "
                         "to download it once into the disk cache and read it there")


class HttpStore(Store):
    """https:// and http://: HEAD for the size and ETag, ranged GETs."""

    kind = "a web server"
    lists = False
    downloads_whole = True

    def __init__(self):
        try:
            import aiohttp
            from fsspec.asyn import sync
            from fsspec.implementations.http import HTTPFileSystem
        except ImportError:
            raise missing("an http(s):// source") from None
        # no total timeout (aiohttp's is 300 s): a transfer that keeps arriving
        # may take as long as it takes; one that stalls is cut by its Watchdog
        client = {"timeout": aiohttp.ClientTimeout(total=None)}
        self.fs, self.sync = HTTPFileSystem(skip_instance_cache=True, client_kwargs=client), sync

    def stat(self, url: str) -> RemoteObject:
        async def head(watch: Watchdog):
            session = await self.fs.set_session()
            async with session.head(url, allow_redirects=True) as r:
                return r.status, _lower(r.headers)

        status, headers = watched(self, url, head)
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

    def folder(self, url: str) -> tuple[str, dict[str, RemoteObject]]:
        raise RemoteError(f"{url}: a web server lists no folders; mount one file, or a prefix of s3://")

    def get(self, obj: RemoteObject, start: int, end: int) -> bytes:
        headers = {"Range": f"bytes={start}-{end - 1}", **_pinned(obj)}

        async def get(watch: Watchdog):
            session = await self.fs.set_session()
            async with session.get(obj.url, headers=headers) as r:
                watch.progress()
                if r.status != 206:  # never read a whole object that was asked for a range
                    return r.status, _lower(r.headers), b""
                return r.status, _lower(r.headers), await _body(r, watch, end - start)

        status, reply, data = watched(self, f"{obj.url}: bytes {start}-{end - 1}", get)
        if status == 412:
            raise changed(obj.url, "ETag", obj.version)
        if status == 200:
            raise RangesIgnored(obj.url, f"asked for bytes {start}-{end - 1}, it sent the whole object")
        if status != 206:
            raise RemoteError(f"{obj.url}: HTTP {status} for bytes {start}-{end - 1}")
        check_reply(obj, start, end, reply.get("content-range", ""), reply.get("etag", ""), data)
        return data

    def download(self, obj: RemoteObject, fd: int) -> None:
        """The whole of the pinned version into the file `fd`, with one GET
        (`-o fetch=whole`): checked as a range is (its status, its length
        against the pinned size, its ETag), and never more than that size
        read. A second try, after a stall, starts the file again."""
        headers = _pinned(obj)

        async def get(watch: Watchdog):
            os.ftruncate(fd, 0)
            session = await self.fs.set_session()
            async with session.get(obj.url, headers=headers) as r:
                watch.progress()
                reply = _lower(r.headers)
                if r.status != 200 or reply.get("content-length", str(obj.size)) != str(obj.size):
                    return r.status, reply, 0
                return r.status, reply, await _write_body(r, watch, fd, obj.size)

        status, reply, written = watched(self, f"{obj.url}: the whole object", get)
        if status == 412:
            raise changed(obj.url, "ETag", obj.version)
        if status != 200:
            raise RemoteError(f"{obj.url}: HTTP {status} for the whole object")
        _check_whole(obj, reply, written)

    def json(self, url: str):
        """A JSON document (a Hub API answer): one GET."""
        async def get(watch: Watchdog):
            session = await self.fs.set_session()
            async with session.get(url, headers=hub_auth(url)) as r:
                watch.progress()
                return r.status, await _body(r, watch, MAX_API_ANSWER)

        status, body = watched(self, url, get)
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


def _pinned(obj: RemoteObject) -> dict[str, str]:
    """The headers of a GET of the pinned version: the Hub's token where it
    goes, and `If-Match` (a weak ETag never matches it: the reply's is checked)."""
    headers = hub_auth(obj.url)
    if obj.version and not obj.version.startswith("W/"):
        headers["If-Match"] = obj.version
    return headers


async def _write_body(reply, watch: Watchdog, fd: int, size: int) -> int:
    """A reply's body into `fd`, never more than `size` bytes of it kept;
    how many arrived (one more than `size` is enough to refuse it)."""
    written = credited = 0
    while written <= size and (chunk := await reply.content.readany()):
        os.pwrite(fd, chunk[: max(0, size - written)], written)
        written += len(chunk)
        if written - credited >= PROGRESS:
            credited = written
            watch.progress()
    if written > size:
        reply.close()
    return written


def _check_whole(obj: RemoteObject, reply: dict[str, str], written: int) -> None:
    """A whole object's reply holds the pinned version, whole, or it is refused."""
    etag, length = reply.get("etag", ""), reply.get("content-length")
    if obj.version and etag and etag != obj.version:
        raise etag_changed(obj, etag)
    if length is not None and length != str(obj.size):
        raise SourceChangedError(f"{obj.url}: the reply is of {length} bytes (Content-Length), the object "
                                 f"was {obj.size} when mounted")
    if written != obj.size:
        held = f"more than {obj.size}" if written > obj.size else str(written)
        raise SourceChangedError(f"{obj.url}: the reply holds {held} bytes, the object was {obj.size} "
                                 "when mounted")


async def _body(reply, watch: Watchdog, most: int | None = None) -> bytes:
    """An aiohttp reply's body (at most `most` + 1 bytes: one more than
    asked for is enough to refuse it). A body that fails or stalls
    takes its connection with it: never handed to another request."""
    try:
        return await watch.body(reply.content.readany, most)
    except BaseException:
        reply.close()
        raise


def _lower(headers) -> dict[str, str]:
    """HTTP headers by lower-case name (servers and aiohttp spell them as they like: ETag, Etag)."""
    return {name.lower(): value for name, value in headers.items()}


def _http_time(text: str | None) -> float:
    try:
        return parsedate_to_datetime(text).timestamp() if text else 0.0
    except (TypeError, ValueError):
        return 0.0
