"""A store's request run on fsspec's event loop under a Watchdog
(sources/stall.py): one that makes no progress for `-o stall_timeout=`
seconds is dropped with its connection and asked once more, on another
connection, then fails naming the URL and the bytes."""

from __future__ import annotations

import logging

from ..settings import SETTINGS
from ..stall import Stalled, Watchdog
from .base import RemoteError

log = logging.getLogger(__name__)


class StalledTwice(RemoteError, Stalled):
    """A request that stalled, and stalled again on another connection."""


def watched(store, what: str, request):
    """`request(watch)`, a coroutine function, run on the store's event
    loop (`store.fs.loop`, through `store.sync`) under a Watchdog of `-o
    stall_timeout` seconds. After a stall it is asked once more: the
    stalled connection was closed, so the second try goes out on another.
    A second stall is a RemoteError naming `what` (the URL, and the bytes)."""
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
