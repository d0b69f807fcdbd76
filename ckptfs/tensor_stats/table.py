"""`ckptfs stats`'s text: one aligned row per tensor, and what to look at."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..humanize import plural

if TYPE_CHECKING:
    from . import Stats

COLUMNS = ("name", "dtype", "shape", "min", "max", "mean", "std", "nan", "inf", "zeros")


def _number(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.6g}"


def _row(entry: dict) -> list[str]:
    """The cells of a tensor's row; a tensor not measured: its first three and the error."""
    shape = "x".join(map(str, entry["shape"])) or "scalar"
    if entry["error"] is not None:
        return [entry["name"], entry["dtype"], shape, f"error: {entry['error']}"]
    dtype = entry["dtype"] + (" (dequantized)" if entry["dequantized"] else "")
    measures = [_number(entry[key]) for key in ("min", "max", "mean", "std")]
    counts = [f"{entry['nan']:,}", f"{entry['posinf'] + entry['neginf']:,}", f"{entry['zeros']:,}"]
    return [entry["name"], dtype, shape, *measures, *counts]


def text(stats: Stats) -> str:
    """One row per tensor, aligned (names left, numbers right); a `!` marks
    a tensor holding NaN or inf, and the lines after the table name them,
    the tensors not measured, and a sample."""
    rows = [list(COLUMNS)] + [_row(entry) for entry in stats]
    widths = [max(len(row[i]) for row in rows if i < len(row) - (len(row) < len(COLUMNS)))
              for i in range(len(COLUMNS))]
    flags = [" "] + ["!" if e["error"] is None and _odd(e) else " " for e in stats]
    lines = [f"{flag} " + "  ".join(cell.ljust(w) if i < 3 or len(row) < len(COLUMNS) else cell.rjust(w)
                                     for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for flag, row in zip(flags, rows)]
    odd = [e["name"] for e in stats if e["error"] is None and _odd(e)]
    if odd:
        lines.append(f"! {plural(len(odd), 'tensor')} with NaN or inf: {', '.join(odd)}")
    if stats.errors:
        lines.append(f"{plural(len(stats.errors), 'tensor')} not measured (error above)")
    unbinned = [e["name"] for e in stats if e["error"] is None and e["min"] is not None and e["histogram"] is None]
    if unbinned:
        lines.append(f"no histogram (no {stats.bins} equal bins between min and max in float64): {', '.join(unbinned)}")
    raw = [e["name"] for e in stats if e["error"] is None and e["counted"] == 0 and e["elements"]]
    if raw:
        lines.append(f"served as raw bytes, not measured: {', '.join(raw)}")
    if stats.sample is not None:
        lines.append(f"sampled: about {stats.sample:,} elements of each tensor, not all (--sample)")
    return "\n".join(lines)


def _odd(entry: dict) -> bool:
    return bool(entry["nan"] or entry["posinf"] or entry["neginf"])
