"""The stats of tensors (the dict `ckptfs stats --json` prints) as HTML: the
section of the info report (a paged table built by the page's script, a
tensor's histogram drawn when its row is clicked, NaN and infinities in
red) and the fragment a notebook shows for `ckptfs.stats()` (a bounded
static table, each row with a small inline-SVG histogram)."""

from __future__ import annotations

from ..humanize import plural
from . import page
from .page import Column, Markup, element

#: rows of the fragment a notebook shows; the others are counted, not shown
FRAGMENT_ROWS = 50
#: rows of the table of tensors with NaN, infinities or an error
FLAGGED_ROWS = 200
#: JSON numbers beyond this lose digits in JavaScript: written as strings
EXACT_IN_JS = 2**53

COLUMNS = (Column("name", "tensor", "code"), Column("dtype", "dtype", "code"), Column("shape", "shape", "shape"),
           Column("counted", "counted", "int"), Column("min", "min", "float"), Column("max", "max", "float"),
           Column("mean", "mean", "float"), Column("std", "std", "float"), Column("nan", "NaN", "int"),
           Column("posinf", "+inf", "int"), Column("neginf", "\u2212inf", "int"), Column("zeros", "zeros", "int"),
           Column("error", "error", "text"))
NONFINITE = ("nan", "posinf", "neginf")


def nonfinite(tensor: dict) -> int:
    """NaN and infinite elements a tensor's stats counted."""
    return sum(tensor.get(key) or 0 for key in NONFINITE)


def flagged(stats: dict) -> list[dict]:
    """The tensors with NaN, infinities, or an error in place of stats."""
    return [t for t in stats["tensors"] if nonfinite(t) or t.get("error")]


def _exact_in_js(value):
    return str(value) if isinstance(value, int) and abs(value) > EXACT_IN_JS else value


def even_edges(low: float, high: float, bins: int) -> list[float]:
    """`np.linspace(low, high, bins + 1)`, computed as NumPy computes it (a
    float64 step, `i * step + low`, the last edge `high`), and as the page's
    script computes it again from the two ends."""
    step = (high - low) / bins
    return [i * step + low for i in range(bins)] + [high]


def _compact(histogram: dict | None) -> list | dict | None:
    """Even edges (`ckptfs stats` makes them so) as their two ends, `[low,
    high, counts]`: 32 bins of 100k tensors would be some 70 MB of edges in
    the page; uneven ones as they are."""
    if histogram is None:
        return None
    edges, counts = histogram["edges"], histogram["counts"]
    if edges == even_edges(edges[0], edges[-1], len(counts)):
        return [edges[0], edges[-1], counts]
    return histogram


#: what the page's script needs of each tensor: the table's columns, `elements`
#: for the histogram's line; `path` is not (the outline's rows point here by index)
KEYS = tuple(c.key for c in COLUMNS) + ("elements", "histogram")


def rows(stats: dict) -> dict:
    """The rows the page's script shows, by columns (`page.columnar`, with
    the texts Python shows each float as): the stats dict's tensors,
    integers too large for a JavaScript number as strings (their digits
    kept), histograms compact; `dequantized` only where a tensor is."""
    tensors = stats["tensors"]
    keys = KEYS + (("dequantized",) if any(t.get("dequantized") for t in tensors) else ())
    made = page.columnar(tensors, keys, floats=[c.key for c in COLUMNS if c.format == "float"])
    for key in keys:
        made["columns"][key] = [_compact(v) if key == "histogram" else _exact_in_js(v) for v in made["columns"][key]]
    return made


def description(stats: dict) -> str:
    """What the stats looked at, in a line."""
    tensors = len(stats["tensors"])
    how = (f"about {stats['sample']:,} elements of each tensor sampled (a smaller one whole)" if stats.get("sample")
           else "every element counted")
    return f"{plural(tensors, 'tensor', spec=',')}, {how}, histograms of {stats['bins']} bins over the finite values"


def flagged_table(stats: dict) -> Markup:
    """Each tensor with NaN, infinities or an error (the first FLAGGED_ROWS), in red."""
    bad = flagged(stats)
    shown = [(element("code", t["name"]), element("span", t["error"], class_="ri-bad") if t.get("error") else "",
              _count(t["nan"]), _count(t["posinf"]), _count(t["neginf"])) for t in bad[:FLAGGED_ROWS]]
    more = [element("p", f"and {len(bad) - FLAGGED_ROWS:,} more (sort the table below by NaN)")] \
        if len(bad) > FLAGGED_ROWS else []
    table = page.table(["tensor", "error", "NaN", "+inf", "\u2212inf"], shown, numeric=[False, False, True, True, True],
                       id="ri-flagged-table")
    return page.join([table, *more])


