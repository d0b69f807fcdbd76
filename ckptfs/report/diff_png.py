"""`ckptfs diff --png FILE`: the heatmap of the diff report (grouping.py)
drawn by matplotlib (plot.py loads it), for a terminal or a paper."""

from __future__ import annotations

import math

from .page import short
from .plot import matplotlib, png

#: inches per cell
CELL = 0.28
#: the figure's least height, inches: the legend under the axes takes about
#: two, and the colour bar's label must still fit beside what is left
MIN_HEIGHT = 4.5


def render(report: dict, title: str = "ckptfs diff") -> bytes:
    """The heatmap of `report` (the dict `--json` prints) as PNG bytes:
    the relative change of each cell of its `by_layer_module` on a log
    colour scale; an infinite one the top colour marked ∞; an unchanged
    cell hatched; a cell with no ratio grey with "?"; no tensor blank. A
    name is drawn as plain text whatever it holds (no mathtext)."""
    return png(lambda: figure(report, title), "the heatmap")


def figure(report: dict, title: str = "ckptfs diff"):
    """The heatmap as a matplotlib Figure (`render` draws it)."""
    Figure, _, LogNorm = matplotlib()
    grid = report["by_layer_module"]
    rows, columns = grid["rows"] or ["–"], grid["columns"] or ["–"]
    at = {(c["row"], c["column"]): c for c in grid["cells"]}
    cells = [[at.get((r, c)) for c in columns] for r in rows]
    values = [[_value(cell) for cell in line] for line in cells]
    positive = [v for line in values for v in line if v is not None and math.isfinite(v) and v > 0]
    low, high = (min(positive), max(positive)) if positive else (1e-6, 1.0)
    high = high if high > low else low * 10
    drawn = Figure(figsize=(min(2.5 + CELL * len(columns), 30), min(max(MIN_HEIGHT, 3 + CELL * len(rows)), 40)), dpi=110,
                    layout="constrained")
    axes = drawn.add_subplot()
    shown = [[_shown(v, low, high) for v in line] for line in values]
    image = axes.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest",
                        norm=LogNorm(vmin=low, vmax=high))
    for i, line in enumerate(cells):
        for j, cell in enumerate(line):
            _mark(axes, j, i, cell, values[i][j])
    axes.set_xticks(range(len(columns)), [short(c) for c in columns], rotation=90, fontsize=7, parse_math=False)
    axes.set_yticks(range(len(rows)), [short(r) for r in rows], fontsize=7, parse_math=False)
    axes.set_xlabel(f"module\n\n{LEGEND}", fontsize=8)
    axes.set_ylabel("layer")
    axes.set_title(title, fontsize=9, parse_math=False)
    drawn.colorbar(image, ax=axes).set_label("relative change ‖B−A‖/‖A‖, log", fontsize=8)
    return drawn


LEGEND = "hatched: not one bit changed\n∞: an infinite change\ngrey ?: no ratio (A all zeros, or NaN)\nblank: no such tensor"


def _value(cell: dict | None) -> float | None:
    """A cell's relative change as a float (None: no cell, or no ratio)."""
    if cell is None or cell["relative_change"] is None:
        return None
    return float(cell["relative_change"])


def _shown(value: float | None, low: float, high: float) -> float:
    """What the image draws: a finite change clipped to the scale (0, a
    change that underflowed, at its low end), ∞ at its top; the rest
    (NaN) not drawn, left to `_mark`."""
    if value is None or math.isnan(value):
        return math.nan
    return high if math.isinf(value) else min(max(value, low), high)


def _mark(axes, x: int, y: int, cell: dict | None, value: float | None) -> None:
    """What a colour cannot say, drawn over a cell: hatched if unchanged,
    "∞", or grey "?" where the change has no number."""
    if cell is None:
        return
    if not cell["changed"]:
        axes.add_patch(_patch(x, y, hatch="////"))
    elif value is None or math.isnan(value):
        axes.add_patch(_patch(x, y))
        axes.text(x, y, "?", ha="center", va="center", fontsize=7, color="#1d1f23", parse_math=False)
    elif math.isinf(value):
        axes.text(x, y, "∞", ha="center", va="center", fontsize=7, color="#1d1f23", parse_math=False)


def _patch(x: int, y: int, hatch: str | None = None):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="#eceef1" if hatch else "#c9ccd1", edgecolor="#8a9099",
                     hatch=hatch, linewidth=0)
