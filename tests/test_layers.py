"""The package order of ckptfs (tests/layers.py): every import, function-local
and TYPE_CHECKING ones included, goes down the layer table; no circle joins
two packages; docs/architecture.md draws what the code has. And the checker
itself rejects what it must, on small trees made here."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from . import layers
from .layers import DOC, Graph

CODE = Graph.read()


def test_every_unit_stands_in_one_layer():
    assert layers.table_problems(CODE) == []
    units = [unit for layer in layers.LAYERS for unit in layer]
    assert len(units) == len(set(units)), "a unit listed twice in LAYERS"


def test_no_unit_imports_its_own_or_a_higher_layer():
    assert layers.upward(CODE) == []


def test_no_circle_between_packages():
    assert layers.circle_problems(CODE) == []


def test_the_known_exceptions_are_still_there():
    """An exception of KNOWN that the code no longer needs is deleted."""
    assert layers.stale_known(CODE) == []


def test_docs_draw_the_order_the_code_has():
    drawn = layers.documented(DOC.read_text())
    assert drawn is not None, f"{DOC}: the markers of the generated picture are missing"
    assert drawn == layers.block(CODE), ("docs/architecture.md draws another package graph than the code's: "
                                         "run `python -m tests.layers --write`")


def test_the_picture_is_made_from_a_plain_clone(tmp_path):
    """`python -m tests.layers --write` from the repository, ckptfs not installed:
    it reads files only, so it redraws a copy of the docs as the test expects."""
    doc = tmp_path / "architecture.md"
    doc.write_text(f"# title\n\n{layers.BEGIN}\nstale\n{layers.END}\n\nthe rest\n")
    code = ("import sys; from pathlib import Path; from tests import layers; layers.write(Path(sys.argv[1])); "
            "assert not [m for m in sys.modules if m.partition('.')[0] == 'ckptfs']")
    # -E: PYTHONPATH ignored, the clone's own folder is the one on the path
    subprocess.run([sys.executable, "-E", "-c", code, str(doc)], cwd=layers.REPO, check=True, timeout=120)
    assert doc.read_text() == f"# title\n\n{layers.block(CODE)}\n\nthe rest\n"
    done = subprocess.run([sys.executable, "-E", "-m", "tests.layers"], cwd=layers.REPO, capture_output=True,
                          text=True, check=True, timeout=120)
    assert done.stdout == layers.picture(CODE) + "\n"


# -- the checker, on small trees

LAYERS = (("base", "side"), ("low",), ("high",), ("__init__",))


def _tree(root, files: dict[str, str]):
    """pkg/ with units base and side (layer 0), low (1), high (2), and `files` on top."""
    for name, text in {"pkg/__init__.py": "", "pkg/base.py": "VALUE = 1\n", "pkg/side.py": "",
                       "pkg/low/__init__.py": "NAME = 1\n", "pkg/low/a.py": "from .. import base\n",
                       "pkg/high/__init__.py": "from pkg.base import VALUE\n",
                       "pkg/high/b.py": "from ..low import a\nfrom pkg.low import NAME\nTHING = 1\n", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return Graph.read(root / "pkg")


def test_a_tree_in_order_passes(tmp_path):
    graph = _tree(tmp_path, {})
    # `from pkg import name` is an import of the module pkg.name where there is one, else of pkg
    assert sorted((i.importer, i.imported, i.line) for i in graph.imports) == [
        ("pkg.high", "pkg.base", 1), ("pkg.high.b", "pkg.low", 2), ("pkg.high.b", "pkg.low.a", 1),
        ("pkg.low.a", "pkg.base", 1)]
    assert graph.edges() == {"base": set(), "side": set(), "low": {"base"}, "high": {"base", "low"}, "__init__": set()}
    assert layers.table_problems(graph, LAYERS) == [] and layers.upward(graph, LAYERS, {}) == []
    assert layers.circle_problems(graph, LAYERS, {}) == []


UPWARD = {
    "at module level": "from ..high.b import THING\n",
    "in a function": """\
        def f():
            import pkg.high.b
            return pkg.high.b.THING
        """,
    "for a type": """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from ..high import b
        """,
}


@pytest.mark.parametrize("kind", UPWARD)
def test_an_upward_import_is_rejected_where_it_is_written(tmp_path, kind):
    graph = _tree(tmp_path, {"pkg/low/c.py": UPWARD[kind]})
    line = next(n for n, text in enumerate(textwrap.dedent(UPWARD[kind]).splitlines(), 1) if "pkg.high" in text
                or "..high" in text)
    [wrong] = layers.upward(graph, LAYERS, {})
    assert wrong == (f"pkg/low/c.py:{line}: pkg.low.c imports pkg.high.b: "
                     "low (layer 1) may import only lower layers, high is layer 2")
    [circle] = layers.circle_problems(graph, LAYERS, {})
    assert circle == f"circle between high, low; closed by: pkg/low/c.py:{line}: pkg.low.c imports pkg.high.b"
    # a known exception is let through, and its edge left out of the circles
    assert layers.upward(graph, LAYERS, {("low", "high"): "why"}) == []
    assert layers.circle_problems(graph, LAYERS, {("low", "high"): "why"}) == []


def test_an_import_of_the_same_layer_is_rejected(tmp_path):
    graph = _tree(tmp_path, {"pkg/side.py": "import pkg.base\n"})
    assert layers.upward(graph, LAYERS, {}) == [
        "pkg/side.py:1: pkg.side imports pkg.base: side (layer 0) may import only lower layers, base is layer 0"]


def test_a_unit_the_table_misses_or_invents_is_named(tmp_path):
    graph = _tree(tmp_path, {"pkg/extra/__init__.py": ""})
    assert layers.table_problems(graph, (("base", "side"), ("low",), ("high", "gone"), ("__init__",))) == [
        "unit extra (pkg/extra) is in no layer of the table", "the table names gone, which is no module or package of pkg"]


def test_a_known_exception_no_longer_needed_is_named(tmp_path):
    graph = _tree(tmp_path, {})
    assert layers.stale_known(graph, {("low", "high"): "why"}) == [
        "low no longer imports high: delete ('low', 'high') from KNOWN"]


def test_a_circle_the_table_cannot_order_is_named_by_all_its_imports(tmp_path):
    graph = _tree(tmp_path, {"pkg/low/a.py": "from ..high import b\n"})
    [circle] = layers.circle_problems(graph, (), {})
    assert circle == ("circle between high, low; closed by: pkg/high/b.py:1: pkg.high.b imports pkg.low.a; "
                      "pkg/high/b.py:2: pkg.high.b imports pkg.low; pkg/low/a.py:1: pkg.low.a imports pkg.high.b")
