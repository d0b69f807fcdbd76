"""Sizes and counts in the words a person reads."""

from __future__ import annotations


def human_size(n: float) -> str:
    """A byte count in the unit that fits it: 512 bytes, 38.5 kB, 1.2 GB."""
    if n < 1000:
        return plural(round(n), "byte")
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 100 else f"{n:,.0f} {unit}"
    raise AssertionError("unreachable")


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 1 << 10,
          "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str) -> int:
    """A size as people write it: 5GB, 500MB, 2GiB, 8M (binary), 1048576;
    ValueError if it is none."""
    digits = text.strip().rstrip("BbIiKkMmGgTt")
    unit = text.strip()[len(digits):].upper()
    if unit not in _UNITS:
        raise ValueError(f"{text!r} is no size")
    return int(float(digits) * _UNITS[unit])


def plural(n: int, noun: str, nouns: str = "", spec: str = "") -> str:
    """`n` and the noun in the number it takes: 1 tensor, 2 tensors,
    0 files, 1 index/2 indices (`nouns`); `spec` formats the number
    (`","` writes 1,024)."""
    return f"{n:{spec}} {noun if n == 1 else nouns or noun + 's'}"