def _count(value) -> Markup:
    """A count, in red when not zero."""
    shown = page.number(value, "int")
    return element("span", shown, class_="ri-bad") if value else shown


def section(stats: dict, rows_id: str = "ckptfs-stats") -> Markup:
    """The table of every tensor's stats, built by the page's script a page
    at a time (sorted by a click on a heading, filtered by name), and the
    panel where a clicked row's histogram is drawn."""
    return page.join([
        element("p", description(stats), " \u2014 click a row for its histogram."),
        page.json_script(rows_id, rows(stats)),
        element("div", page.paged_table(rows_id, COLUMNS, page=50, filter_key="name"), class_="ri-pick",
                data_stats=rows_id),
        element("div", "", class_="ri-detail", hidden=True),
        element("script", Markup(SCRIPT)),
    ])


def _fragment_row(t: dict) -> list:
    picture = page.histogram(t["histogram"]["edges"], t["histogram"]["counts"], width=96, height=18) \
        if t.get("histogram") else ""
    if t.get("error"):
        return [element("code", t["name"]), t["dtype"], _shape(t["shape"]), element("span", t["error"], class_="ri-bad"),
                "", "", "", "", "", "", ""]
    return [element("code", t["name"]), t["dtype"], _shape(t["shape"]), page.number(t["min"]),
            page.number(t["max"]), page.number(t["mean"]), page.number(t["std"]), _count(t["nan"]),
            _count(t["posinf"]), _count(t["neginf"]), picture]


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def fragment(stats: dict) -> Markup:
    """What a notebook shows for `ckptfs.stats()`: the line of what was
    counted, the tensors with NaN or inf, and the first FRAGMENT_ROWS
    tensors with their histograms; no script, whatever the count."""
    tensors, bad = stats["tensors"], flagged(stats)
    parts = [element("p", element("strong", stats["source"]), f" ({stats['format']}): {description(stats)}")]
    if bad:
        parts.append(element("p", f"{plural(len(bad), 'tensor', spec=',')} with NaN, infinities or an error",
                             class_="ri-bad"))
    shown = tensors[:FRAGMENT_ROWS]
    parts.append(page.table(["tensor", "dtype", "shape", "min", "max", "mean", "std", "NaN", "+inf", "\u2212inf",
                             "histogram"], (_fragment_row(t) for t in shown),
                            numeric=[False, False, False, True, True, True, True, True, True, True]))
    if len(tensors) > FRAGMENT_ROWS:
        parts.append(element("p", f"and {len(tensors) - FRAGMENT_ROWS:,} more tensors (`.as_dict()` holds them all; "
                             "`ckptfs info --html` pages through them)"))
    return page.fragment(element("style", Markup(STYLE)), *parts)


STYLE = """
.ckptfs-report .ri-bad,.ckptfs-report td[data-key=nan]:not([data-value="0"]):not([data-value=""]),
.ckptfs-report td[data-key=posinf]:not([data-value="0"]):not([data-value=""]),
.ckptfs-report td[data-key=neginf]:not([data-value="0"]):not([data-value=""]),
.ckptfs-report td[data-key=nonfinite]:not([data-value="0"]):not([data-value=""]),
.ckptfs-report td[data-key=error]:not([data-value=""]){color:#b42318;background:#ffebe9;font-weight:600}
.ckptfs-report .ri-pick tbody tr{cursor:pointer}
.ckptfs-report .ri-pick tbody tr:hover{background:#f4f5f7}
.ckptfs-report tr.ri-picked{background:#e8eefc}
.ckptfs-report .ri-detail{border:1px solid #d8dbe0;padding:.5em .8em;margin:.5em 0;background:#fafbfc}
.ckptfs-report .ri-detail svg text{font-size:11px;fill:#1d1f23}
.ckptfs-report .ri-detail rect{fill:#3b528b}
.ckptfs-report .ri-verdict-safe{color:#1a7f37;font-weight:600}
.ckptfs-report .ri-verdict-dangerous,.ckptfs-report .ri-verdict-error{color:#b42318;font-weight:600}
"""

