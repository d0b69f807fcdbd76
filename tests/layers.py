"""The package order of ckptfs, read from its imports, and the picture of it
in docs/architecture.md.

Every `import` and `from ... import` of a module counts: at module level, in a
function, under `if TYPE_CHECKING:` (a type is a dependency too). A module
belongs to a unit: `ckptfs/NAME/...` to the package NAME, a top-level module
`ckptfs/NAME.py` to NAME, `ckptfs/__init__.py` to `__init__`. `LAYERS` lists the
units bottom to top; a unit imports only units of lower layers (and itself).

    python -m tests.layers            # the picture, as the code draws it
    python -m tests.layers --write    # ... written into docs/architecture.md

tests/test_layers.py checks the order, that no circle joins two units, and
that the picture in docs/architecture.md is the one the code gives.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ckptfs"

#: the units bottom to top; a unit imports only units of the layers below its own
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "limits", "humanize", "version"),
    ("sources",),
    ("tree",),
    ("pickle",),
    ("pack",),
    ("formats",),
    ("write",),
    ("view",),
    ("fuse",),
    ("advice",),  # what to do after a refused repack: the mount says it too
    ("mount",),
    # what the commands use, then the commands, then their entry points
    ("compare_files", "info", "scan_tar", "report", "doctor"),
    ("api", "scan"),
    ("compare", "fsspec_fs", "tensor_stats"),
    ("info_report",),  # what `ckptfs info --html` shows: info, the tree, stats and the scan
    ("commands",),
    ("cli", "manual"),
    ("__init__", "__main__"),
)

#: upward imports tolerated for now, (importer, imported): why, and when they
#: go (the test fails once the code no longer has one, so that it is deleted)
KNOWN: dict[tuple[str, str], str] = {}

BEGIN = "<!-- layers: begin (made by `python -m tests.layers --write`; tests/test_layers.py checks it) -->"
END = "<!-- layers: end -->"
DOC = REPO / "docs" / "architecture.md"


@dataclass(frozen=True)
class Import:
    """One import of a module of the package, where it is written."""

    path: Path  # the importing file
    line: int
    importer: str  # dotted module names
    imported: str

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under the package `root`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolved(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from` import names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import of a module of the package in one file, wherever it is written."""
    tree = ast.parse(path.read_bytes(), str(path))
    is_package = path.name == "__init__.py"
    top = module.split(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolved(module, is_package, node)
            # `from pkg import name`: the module pkg.name when there is one, else pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found += [Import(path, node.lineno, module, name) for name in names
                  if name == top or name.startswith(top + ".")]
    return found


