"""`ckptfs info --png`: the info report's main figure drawn with matplotlib
(plot.py loads it), for a terminal or a paper: the parameters by top-level
module and by dtype, and where the stats found NaN or infinities, which
tensors hold them. Every name is drawn as plain text (no mathtext), a lone
surrogate as its escape."""

from __future__ import annotations

from ..humanize import plural
from .page import short, visible
from .plot import matplotlib, png
from .stats_page import nonfinite

#: bars drawn per panel; the rest are summed into one "others" bar
MAX_BARS = 20
#: tensors named in the non-finite panel
MAX_NONFINITE = 15


def _bars(rows: dict[str, dict]) -> tuple[list[str], list[int]]:
    """Names and parameter counts, largest first, the tail as "others"."""
    ranked = sorted(rows.items(), key=lambda item: -item[1]["parameters"])
    names = [name for name, _ in ranked[:MAX_BARS]]
    counts = [row["parameters"] for _, row in ranked[:MAX_BARS]]
    if len(ranked) > MAX_BARS:
        names.append(f"{len(ranked) - MAX_BARS} others")
        counts.append(sum(row["parameters"] for _, row in ranked[MAX_BARS:]))
    return names[::-1], counts[::-1]


def _panel(axes, title: str, names: list[str], counts: list[int], colour: str, unit: str = "parameters") -> None:
    """Horizontal bars labelled by `names`, each label plain text."""
    axes.barh(range(len(counts)), counts, color=colour)
    axes.set_yticks(range(len(names)), [short(visible(n)) for n in names], fontsize=8, parse_math=False)
    warn = {"color": colour} if unit != "parameters" else {}
    axes.set_title(title, fontsize=10, parse_math=False, **warn)
    axes.tick_params(labelsize=8)
    axes.set_xlabel(unit, fontsize=8)


def figure(report: dict):
    """The figure of an info report (info_report.gather's dict), a matplotlib Figure."""
    Figure = matplotlib()[0]
    info = report["info"]
    bad = [t for t in (report.get("stats") or {"tensors": []})["tensors"] if nonfinite(t)]
    panels = 3 if bad else 2
    drawn = Figure(figsize=(5 * panels, 4), dpi=120, layout="constrained")
    axes = drawn.subplots(1, panels)
    _panel(axes[0], "parameters by top-level module", *_bars(info["by_prefix"]), "#4c72b0")
    _panel(axes[1], "parameters by dtype", *_bars(info["by_dtype"]), "#55a868")
    if bad:
        shown = bad[:MAX_NONFINITE][::-1]
        _panel(axes[2], f"{plural(len(bad), 'tensor', spec=',')} with NaN or inf", [t["name"] for t in shown],
               [nonfinite(t) for t in shown], "#c44e52", unit="NaN + inf elements")
    counts = f"{plural(info['tensors'], 'tensor', spec=',')}, {plural(info['parameters'], 'parameter', spec=',')}"
    drawn.suptitle(visible(f"{info['source']} ({info['format']}): {counts}"), fontsize=10, parse_math=False)
    return drawn


def render(report: dict) -> bytes:
    """The figure of an info report as PNG bytes."""
    return png(lambda: figure(report), "the info figure")

