"""s3:// through s3fs: the endpoint, region and credentials are boto's
(AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws/...). An object's HEAD pins its
size and ETag, a prefix's LIST pins every object's; ranged GETs carry the
ETag (`IfMatch`). The one store ckptfs writes to: conditional PUTs and
multipart uploads (pack/upload.py)."""

from __future__ import annotations

import contextlib
import functools

from ..stall import PROGRESS, Watchdog
from .base import (
    LIST_PAGE,
    MAX_LISTED,
    PreconditionFailed,
    RemoteError,
    RemoteObject,
    Store,
    Writes,
    changed,
    check_reply,
    missing,
)
from .watched import watched


class S3Store(Store):
    """s3:// through s3fs."""

    kind = "an S3 store"
    writes = Writes(conditional=True, multipart=True)

    def __init__(self):
        try:
            import s3fs
            from fsspec.asyn import sync
        except ImportError:
            raise missing("an s3:// source") from None
        self.fs, self.sync = s3fs.S3FileSystem(skip_instance_cache=True), sync


    def stat(self, url: str) -> RemoteObject:
        async def head(watch: Watchdog):
            return await self.fs._info(url)

        try:
            info = watched(self, url, head)
        except FileNotFoundError:
            raise RemoteError(f"{url}: no such object") from None
        except (OSError, ValueError) as e:
            raise RemoteError(f"{url}: {e}") from None
        if info.get("type") != "file":
            raise RemoteError(f"{url}: a prefix, not an object (end it with / to mount it as a directory)")
        return RemoteObject(url, int(info["size"]), str(info.get("ETag", "")), _time(info.get("LastModified")))

    def folder(self, url: str) -> tuple[str, dict[str, RemoteObject]]:
        """Every object below the prefix `url` (ending in /), by relative
        path: one LIST, a request for each page of a thousand keys."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        found: dict[str, RemoteObject] = {}
        more: dict[str, str] = {}
        pages = 0
        while True:
            try:
                page = watched(self, url, functools.partial(self._list_page, bucket, prefix, more))
            except (OSError, ValueError) as e:
                raise RemoteError(f"{url}: {e}") from None
            for item in page.get("Contents", ()):
                key, size = item.get("Key"), item.get("Size")
                if not isinstance(key, str) or not key.startswith(prefix) or not isinstance(size, int) or size < 0:
                    continue  # a server's answer is checked like a file's
                if key.endswith("/") and not size:
                    continue  # a folder marker (what "Create folder" makes), not a file
                found[key[len(prefix):]] = RemoteObject(f"s3://{bucket}/{key}", size, str(item.get("ETag", "")),
                                                        _time(item.get("LastModified")))
            if not page.get("IsTruncated"):
                return url, found
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
            reply, data = watched(self, f"{obj.url}: bytes {start}-{end - 1}", get)
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                raise changed(obj.url, "ETag", obj.version) from None
            raise RemoteError(f"{obj.url}: {e}") from None
        check_reply(obj, start, end, reply.get("ContentRange", ""), reply.get("ETag", ""), data)
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
            return bool(watched(self, url, look))
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


def _time(modified) -> float:
    return modified.timestamp() if hasattr(modified, "timestamp") else 0.0
