"""Where ckptfs keeps what it learns of sources between runs: gzip seek
points, remote pages, the overlays of remote sources."""

from __future__ import annotations

import os


def default_cache_dir() -> str:
    """Where parsed indexes (gzip seek points) are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ckptfs")
