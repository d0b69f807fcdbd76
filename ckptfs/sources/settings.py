"""The remote options of this process (`-o block_size=`, `cache_memory=`,
`cache_disk=`, `stall_timeout=`, `fetch=`, `--overlay-dir`), and the page
cache each cache folder gets."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .pagecache import DEFAULT_BLOCK, DEFAULT_DISK, DEFAULT_MEMORY, DiskCache, PageCache
from .stall import DEFAULT_SECONDS


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
_CACHES: dict[str, PageCache] = {}


def page_cache(cache_dir: str) -> PageCache:
    """The page cache of this process, its disk part under `cache_dir/remote`."""
    if cache_dir not in _CACHES:
        disk = DiskCache(os.path.join(cache_dir, "remote"), SETTINGS.disk) if SETTINGS.disk else None
        _CACHES[cache_dir] = PageCache(SETTINGS.memory, SETTINGS.block, disk, failed_for=SETTINGS.stall)
    return _CACHES[cache_dir]


def _after_fork() -> None:
    """The mount daemon forks after parsing: its caches' workers are made anew."""
    for cache in _CACHES.values():
        cache.after_fork()


os.register_at_fork(after_in_child=_after_fork)
