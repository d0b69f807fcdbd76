"""A repacked checkpoint written to object storage (a store that declares
conditional, multipart writes: `s3://`).

The writer's bytes stream into the parts of a multipart upload: neither
the checkpoint nor a local copy of it is ever held whole, only one part.
Nothing shows at the key until the upload completes, and it completes
under a condition the store checks at that moment: that the key is new
(`--output`), or that it still holds the version that was mounted
(`--replace`). Readers see the old object or the new one, never a mix. A
failed upload is aborted and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import CkptfsError, SourceChangedError
from ..sources.location import location, writers
from ..sources.stores.base import PreconditionFailed
from .output import Output

#: S3 takes parts of 5 MiB to 5 GiB, at most 10,000 of them
PART = 32 << 20
MAX_PARTS = 10_000


#: parts being sent while the writer goes on making the next one
IN_FLIGHT = 2


class UploadOutput(Output):
    """An output that sends what it is given in parts of `part_size`, up to
    IN_FLIGHT of them at a time while the writer makes the next (memory:
    IN_FLIGHT + 1 parts); a checkpoint smaller than one part goes in a
    single PUT."""

    in_kernel = False

    def __init__(self, store, url: str, part_size: int, progress=None, expected: int = 0):
        super().__init__(-1, progress=progress, expected=expected)
        self.store, self.url, self.part_size = store, url, part_size
        self.buffer = bytearray()
        self.upload: str | None = None
        self.parts: list[Future] = []  # each part's ETag, to come
        self.pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="ckptfs-upload")

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            self._send(bytes(memoryview(self.buffer)[:self.part_size]))
            del self.buffer[:self.part_size]
        self._advanced(len(data))

    def _send(self, part: bytes) -> None:
        if len(self.parts) == MAX_PARTS:
            raise CkptfsError(f"{self.url}: the new checkpoint outgrew {MAX_PARTS} parts of {self.part_size} bytes")
        if self.upload is None:
            self.upload = self.store.start_upload(self.url)
        if len(self.parts) >= IN_FLIGHT:
            self.parts[-IN_FLIGHT].result()  # wait for room (and raise its error, if it failed)
        self.parts.append(self.pool.submit(self.store.upload_part, self.url, self.upload, len(self.parts) + 1, part))

    def finish(self, condition: dict[str, str]) -> None:
        try:
            if self.upload is None:
                self.store.put(self.url, bytes(self.buffer), condition)
                return
            if self.buffer:
                self._send(bytes(self.buffer))
                self.buffer.clear()
            etags = [part.result() for part in self.parts]
            self.store.complete_upload(self.url, self.upload, etags, condition)
        finally:
            self.pool.shutdown()

    def abort(self) -> None:
        for part in self.parts:
            part.cancel()
        self.pool.shutdown(wait=True)
        if self.upload is not None:
            with contextlib.suppress(CkptfsError):
                self.store.abort_upload(self.url, self.upload)


def part_size(expected: int) -> int:
    """Parts large enough for a checkpoint twice the source's size within
    the store's count of parts, in whole MiB."""
    least = -(-2 * expected // MAX_PARTS)
    return max(PART, -(-least // (1 << 20)) << 20)


def upload(url: str, writer, expected: int, progress=None, replacing: dict | None = None,
           still_unchanged=lambda: None) -> str:
    """Run `writer(output)` into the object at `url`: a new key, or, with
    `replacing` (the identity of the source at `url` when mounted), over
    that version only. `still_unchanged()` is called just before the upload
    completes, to refuse it if the source changed meanwhile."""
    where = location(url)
    if not where.uploads:
        raise CkptfsError(f"{url}: ckptfs writes checkpoints to {writers()} only, not to {where.kind.kind}")
    store = where.store
    store.check_conditional_writes(url)
    if replacing is None and store.exists(url):
        raise CkptfsError(f"{url}: exists; give a new key for the edited checkpoint")
    condition = {"IfMatch": replacing["version"]} if replacing else {"IfNoneMatch": "*"}
    output = UploadOutput(store, url, part_size(expected), progress, expected)
    try:
        writer(output)
        still_unchanged()
        output.finish(condition)
    except PreconditionFailed:
        output.abort()
        if replacing:
            raise SourceChangedError(f"{url}: changed while the edits were being written; they were not") from None
        raise CkptfsError(f"{url}: was written by someone else during the upload; give a new key") from None
    except BaseException:
        output.abort()
        raise
    return url

