"""How long a remote request may go without progress (`-o stall_timeout=`).

A request makes progress when its reply's headers arrive, and then each
time another PROGRESS bytes of its body have arrived. A transfer that keeps
arriving never times out, however long it takes; one that sends nothing,
or a byte now and then, for `seconds` is cancelled: its connection is
closed (never handed to another request) and the caller gets `Stalled`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import CkptfsError

DEFAULT_SECONDS = 30.0
#: bytes of a body that count as progress: one page of the remote cache
PROGRESS = 64 << 10


class Stalled(CkptfsError):
    """A request made no progress for the stall timeout."""


class Watchdog:
    """Cancels the task it runs in when `seconds` pass without progress:

        async with Watchdog(30) as watch:
            reply = await request()
            watch.progress()                   # the headers came
            body = await watch.body(reply.read_some)

    Leaving the block after it fired raises Stalled, whatever the cancel
    turned into on its way out. It must be the only one cancelling its
    task (true of the coroutines the stores run through fsspec's loop)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False

    async def __aenter__(self) -> Watchdog:
        # imported here: every ckptfs command imports this module (through
        # the mount options), and asyncio with ssl and socket would cost each one
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timer = self._loop.call_later(self.seconds, self._fire)
        return self

    def progress(self) -> None:
        """The request moved on: `seconds` more from now."""
        if not self.fired:
            self._timer.cancel()
            self._timer = self._loop.call_later(self.seconds, self._fire)

    async def body(self, read_some: Callable[[], Awaitable[bytes]], most: int | None = None) -> bytes:
        """The rest of a reply's body, read by `read_some()` (b"" at its
        end), each PROGRESS bytes of it progress; no more is read once it
        holds over `most` bytes (a body that never ends costs no more)."""
        parts: list[bytes] = []
        got = credited = 0
        while (most is None or got <= most) and (chunk := await read_some()):
            parts.append(chunk)
            got += len(chunk)
            if got - credited >= PROGRESS:
                credited = got
                self.progress()
        return b"".join(parts)

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    async def __aexit__(self, kind, error, traceback) -> bool:
        self._timer.cancel()
        if not self.fired:
            return False
        if kind is None:  # it fired as the block ended: take the cancel back, keep the result
            import asyncio

            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                pass
        if hasattr(self._task, "uncancel"):  # Python 3.11: the task is not being cancelled any more
            self._task.uncancel()
        if kind is None:
            return False
        raise Stalled(f"no progress for {self.seconds:g} s") from None
