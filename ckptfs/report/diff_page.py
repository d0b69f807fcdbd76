"""The HTML report of `ckptfs diff` (docs/reports.md), made from the dict
`--json` prints (after compare.json_safe): a summary, the heatmap of
relative change by layer × module (grouping.py), the tensors ranked by
change, those only one side has or whose dtype or shape changed, and the
values and side files that differ, text files as unified diffs.

Long lists go to the page as embedded JSON and are shown a page at a time
by the page's script, so that a report of 100k tensors stays small in the
browser; the summary and the heatmap are HTML, and are also what a
notebook shows (`fragment`).
"""

from __future__ import annotations

import math

from . import page
from .page import Column, Markup, element

#: the changed side files whose unified diffs are shown (the others are listed)
SHOWN_DIFFS = 50

RANKED = [Column("name", "tensor", "code"), Column("relative_change", "relative change ‖B−A‖/‖A‖", "float"),
          Column("cosine", "cosine", "float"), Column("max_abs_diff", "max abs diff", "float"),
          Column("max_rel_diff", "max rel diff", "float"), Column("differing", "elements differing", "int"),
          Column("elements", "elements", "int"), Column("norm_diff", "‖B−A‖", "float"),
          Column("norm_a", "‖A‖", "float")]


def document(report: dict, a: str = "A", b: str = "B") -> str:
    """The whole report, one self-contained HTML page."""
    return page.document(
        f"ckptfs diff: {a} → {b}",
        _summary(report, a, b),
        page.section("Relative change by layer and module", _heatmap(report), anchor="heatmap"),
        page.section(f"Tensors that differ, by relative change ({len(report['differing']):,})",
                     *_ranked(report), anchor="ranked"),
        page.section("Tensors added, removed, reshaped or retyped", *_structure(report), anchor="structure",
                     open_=bool(report["added"] or report["removed"] or report["changed"])),
        page.section("Values and files", *_side(report), anchor="files",
                     open_=bool(report["values"] or any(report["files"].values()))),
    )


def fragment(report: dict, a: str = "A", b: str = "B") -> Markup:
    """The summary and the heatmap, for a notebook (`Diff._repr_html_`)."""
    return page.fragment(element("h3", f"ckptfs diff: {a} → {b}"), _summary(report, a, b), _heatmap(report))


def _largest(report: dict) -> tuple[str, object] | None:
    """The tensor of the largest relative change (an infinite one first)
    and its change; None where no tensor has a number for it."""
    ranked = _ranked_rows(report)
    if not ranked or _magnitude(ranked[0].get("relative_change")) is None:
        return None
    return ranked[0]["name"], ranked[0]["relative_change"]


def _summary(report: dict, a: str, b: str) -> Markup:
    same = report["same"]
    verdict = element("p", "The checkpoints are the same." if same else "The checkpoints differ.",
                      class_=f"ck-verdict {'ck-same' if same else 'ck-different'}", data_same=str(same).lower())
    files = report["files"]
    items = [
        ("A", element("code", a)), ("B", element("code", b)),
        ("tensors compared", page.number(report["equal"] + len(report["differing"]), "int", data_key="compared")),
        ("bit-equal", page.number(report["equal"], "int", data_key="equal")),
        ("differing", page.number(len(report["differing"]), "int", data_key="differing")),
        ("only in A (removed)", page.number(len(report["removed"]), "int", data_key="removed")),
        ("only in B (added)", page.number(len(report["added"]), "int", data_key="added")),
        ("dtype or shape changed", page.number(len(report["changed"]), "int", data_key="changed")),
        ("values changed", page.number(len(report["values"]), "int", data_key="values")),
        ("files added, removed, changed", page.join([
            page.number(len(files["added"]), "int", data_key="files-added"), ", ",
            page.number(len(files["removed"]), "int", data_key="files-removed"), ", ",
            page.number(len(files["changed"]), "int", data_key="files-changed")])),
    ]
    largest = _largest(report)
    if largest:
        items.append(("largest relative change", page.join([
            page.number(largest[1], data_key="largest"), " ", element("code", largest[0])])))
    return page.join([verdict, page.summary_list(items)])


def _heatmap(report: dict) -> Markup:
    """The map of the report's `by_layer_module` cells (grouping.py): the
    numbers shown are the JSON's."""
    grid = report["by_layer_module"]
    if not grid["cells"]:
        return element("p", "No tensor was compared: there is nothing to draw.")
    values = {(c["row"], c["column"]): _magnitude(c["relative_change"]) for c in grid["cells"]}
    scale = page.ColourScale.spanning(v for v in values.values() if v is not None)
    cells = {(c["row"], c["column"]): page.HeatCell(values[c["row"], c["column"]], _cell_title(c), bool(c["changed"]))
             for c in grid["cells"]}
    changed_rows = {c["row"] for c in grid["cells"] if c["changed"]}
    zero_rows = [row for row in grid["rows"] if row not in changed_rows]
    notes = [element("p", "Each cell: sqrt(Σ‖B−A‖²) / sqrt(Σ‖A‖²) over the tensors of one module of one layer; "
                     "hatched “0”: not one bit changed; “?”: no ratio (A is all zeros, or a norm is NaN); "
                     "empty: no such tensor.", class_="ck-count")]
    if zero_rows:
        notes.append(element("p", "Unchanged rows: ", element("code", ", ".join(zero_rows)), class_="ck-count",
                             data_zero_rows=",".join(zero_rows)))
    return page.join([page.heatmap(grid["rows"], grid["columns"], cells, scale, data_cells=str(len(cells))),
                      scale.legend("relative change"), *notes])


