"""`ckptfs info --png`: the info report's main figure drawn with matplotlib
(the plot extra), for a terminal or a paper: the parameters by top-level
module and by dtype, and where the stats found NaN or infinities, which
tensors hold them."""

from __future__ import annotations

from ..errors import CkptfsError

#: bars drawn per panel; the rest are summed into one "others" bar
MAX_BARS = 20
#: tensors named in the non-finite panel
MAX_NONFINITE = 15


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CkptfsError("--png needs matplotlib: pip install matplotlib, or pip install -e '.[plot]' "
                          "in a clone of ckptfs") from None
    matplotlib.use("Agg")  # no display: a file is written
    import matplotlib.pyplot as plt

    return plt


def _bars(rows: dict[str, dict]) -> tuple[list[str], list[int]]:
    """Names and parameter counts, largest first, the tail as "others"."""
    ranked = sorted(rows.items(), key=lambda item: -item[1]["parameters"])
    names = [name for name, _ in ranked[:MAX_BARS]]
    counts = [row["parameters"] for _, row in ranked[:MAX_BARS]]
    if len(ranked) > MAX_BARS:
        names.append(f"{len(ranked) - MAX_BARS} others")
        counts.append(sum(row["parameters"] for _, row in ranked[MAX_BARS:]))
    return names[::-1], counts[::-1]


def nonfinite(stats: dict | None) -> list[dict]:
    """The tensors whose stats counted a NaN or an infinity."""
    if not stats:
        return []
    return [t for t in stats["tensors"] if t.get("nan") or t.get("posinf") or t.get("neginf")]


def _panel(ax, title: str, names: list[str], counts: list[int], colour: str) -> None:
    ax.barh(names, counts, color=colour)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.set_xlabel("parameters", fontsize=8)


def draw(report: dict, path: str) -> None:
    """Write the figure of an info report (info_report.gather's dict) to `path` as a PNG."""
    plt = _pyplot()
    info, bad = report["info"], nonfinite(report.get("stats"))
    panels = 3 if bad else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), layout="constrained")
    _panel(axes[0], "parameters by top-level module", *_bars(info["by_prefix"]), "#4c72b0")
    _panel(axes[1], "parameters by dtype", *_bars(info["by_dtype"]), "#55a868")
    if bad:
        shown = bad[:MAX_NONFINITE][::-1]
        axes[2].barh([t["name"] for t in shown], [t["nan"] + t["posinf"] + t["neginf"] for t in shown],
                     color="#c44e52")
        axes[2].set_title(f"{len(bad)} tensors with NaN or inf", fontsize=10, color="#c44e52")
        axes[2].tick_params(labelsize=8)
        axes[2].set_xlabel("NaN + inf elements", fontsize=8)
    figure.suptitle(f"{info['source']} ({info['format']}): {info['tensors']:,} tensors, "
                    f"{info['parameters']:,} parameters", fontsize=10)
    try:
        figure.savefig(path, dpi=120)
    except OSError as e:
        raise CkptfsError(f"{path}: {e.strerror or e}") from None
    finally:
        plt.close(figure)