def unit_of(module: str) -> str:
    """`ckptfs.formats.dcp.reader` -> formats, `ckptfs.cli` -> cli, `ckptfs` -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@dataclass
class Graph:
    """The imports between units of one package."""

    root: Path
    imports: list[Import]  # between two different units

    @classmethod
    def read(cls, root: Path = REPO / PACKAGE) -> "Graph":
        known = modules(root)
        found = [i for module, path in known.items() for i in imports_of(module, path, known)]
        return cls(root, [i for i in found if unit_of(i.importer) != unit_of(i.imported)])

    def units(self) -> set[str]:
        return {unit_of(m) for m in modules(self.root)}

    def edges(self) -> dict[str, set[str]]:
        """Importing unit -> the units it imports."""
        out: dict[str, set[str]] = {u: set() for u in self.units()}
        for i in self.imports:
            out[unit_of(i.importer)].add(unit_of(i.imported))
        return out

    def sites(self, importer: str, imported: str) -> list[Import]:
        return [i for i in self.imports if (unit_of(i.importer), unit_of(i.imported)) == (importer, imported)]


def layer_of(layers=LAYERS) -> dict[str, int]:
    return {unit: n for n, layer in enumerate(layers) for unit in layer}


def table_problems(graph: Graph, layers=LAYERS) -> list[str]:
    """Units the table misses or names in vain: the table must say where each one is."""
    listed, units, package = layer_of(layers), graph.units(), graph.root.name
    return ([f"unit {u} ({package}/{u}) is in no layer of the table" for u in sorted(units - set(listed))]
            + [f"the table names {u}, which is no module or package of {package}" for u in sorted(set(listed) - units)])


def upward(graph: Graph, layers=LAYERS, known=KNOWN) -> list[str]:
    """Each import of a unit of the same or a higher layer, as file:line and the edge."""
    layer = layer_of(layers)
    wrong = []
    for i in graph.imports:
        a, b = unit_of(i.importer), unit_of(i.imported)
        if a in layer and b in layer and layer[b] >= layer[a] and (a, b) not in known:
            wrong.append(f"{i.where(graph.root)}: {i.importer} imports {i.imported}: "
                         f"{a} (layer {layer[a]}) may import only lower layers, {b} is layer {layer[b]}")
    return wrong


def stale_known(graph: Graph, known=KNOWN) -> list[str]:
    edges = graph.edges()
    return [f"{a} no longer imports {b}: delete ({a!r}, {b!r}) from KNOWN" for a, b in known
            if b not in edges.get(a, ())]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def circle_problems(graph: Graph, layers=LAYERS, known=KNOWN) -> list[str]:
    """Each circle between units (the known edges left out), with the imports
    that close it: those that go up the table, or all of them when the table
    places none of its units."""
    edges = {a: {b for b in bs if (a, b) not in known} for a, bs in graph.edges().items()}
    layer = layer_of(layers)
    problems = []
    for component in circles(edges):
        inside = [(a, b) for a in component for b in sorted(edges[a]) if b in component]
        breaking = [(a, b) for a, b in inside if layer.get(b, -1) >= layer.get(a, -1)] or inside
        sites = [f"{i.where(graph.root)}: {i.importer} imports {i.imported}"
                 for a, b in breaking for i in graph.sites(a, b)]
        problems.append(f"circle between {', '.join(component)}; closed by: " + "; ".join(sites))
    return problems


def picture(graph: Graph, layers=LAYERS, known=KNOWN, width: int = 100) -> str:
    """The units layer by layer, top first, each with the units it imports."""
    edges = graph.edges()
    column = max(len(u) for layer in layers for u in layer) + 8
    lines = ["layer  unit".ljust(column) + "imports"]
    for n in reversed(range(len(layers))):
        for k, unit in enumerate(layers[n]):
            imported = " ".join(b + ("!" if (unit, b) in known else "") for b in sorted(edges.get(unit, ())))
            head = (f"{n:>5}" if k == 0 else "").ljust(7) + unit
            lines += textwrap.wrap(imported or "-", width, initial_indent=head.ljust(column),
                                   subsequent_indent=" " * column, break_on_hyphens=False)
    if any(b in edges.get(a, ()) for a, b in known):
        lines += ["", "!: imports a higher layer, a known exception (tests/layers.py, KNOWN)"]
    return "\n".join(lines)


def block(graph: Graph) -> str:
    return (f"{BEGIN}\n"
            "The packages (and top-level modules) as their imports order them, every import\n"
            "counted, in functions and for types too: each imports only layers below its own.\n\n"
            f"```text\n{picture(graph)}\n```\n{END}")


def documented(text: str) -> str | None:
    """The block between the markers in a text, markers included, or None."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start : end + len(END)]


def write(doc: Path = DOC) -> bool:
    """Put the picture the code gives between the markers; True if it changed."""
    text = doc.read_text()
    old = documented(text)
    if old is None:
        raise SystemExit(f"{doc}: no {BEGIN!r} ... {END!r} markers")
    new = text.replace(old, block(Graph.read()))
    doc.write_text(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        print(f"{DOC.relative_to(REPO)}: {'redrawn' if write() else 'already as the code draws it'}")
    else:
        print(picture(Graph.read()))