def _cell_title(cell: dict) -> str:
    change = cell["relative_change"]
    if not cell["changed"]:
        value = "0: not one bit changed"
    elif cell["unmeasured"] == cell["tensors"]:
        value = "not measured (a dtype NumPy does not know)"
    elif change is None:
        value = "none: A is all zeros, so no ratio is defined"
    else:
        value = page.format_float(change)
    names, tensors = cell["names"], cell["tensors"]
    more = f", {tensors - len(names)} more" if tensors > len(names) else ""
    return (f"layer {cell['row']} · {cell['column']}: relative change {value}; {cell['changed']} of {tensors} "
            f"tensor{'s' if tensors != 1 else ''} changed ({', '.join(names)}{more})")


def _magnitude(value) -> float | None:
    """A measure as json_safe wrote it ("inf", "nan" as text) as a float; None stays None."""
    return None if value is None else float(value)


def _sort_key(row: dict) -> tuple:
    """Largest change first, an infinite one above every number; then NaN
    (a change with no size), then the tensors with no ratio."""
    change = _magnitude(row.get("relative_change"))
    if change is None:
        return (2, 0.0, row["name"])
    if math.isnan(change):
        return (1, 0.0, row["name"])
    return (0, -change, row["name"])


def _ranked_rows(report: dict) -> list[dict]:
    rows = [{"name": name, **measures} for name, measures in report["differing"].items()]
    return sorted(rows, key=_sort_key)


def _ranked(report: dict) -> list[Markup]:
    rows = _ranked_rows(report)
    if not rows:
        return [element("p", "No tensor differs.")]
    return [page.json_script("ck-ranked", page.with_text(rows, RANKED)),
            page.paged_table("ck-ranked", RANKED, page=50, filter_key="name", id="ranked-table")]


def _structure(report: dict) -> list[Markup]:
    changed = [{"name": c["name"], "a_dtype": c["a"]["dtype"], "a_shape": c["a"]["shape"],
                "b_dtype": c["b"]["dtype"], "b_shape": c["b"]["shape"]} for c in report["changed"]]
    parts = []
    for key, heading, rows, columns in (
            ("removed", "Only in A (removed)", [{"name": n} for n in report["removed"]], [Column("name", "tensor", "code")]),
            ("added", "Only in B (added)", [{"name": n} for n in report["added"]], [Column("name", "tensor", "code")]),
            ("changed", "Dtype or shape changed", changed,
             [Column("name", "tensor", "code"), Column("a_dtype", "A dtype"), Column("a_shape", "A shape", "shape"),
              Column("b_dtype", "B dtype"), Column("b_shape", "B shape", "shape")])):
        parts.append(element("h3", f"{heading}: {len(rows):,}"))
        if rows:
            parts += [page.json_script(f"ck-{key}", rows), page.paged_table(f"ck-{key}", columns, id=f"{key}-table")]
    return parts


def _side(report: dict) -> list[Markup]:
    """The values by path, and the files added, removed and changed."""
    values = [{"path": v["path"], "a": v["a"], "b": v["b"]} for v in report["values"]]
    files = report["files"]
    listed = [{"path": p, "change": "added"} for p in files["added"]] + \
             [{"path": p, "change": "removed"} for p in files["removed"]]
    parts = [element("h3", f"Values changed: {len(values):,}")]
    if values:
        parts += [page.json_script("ck-values", values), page.paged_table(
            "ck-values", [Column("path", "path", "code"), Column("a", "in A", "code"), Column("b", "in B", "code")],
            id="values-table")]
    parts.append(element("h3", f"Files added or removed: {len(listed):,}"))
    if listed:
        parts += [page.json_script("ck-files", listed), page.paged_table(
            "ck-files", [Column("path", "path", "code"), Column("change", "change")], id="files-table")]
    parts.append(element("h3", f"Files changed: {len(files['changed']):,}"))
    for change in files["changed"][:SHOWN_DIFFS]:
        parts.append(_file_change(change))
    if len(files["changed"]) > SHOWN_DIFFS:
        rest = ", ".join(c["path"] for c in files["changed"][SHOWN_DIFFS:])
        parts.append(element("p", f"and {len(files['changed']) - SHOWN_DIFFS:,} more: ", element("code", rest)))
    return parts


def _file_side(what: dict) -> str:
    if "link" in what:
        return f"a link to {what['link']}"
    size = f"{what['size']:,} bytes"
    return f"{size}, sha256 {what['sha256'][:16]}" if "sha256" in what else size


def _file_change(change: dict) -> Markup:
    head = element("p", element("code", change["path"]), f": {_file_side(change['a'])} → {_file_side(change['b'])}"
                   + (f" (first at byte {change['differs_at']:,})" if "differs_at" in change else ""))
    if "diff" not in change:
        return head
    return page.join([head, page.unified_diff(change["diff"].splitlines(keepends=True))])
