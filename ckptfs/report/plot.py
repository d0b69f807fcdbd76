"""matplotlib for the reports' PNG figures (`diff --png`, `info --png`):
loaded here alone, and a figure drawn to PNG bytes with matplotlib's own
failures said in one line. matplotlib is the optional extra `plot`;
without it a command says which extra to install."""

from __future__ import annotations

import io

from ..errors import CkptfsError


def matplotlib():
    """matplotlib's Figure and Agg canvas, and LogNorm (no pyplot: no
    global state, no backend chosen for a notebook that imports this)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise CkptfsError("--png needs matplotlib: pip install matplotlib, or pip install -e '.[plot]' "
                          "in a clone of ckptfs") from None
    return Figure, FigureCanvasAgg, LogNorm


def png(draw, what: str) -> bytes:
    """The Figure `draw()` makes, as PNG bytes; a failure of matplotlib's
    own (a label it cannot lay out, a size it cannot draw) as one line
    "cannot draw `what`: ..."."""
    try:
        out = io.BytesIO()
        matplotlib()[1](draw()).print_png(out)
        return out.getvalue()
    except (ValueError, RuntimeError, OverflowError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CkptfsError(f"cannot draw {what}: {first}") from None
