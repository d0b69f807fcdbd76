"""`ckptfs diff --png FILE`: the heatmap of the diff report (grouping.py)
drawn by matplotlib, for a terminal or a paper. matplotlib is the optional
extra `plot`; it is imported here alone, and without it the command says
which extra to install."""

from __future__ import annotations

import math

from ..errors import CkptfsError
from . import grouping

#: inches per cell, and the figure's bounds
CELL = 0.28
LONGEST_LABEL = 40


def matplotlib():
    """matplotlib's Figure and Agg canvas (no pyplot: no global state, no
    backend chosen for a notebook that imports this)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise CkptfsError("--png needs matplotlib: pip install matplotlib, or pip install -e '.[plot]' "
                          "in a clone of ckptfs") from None
    return Figure, FigureCanvasAgg, LogNorm


def _short(label: str) -> str:
    return label if len(label) <= LONGEST_LABEL else "…" + label[-LONGEST_LABEL + 1:]


def write(report: dict, path: str, title: str = "ckptfs diff") -> None:
    """The heatmap of `report` (the dict `--json` prints) as a PNG at `path`:
    relative change on a log colour scale, zero hatched, no tensor blank."""
    Figure, FigureCanvasAgg, LogNorm = matplotlib()
    found = grouping.grid(report)
    rows, columns = found.rows or ["–"], found.columns or ["–"]
    values = [[_value(found.cells.get((r, c))) for c in columns] for r in rows]
    positive = [v for line in values for v in line if v is not None and math.isfinite(v) and v > 0]
    low, high = (min(positive), max(positive)) if positive else (1e-6, 1.0)
    figure = Figure(figsize=(min(2.5 + CELL * len(columns), 30), min(2.5 + CELL * len(rows), 40)), dpi=110,
                    layout="constrained")
    axes = figure.add_subplot()
    masked = [[v if v is not None and v > 0 else math.nan for v in line] for line in values]
    image = axes.imshow(masked, aspect="auto", cmap="viridis", interpolation="nearest",
                        norm=LogNorm(vmin=low, vmax=high if high > low else low * 10))
    for i, line in enumerate(values):
        for j, v in enumerate(line):
            if v == 0:
                axes.add_patch(_zero_patch(j, i))
    axes.set_xticks(range(len(columns)), [_short(c) for c in columns], rotation=90, fontsize=7)
    axes.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=7)
    axes.set_xlabel("module")
    axes.set_ylabel("layer")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="relative change (hatched: 0)")
    FigureCanvasAgg(figure).print_png(path)


def _value(cell: grouping.Cell | None) -> float | None:
    return None if cell is None else cell.value


def _zero_patch(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="#eceef1", edgecolor="#8a9099", hatch="////",
                     linewidth=0)
