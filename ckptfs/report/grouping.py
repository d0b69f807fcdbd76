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
`norm_diff` and `norm_a`, summed with `math.hypot`, which scales and so
neither overflows nor underflows): the relative change of the cell's
tensors taken as one vector. Whether a cell changed at all is told by the
bits (`changed`: how many of its tensors differ by one bit or more), never
by that ratio, which is 0 for +0.0 → −0.0 or a change beside an infinity.

The grid is bounded whatever the model, and made in time linear in the
number of tensors: at most MAX_COLUMNS columns (past them, the modules
with the fewest tensors share the last column) and MAX_ROWS rows (past
MAX_STACKS stacks, those with the fewest tensors share the row "(other
stacks)"; the rows left are shared among the stacks kept, and past its
share, neighbouring layers of a stack share a row).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

OTHER = "other"
#: the column of the modules past MAX_COLUMNS
MORE = "(other modules)"
#: the row of the stacks past MAX_STACKS
MORE_STACKS = "(other stacks)"
MAX_ROWS = 96
MAX_COLUMNS = 48
MAX_STACKS = 8
#: the tensors a cell names (in its tooltip)
NAMED = 3


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
    """A cell's tensors: their norms ‖A‖ and ‖B−A‖, how many there are,
    how many changed (bits), how many have no norms (a dtype NumPy cannot
    measure), and the first few names."""

    norms_a: list[float] = field(default_factory=list)
    norms_diff: list[float] = field(default_factory=list)
    tensors: int = 0
    changed: int = 0
    unmeasured: int = 0
    names: list[str] = field(default_factory=list)

    def add(self, name: str, norm_a, norm_diff, changed: bool) -> None:
        self.tensors += 1
        self.changed += bool(changed)
        if len(self.names) < NAMED:
            self.names.append(name)
        if norm_a is None or norm_diff is None:
            self.unmeasured += 1
            return
        self.norms_a.append(float(norm_a))  # "nan" and "inf" as json_safe writes them
        self.norms_diff.append(float(norm_diff))

    def as_dict(self, row: str, column: str) -> dict:
        """The cell as the report's `by_layer_module` holds it."""
        measured = self.unmeasured < self.tensors
        norm_a = math.hypot(*self.norms_a) if measured else None
        norm_diff = math.hypot(*self.norms_diff) if measured else None
        return {"row": row, "column": column, "tensors": self.tensors, "changed": self.changed,
                "unmeasured": self.unmeasured, "norm_a": norm_a, "norm_diff": norm_diff,
                "relative_change": _ratio(self.changed, norm_a, norm_diff), "names": self.names}


def _ratio(changed: int, norm_a: float | None, norm_diff: float | None) -> float | None:
    """A cell's relative change, as a tensor's (compare._change): 0.0
    where not one bit changed, and where bits changed but ‖B−A‖ is 0 (+0.0
    → −0.0) or ‖A‖ is infinite; None where nothing was measured or A is
    all zeros and B is not (no ratio is defined); NaN where a norm is NaN."""
    if not changed:
        return 0.0
    if norm_a is None or norm_diff is None:
        return None
    if norm_a == 0:
        return 0.0 if norm_diff == 0 else None
    return norm_diff / norm_a


@dataclass
class Grid:
    """Rows (labels, top to bottom), columns, and the cells that hold
    tensors, by (row, column)."""

    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]

    def as_dict(self) -> dict:
        """`{"rows", "columns", "cells": [cell, ...]}`, row by row: the
        report's `by_layer_module` (docs/cli.md)."""
        at = {row: i for i, row in enumerate(self.rows)}
        order = {column: i for i, column in enumerate(self.columns)}
        keys = sorted(self.cells, key=lambda key: (at[key[0]], order[key[1]]))
        return {"rows": self.rows, "columns": self.columns,
                "cells": [self.cells[key].as_dict(*key) for key in keys]}


Compared = tuple[str, object, object, bool]
"""A compared tensor: its name, ‖A‖, ‖B−A‖ (None where not measured),
and whether its bits differ."""


def grid(compared: Iterable[Compared]) -> Grid:
    """The layer × module grid of the compared tensors."""
    places = [(place(name), name, a, d, changed) for name, a, d, changed in compared]
    rows = _Rows(places)
    columns = _columns(places)
    kept = set(columns)
    cells: dict[tuple[str, str], Cell] = {}
    for p, name, a, d, changed in places:
        column = p.module if p.module in kept else MORE
        cells.setdefault((rows.label(p), column), Cell()).add(name, a, d, changed)
    if len(kept) < len({p.module for p, *_ in places}):
        columns.append(MORE)
    return Grid(rows.ordered(), columns, cells)


class _Rows:
    """The rows of the grid: the MAX_STACKS stacks with the most tensors
    (the others in MORE_STACKS), each binned to its share of MAX_ROWS."""

    def __init__(self, places: list):
        layers: dict[str, set[int]] = defaultdict(set)
        tensors: Counter[str] = Counter()
        for p, *_ in places:
            if p.layer is not None:
                layers[p.stack].add(p.layer)
                tensors[p.stack] += 1
        kept = sorted(sorted(tensors, key=lambda s: (-tensors[s], s))[:MAX_STACKS])
        self.stacks = {stack: i for i, stack in enumerate(kept)}
        self.named = len(layers) > 1
        share = max(1, (MAX_ROWS - 2) // max(1, len(kept)))  # two rows left: "other", MORE_STACKS
        self.width = {s: _bin_width(layers[s], share) for s in kept}
        self.keys: dict[str, tuple] = {}

    def label(self, p: Place) -> str:
        """The row of a tensor's place, noted with its sort key."""
        if p.layer is None:
            label, key = OTHER, (len(self.stacks) + 1, 0)
        elif p.stack not in self.stacks:
            label, key = MORE_STACKS, (len(self.stacks), 0)
        else:
            width = self.width[p.stack]
            first = p.layer - p.layer % width
            label = str(first) if width == 1 else f"{first}–{first + width - 1}"
            label, key = (f"{p.stack} {label}" if self.named else label), (self.stacks[p.stack], first)
        self.keys.setdefault(label, key)
        return label

    def ordered(self) -> list[str]:
        """The rows: stacks in order, layers by number, then MORE_STACKS, "other"."""
        return sorted(self.keys, key=self.keys.__getitem__)


def _bin_width(layers: set[int], rows: int) -> int:
    """How many neighbouring layer numbers share a row, so that a stack
    has `rows` rows at most."""
    if not layers:
        return 1
    return max(1, math.ceil((max(layers) - min(layers) + 1) / rows))


def _columns(places: list) -> list[str]:
    """The modules as columns, in the order they first appear in layers
    (then in "other"); past MAX_COLUMNS, those with the most tensors."""
    counts: Counter[str] = Counter(p.module for p, *_ in places)
    seen: dict[str, None] = {}
    for p, *_ in places:
        if p.layer is not None:
            seen.setdefault(p.module, None)
    for p, *_ in places:
        seen.setdefault(p.module, None)
    modules = list(seen)
    if len(modules) <= MAX_COLUMNS:
        return modules
    keep = set(sorted(modules, key=lambda m: -counts[m])[:MAX_COLUMNS - 1])
    return [m for m in modules if m in keep]
