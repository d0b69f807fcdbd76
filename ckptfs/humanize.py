"""Sizes in the words a person reads."""

from __future__ import annotations


def human_size(n: float) -> str:
    """A byte count in the unit that fits it: 512 bytes, 38.5 kB, 1.2 GB."""
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 100 else f"{n:,.0f} {unit}"
    raise AssertionError("unreachable")
