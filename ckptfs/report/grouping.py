"""Where a tensor sits in a model, read from its dotted name alone, and the
grid of relative change by layer × module that the diff report draws.

A layer is the first component of the name that is a number:
`model.layers.3.self_attn.q_proj.weight` is layer 3 of the stack
`model.layers`, module `self_attn.q_proj` (the components after the number,
less the parameter's own name). A name with no number (embeddings, the
final norm, `lm_head`) is in the row "other", its module the name less the
parameter's. Further numbers stay in the module (T5's `layer.0` and
`layer.1` are different sublayers), except an expert's index, which is
folded into `*` (`block_sparse_moe.experts.*.w1`): a cell is then the
change of all of a layer's experts' w1, and a model of 128 experts still
has a column per projection, not 384.

A cell is sqrt(Σ‖B−A‖²) / sqrt(Σ‖A‖²) over its tensors (the report's
`norm_diff` and `norm_a`): the relative change of the cell's tensors taken
as one vector. The grid is bounded whatever the model: past MAX_ROWS
layers of a stack, neighbouring layers share a row; past MAX_COLUMNS
modules, the modules with the fewest tensors share the last column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

OTHER = "other"
#: the column of the modules past MAX_COLUMNS
MORE = "(other modules)"
MAX_ROWS = 96
MAX_COLUMNS = 48


@dataclass(frozen=True)
class Place:
    """Where a tensor sits: `layer` None for a name with no number."""

    stack: str
    layer: int | None
    module: str


def _is_expert(component: str) -> bool:
    return "expert" in component.lower()


#: the most digits a layer's number has (a longer run of digits is a name, not an index)
LAYER_DIGITS = 9


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit() and len(part) <= LAYER_DIGITS


def place(name: str) -> Place:
    """The stack, layer and module of a dotted tensor name."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if _is_index(part)), None)
    if index is None:
        return Place("", None, ".".join(parts[:-1]) or name)
    inside = parts[index + 1:]
    module = inside[:-1] if len(inside) > 1 else inside
    folded = ["*" if _is_index(part) and i and _is_expert(module[i - 1]) else part for i, part in enumerate(module)]
    return Place(".".join(parts[:index]), int(parts[index]), ".".join(folded) or parts[-1])


@dataclass
class Cell:
    """The sums of a cell's tensors: Σ‖A‖², Σ‖B−A‖², how many, and how
    many of them have no norms (a dtype NumPy cannot measure)."""

    sum_a: float = 0.0
    sum_diff: float = 0.0
    tensors: int = 0
    unmeasured: int = 0
    names: list[str] = field(default_factory=list)

    def add(self, name: str, norm_a, norm_diff) -> None:
        self.tensors += 1
        if len(self.names) < 3:
            self.names.append(name)
        if norm_a is None or norm_diff is None:
            self.unmeasured += 1
            return
        self.sum_a += float(norm_a) ** 2  # "nan" and "inf" as json_safe wrote them
        self.sum_diff += float(norm_diff) ** 2

    @property
    def value(self) -> float | None:
        """The cell's relative change: 0.0 exactly where nothing moved, None
        where nothing was measured or A is all zeros and B is not."""
        if self.unmeasured == self.tensors:
            return None
        if self.sum_diff == 0:
            return 0.0
        if self.sum_a == 0:
            return None
        return math.sqrt(self.sum_diff) / math.sqrt(self.sum_a)


@dataclass
class Grid:
    """Rows (labels, top to bottom), columns, and the cells that hold
    tensors, by (row, column)."""

    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]


def compared(report: dict) -> Iterable[tuple[str, object, object]]:
    """(name, ‖A‖, ‖B−A‖) of every tensor the report compared: the
    differing ones and the bit-equal ones (‖B−A‖ = 0)."""
    for name, d in report["differing"].items():
        yield name, d.get("norm_a"), d.get("norm_diff")
    for name, e in report.get("equal_tensors", {}).items():
        norm_a = e.get("norm_a")
        yield name, norm_a, None if norm_a is None else 0.0


def grid(report: dict) -> Grid:
    """The layer × module grid of a diff report (the dict of `--json`)."""
    places = [(place(name), name, a, d) for name, a, d in compared(report)]
    stacks = sorted({p.stack for p, *_ in places if p.layer is not None})
    width = {s: _bin_width({p.layer for p, *_ in places if p.stack == s and p.layer is not None}) for s in stacks}
    counts: dict[str, int] = {}
    for p, *_ in places:
        counts[p.module] = counts.get(p.module, 0) + 1
    columns = _columns(places, counts)
    kept = set(columns)
    cells: dict[tuple[str, str], Cell] = {}
    order: dict[str, tuple] = {}
    for p, name, a, d in places:
        row, key = _row(p, width.get(p.stack, 1), len(stacks) > 1, stacks)
        order[row] = key
        column = p.module if p.module in kept else MORE
        cells.setdefault((row, column), Cell()).add(name, a, d)
    if MORE in {c for _, c in cells}:
        columns.append(MORE)
    return Grid(sorted(order, key=order.__getitem__), columns, cells)


def _bin_width(layers: set[int]) -> int:
    """How many neighbouring layer numbers share a row, so that a stack
    has MAX_ROWS rows at most."""
    if not layers:
        return 1
    return max(1, math.ceil((max(layers) - min(layers) + 1) / MAX_ROWS))


def _row(p: Place, width: int, named: bool, stacks: list[str]) -> tuple[str, tuple]:
    """A row's label and its sort key: stacks in order, layers by number,
    "other" last."""
    if p.layer is None:
        return OTHER, (len(stacks), 0)
    first = p.layer - p.layer % width
    label = str(first) if width == 1 else f"{first}–{first + width - 1}"
    return (f"{p.stack} {label}" if named else label), (stacks.index(p.stack), first)


def _columns(places: list, counts: dict[str, int]) -> list[str]:
    """The modules as columns, in the order they first appear in layers
    (then in "other"); past MAX_COLUMNS, those with the most tensors."""
    seen: dict[str, None] = {}
    for p, *_ in sorted(places, key=lambda item: item[0].layer is None):
        seen.setdefault(p.module, None)
    modules = list(seen)
    if len(modules) <= MAX_COLUMNS:
        return modules
    keep = set(sorted(modules, key=lambda m: -counts[m])[:MAX_COLUMNS - 1])
    return [m for m in modules if m in keep]