#: a click on a row of a `.ri-pick` table (the stats' rows, the outline's)
#: draws that tensor's histogram in the `.ri-detail` panel after the table,
#: from the stats rows embedded as `data-stats`: by the row's name, or for
#: the outline (`data-rows`, its embedded rows) by its row's `stat` index
SCRIPT = r"""
(function () {
  "use strict";
  // tensors by name or path in a Map: a tensor named "__proto__" or "constructor" is a name
  var SVG = "http://www.w3.org/2000/svg", index = new Map();
  function byName(id) {
    if (!index.has(id)) {
      var named = new Map();
      window.ckptfsReport.rows(id).forEach(function (t) { named.set(t.name, t); });
      index.set(id, named);
    }
    return index.get(id);
  }
  // the stats of a clicked row: the outline's row holds their index (`stat`), the table's row the name
  function picked(host, tr) {
    var all = window.ckptfsReport.rows(host.dataset.stats);
    if (host.dataset.rows) {
      var row = tr.dataset.row === undefined ? null : window.ckptfsReport.rows(host.dataset.rows)[+tr.dataset.row];
      return row && typeof row.stat === "number" ? all[row.stat] : null;
    }
    var cell = tr.querySelector("td[data-key=name]");
    return cell ? byName(host.dataset.stats).get(cell.dataset.value) || null : null;
  }
  function svg(tag, attributes, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attributes).forEach(function (k) { node.setAttribute(k, attributes[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function line(text, cls) {
    var p = document.createElement("p");
    p.textContent = text;
    if (cls) p.className = cls;
    return p;
  }
  // the edges as ckptfs stats gave them, or as NumPy's linspace made them from their ends
  function edges(h) {
    if (!Array.isArray(h)) return h.edges;
    var k = h[2].length, low = h[0], high = h[1], step = (high - low) / k, out = [];
    for (var i = 0; i < k; i++) out.push(i * step + low);
    out.push(high);
    return out;
  }
  function counts(h) {
    return Array.isArray(h) ? h[2] : h.counts;
  }
  function histogram(t, g4) {
    var h = {edges: edges(t.histogram), counts: counts(t.histogram)}, w = 560, ht = 150, pad = 40;
    var most = Math.max.apply(null, h.counts.concat([1])), step = (w - 2 * pad) / h.counts.length;
    var picture = svg("svg", {width: w, height: ht + 34, role: "img", "class": "ri-hist"});
    h.counts.forEach(function (c, i) {
      var hh = (ht - 8) * c / most;
      var bar = svg("rect", {x: pad + i * step, y: ht - hh, width: Math.max(step - 1, 1), height: hh, "data-count": c,
                           "data-low": h.edges[i], "data-high": h.edges[i + 1]});
      bar.appendChild(svg("title", {}, "[" + g4(h.edges[i]) + ", " + g4(h.edges[i + 1]) + "): " + c.toLocaleString("en-US")));
      picture.appendChild(bar);
    });
    picture.appendChild(svg("text", {x: pad, y: ht + 16, "text-anchor": "start"}, g4(h.edges[0])));
    picture.appendChild(svg("text", {x: w - pad, y: ht + 16, "text-anchor": "end"}, g4(h.edges[h.edges.length - 1])));
    picture.appendChild(svg("text", {x: pad - 4, y: 12, "text-anchor": "end"}, most.toLocaleString("en-US")));
    picture.appendChild(svg("text", {x: w / 2, y: ht + 32, "text-anchor": "middle"}, "values (finite); bar height: elements"));
    return picture;
  }
  function show(panel, t) {
    var g4 = window.ckptfsReport.format.float;
    panel.textContent = "";
    panel.hidden = false;
    var title = document.createElement("h3");
    title.textContent = t.name;
    panel.appendChild(title);
    if (t.error) { panel.appendChild(line(t.error, "ri-bad")); return; }
    // the text Python made (with_text), else a dash where no finite value was counted
    function shown(key) {
      var v = t[key];
      return typeof t[key + "~"] === "string" ? t[key + "~"] : (v === null || v === undefined ? "\u2013" : g4(v));
    }
    panel.appendChild(line(t.dtype + " [" + t.shape.join(", ") + "], " + t.counted.toLocaleString("en-US") + " of " +
      t.elements.toLocaleString("en-US") + " elements counted; min " + shown("min") + ", max " + shown("max") +
      ", mean " + shown("mean") + ", std " + shown("std")));
    var bad = (t.nan || 0) + (t.posinf || 0) + (t.neginf || 0);
    if (bad) panel.appendChild(line("not in the histogram: " + t.nan + " NaN, " + t.posinf + " +inf, " + t.neginf + " \u2212inf", "ri-bad"));
    if (t.histogram && counts(t.histogram).length) panel.appendChild(histogram(t, g4));
    else panel.appendChild(line("no histogram: no finite value counted"));
  }
  document.addEventListener("click", function (event) {
    var tr = event.target.closest(".ri-pick tbody tr"), host = tr && tr.closest(".ri-pick");
    if (!tr || event.target.closest(".ck-toggle, button")) return;
    var t = picked(host, tr);
    if (!t) return;
    host.querySelectorAll("tr.ri-picked").forEach(function (r) { r.classList.remove("ri-picked"); });
    tr.classList.add("ri-picked");
    show(host.nextElementSibling, t);
  });
})();
"""
