"""The shell every HTML report shares: one self-contained document (styles
and script inlined, figures as inline SVG or HTML, no URL fetched), HTML
escaping, tables, colour scales, and data embedded as JSON for the inlined
script to show lazily.

Markup is a `str` that is already HTML; every other value handed to these
helpers is escaped. Large tables are not written as HTML: their rows go
into a `<script type="application/json">` element (`json_script`) and the
script builds the rows of one page (`paged_table`) or of the opened
folders (`outline`) when they are shown, so that 100k tensors make a page
of a few thousand elements. Every number shown carries its exact value in
a `data-value` attribute (and a `title`), as the `--json` output writes it.

The styles are scoped under `.ckptfs-report`, so that a `fragment` (a
notebook's `_repr_html_`) leaves the notebook's own styles alone.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..humanize import human_size
from ..version import __version__


class Markup(str):
    """Text that is HTML already: the helpers here insert it as it is."""


def escape(value) -> Markup:
    """`value` as HTML text: Markup as it is, anything else escaped (quotes
    too, and what UTF-8 cannot encode: `visible`)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(visible(str(value)), quote=True))


#: a lone surrogate (a name read with surrogateescape, or JSON's "\ud800"): UTF-8 has no spelling for it
_SURROGATE = re.compile("[\ud800-\udfff]")


def visible(text: str) -> str:
    """`text` with each lone surrogate written as its escape (`\\udcff`),
    so that a page stays valid UTF-8 and shows the name as it is."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encoded(document: str) -> bytes:
    """A page as UTF-8 (anything unencodable that reached it written as an escape)."""
    return document.encode("utf-8", "backslashreplace")


#: the longest label a heatmap shows whole (its whole text is in its title)
LONGEST_LABEL = 40


def short(label: str, longest: int = LONGEST_LABEL) -> str:
    """`label`, or its end after "…" where it is longer than `longest`."""
    return label if len(label) <= longest else "…" + label[-longest + 1:]


def join(parts: Iterable) -> Markup:
    """The parts, each escaped unless Markup, one after the other."""
    return Markup("".join(escape(part) for part in parts))


def element(tag: str, *children, **attributes) -> Markup:
    """`<tag attributes>children</tag>`; an attribute `class_` is written
    `class`, `data_x` is `data-x`; None and False leave an attribute out,
    True writes it bare."""
    written = []
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        written.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    return Markup(f"<{tag}{''.join(written)}>{join(children)}</{tag}>")


# -- numbers, written the same way here and by the inlined script ----------------


def format_float(value) -> str:
    """Four significant digits (`{:.4g}`); "nan", "inf", "-inf" as the
    `--json` output writes them."""
    if isinstance(value, str):
        return value
    return f"{float(value):.4g}"


def format_int(value: int) -> str:
    return f"{value:,}"


def exact(value) -> str:
    """The value as the `--json` output writes it (for `data-value`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value) if not isinstance(value, str) else value


def number(value, kind: str = "float", **attributes) -> Markup:
    """A number in a `<span>` whose `data-value` and `title` hold its exact
    value; `kind` is "float", "int" or "bytes"; None shows a dash."""
    if value is None:
        return element("span", "–", class_="ck-none", data_value="", **attributes)
    shown = {"float": format_float, "int": format_int, "bytes": human_size}[kind](value)
    return element("span", shown, class_="ck-num", data_value=exact(value), title=exact(value), **attributes)


# -- the document -------------------------------------------------------------------


def document(title: str, *parts, script: bool = True) -> str:
    """A whole HTML document: `title`, the inlined styles, the parts, and
    (unless `script` is False) the inlined script that shows embedded data."""
    body = element("div", element("h1", title), *parts, footer(), class_="ckptfs-report")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # nothing may be fetched: a report is read from disk, offline
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}{element('script', Markup(SCRIPT)) if script else ''}</body></html>\n"
    )


def fragment(*parts) -> Markup:
    """The parts with the styles, for a notebook's `_repr_html_`: no
    `<html>`, no script (a notebook may not run it), nothing fetched."""
    return Markup(f"<div class=\"ckptfs-report\"><style>{STYLE}</style>{join(parts)}</div>")


def footer() -> Markup:
    return element("p", f"made by ckptfs {__version__}", class_="ck-footer")


def section(heading: str, *parts, open_: bool = True, anchor: str | None = None) -> Markup:
    """A collapsible section (`<details>`); the tables inside a closed one
    are built when it is first opened."""
    return element("details", element("summary", element("h2", heading)), *parts, open=open_, id=anchor,
                   class_="ck-section")


def summary_list(items: Sequence[tuple[str, object]]) -> Markup:
    """Terms and their values, as a `<dl>`."""
    return element("dl", *(join([element("dt", term), element("dd", value)]) for term, value in items),
                   class_="ck-summary")


def table(columns: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[bool] = (), **attributes) -> Markup:
    """A small table written as HTML (a few hundred rows at most: larger
    ones go through `json_script` and `paged_table`); `numeric[i]`
    right-aligns column i."""
    aligned = list(numeric) + [False] * (len(columns) - len(numeric))

    def cell(tag, value, i):
        return element(tag, value, class_="ck-n" if aligned[i] else None)

    head = element("tr", *(cell("th", c, i) for i, c in enumerate(columns)))
    body = (element("tr", *(cell("td", v, i) for i, v in enumerate(row))) for row in rows)
    return element("table", element("thead", head), element("tbody", *body), class_="ck-table", **attributes)


def unified_diff(lines: Iterable[str]) -> Markup:
    """A unified diff's lines, coloured: the two file lines before the
    first hunk, additions, removals, hunk heads (a removed `---` line is a
    removal, not a file line)."""
    shown, in_hunks = [], False
    for line in lines:
        in_hunks = in_hunks or line.startswith("@@")
        if not in_hunks and line.startswith(("+++ ", "--- ")):
            kind = "ck-file"
        else:
            kind = {"+": "ck-add", "-": "ck-del", "@": "ck-hunk"}.get(line[:1])
        shown.append(element("span", line.rstrip("\n") + "\n", class_=kind))
    return element("pre", *shown, class_="ck-diff")


# -- data embedded for the script -------------------------------------------------------


#: what `json_script` writes as an escape, in one pass: `<`, `>` and `&` (no `</script>` or `<!--` in a name
#: ends the element or opens a comment), the two line separators JavaScript once refused in strings, and each
#: lone surrogate as the six characters `\udcff` (JSON's own escape of it would read back as the surrogate)
_IN_SCRIPT = {**{ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"},
              **{code: f"\\\\u{code:04x}" for code in range(0xD800, 0xE000)}}


def json_script(element_id: str, data) -> Markup:
    """`data` as JSON inside `<script type="application/json">`, escaped as
    `_IN_SCRIPT` says. Non-finite floats must have been made strings
    already (compare.json_safe): JSON has none."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"), ensure_ascii=False).translate(_IN_SCRIPT)
    return Markup(f'<script type="application/json" id="{escape(element_id)}">{text}</script>')


def columnar(rows: Sequence[Mapping], keys: Sequence[str], floats: Sequence[str] = ()) -> dict:
    """Rows as one list per key, `{"columns": {key: [value of each row]}}`,
    for `json_script`: each key written once rather than once per row (a
    third of a 100k-tensor page was key names). The script reads it back as
    rows. Beside each key of `floats`, the texts `with_text` would add."""
    columns = {key: [row.get(key) for row in rows] for key in keys}
    for key in floats:
        columns[key + TEXT] = [format_float(v) if isinstance(v, float) else None for v in columns[key]]
    return {"columns": columns}


#: the suffix of a row's key that holds the text a float is shown as (`with_text`)
TEXT = "~"


def with_text(rows: Iterable[dict], columns: Sequence[Column]) -> list[dict]:
    """The rows with, beside each float of a "float" column (key `k`), the
    text `format_float` shows for it (key `k~`), which the script shows as
    it is: JavaScript rounds a tie such as 1.0625 away from zero, Python the
    exact binary value half to even, and a number must read the same in
    every part of a page."""
    floats = [c.key for c in columns if c.format == "float"]
    made = []
    for row in rows:
        texts = {k + TEXT: format_float(row[k]) for k in floats if isinstance(row.get(k), float)}
        made.append({**row, **texts} if texts else row)
    return made


@dataclass(frozen=True)
class Column:
    """A column of a table the script builds: `key` of each row (a dict),
    its heading, and how to show it: "text", "code" (monospace text),
    "int", "float", "bytes", "shape" (a list of ints)."""

    key: str
    label: str
    format: str = "text"

    def as_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "format": self.format}


def paged_table(rows_id: str, columns: Sequence[Column], page: int = 50, filter_key: str | None = None,
                **attributes) -> Markup:
    """A table of the rows embedded by `json_script(rows_id, rows)` (a list
    of dicts), built one page at a time by the script; a click on a heading
    sorts by it; `filter_key` adds a box that keeps the rows whose value
    there holds the text typed."""
    return element("div", element("noscript", "This table is drawn by the page's script."), class_="ck-paged",
                   data_rows=rows_id, data_columns=json.dumps([c.as_dict() for c in columns]),
                   data_page=str(page), data_filter=filter_key, **attributes)


def outline(rows_id: str, columns: Sequence[Column], name_key: str = "name", separator: str = ".",
            **attributes) -> Markup:
    """The embedded rows as a tree of their dotted names (`name_key` split
    at `separator`): the script shows the top folders, and makes a folder's
    rows when it is opened (at most a few hundred at a time)."""
    return element("div", element("noscript", "This outline is drawn by the page's script."), class_="ck-outline",
                   data_rows=rows_id, data_columns=json.dumps([c.as_dict() for c in columns]),
                   data_key=name_key, data_sep=separator, **attributes)


# -- colours and small figures ------------------------------------------------------------

#: a perceptually even scale from low to high (viridis' ends and midpoints)
_STOPS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
          (1.0, (253, 231, 37)))


def colour(fraction: float) -> str:
    """The scale's colour at `fraction` (0 low .. 1 high, clipped) as #rrggbb."""
    f = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 1.0
    for (f0, c0), (f1, c1) in zip(_STOPS, _STOPS[1:]):
        if f <= f1:
            t = (f - f0) / (f1 - f0)
            return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(c0, c1))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ColourScale:
    """Values from `low` to `high` on the colour scale, evenly or (`log`)
    by their logarithm (then both ends are positive)."""

    low: float
    high: float
    log: bool = False

    @classmethod
    def spanning(cls, values: Iterable[float], log: bool = True) -> ColourScale:
        """The scale of the positive finite `values` (on a log scale their
        range, else 0 to their largest); 1e-6 to 1 if there are none."""
        positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        if not positive:
            return cls(1e-6, 1.0, log)
        low, high = (min(positive), max(positive)) if log else (0.0, max(positive))
        if high <= low:
            low, high = (high / 10, high) if log else (0.0, high)
        return cls(low, high, log)

    def fraction(self, value: float) -> float:
        if not math.isfinite(value):
            return 1.0
        if self.log:
            if value <= 0:
                return 0.0
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)

    def colour(self, value: float) -> str:
        return colour(self.fraction(value))

    def legend(self, label: str, width: int = 240, height: int = 12) -> Markup:
        """An inline SVG bar of the scale from low to high, its ends written."""
        stops = "".join(f'<stop offset="{f:g}" stop-color="{colour(f)}"/>' for f, _ in _STOPS)
        low, high = format_float(self.low), format_float(self.high)
        svg = (f'<svg class="ck-legend" width="{width + 120}" height="{height + 18}" role="img" '
               f'aria-label="{escape(label)}"><defs><linearGradient id="ck-scale">{stops}</linearGradient></defs>'
               f'<rect x="60" y="2" width="{width}" height="{height}" fill="url(#ck-scale)"/>'
               f'<text x="56" y="{height}" text-anchor="end">{escape(low)}</text>'
               f'<text x="{width + 64}" y="{height}">{escape(high)}</text>'
               f'<text x="60" y="{height + 16}">{escape(label)}{" (log scale)" if self.log else ""}</text></svg>')
        return Markup(svg)


def bar(fraction: float, width: int = 80, height: int = 10, title: str | None = None) -> Markup:
    """A horizontal bar of `fraction` (0..1) of its width, as inline SVG."""
    f = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 1.0
    tip = f"<title>{escape(title)}</title>" if title else ""
    return Markup(f'<svg class="ck-bar" width="{width}" height="{height}">{tip}'
                  f'<rect width="{width}" height="{height}" class="ck-bar-bg"/>'
                  f'<rect width="{f * width:.2f}" height="{height}" class="ck-bar-fg"/></svg>')


def histogram(edges: Sequence[float], counts: Sequence[int], width: int = 160, height: int = 40) -> Markup:
    """Counts over bins as inline SVG bars (heights relative to the largest);
    each bar's title gives its range and count."""
    if not counts:
        return Markup("")
    largest = max(max(counts), 1)
    step = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = height * count / largest
        tip = f"[{format_float(edges[i])}, {format_float(edges[i + 1])}): {count:,}"
        bars.append(f'<rect x="{i * step:.2f}" y="{height - h:.2f}" width="{max(step - 0.5, 0.5):.2f}" '
                    f'height="{h:.2f}" data-count="{count}"><title>{escape(tip)}</title></rect>')
    return Markup(f'<svg class="ck-hist" width="{width}" height="{height}" role="img">{"".join(bars)}</svg>')


@dataclass(frozen=True)
class HeatCell:
    """A heatmap cell: its value (None or NaN: no value, e.g. not
    comparable), the words of its tooltip, and whether anything in it
    changed: False draws it hatched as unchanged whatever its value, True
    coloured even at 0 (the scale's low end); None (unknown) lets a value
    of exactly 0 stand for unchanged."""

    value: float | None
    title: str
    changed: bool | None = None


def heatmap(rows: Sequence[str], columns: Sequence[str], cells: Mapping[tuple[str, str], HeatCell],
            scale: ColourScale, **attributes) -> Markup:
    """A grid of `rows` × `columns` as an HTML table: a cell coloured on
    `scale`, with `data-value`, `data-row`, `data-column` and a title; a
    value of exactly zero drawn apart (class `ck-zero`), a pair with no
    cell left empty (`ck-empty`)."""
    head = element("tr", element("th", ""), *(element("th", element("span", short(c)), class_="ck-col", title=c)
                                              for c in columns))
    body = []
    for row in rows:
        tds = [element("th", short(row), class_="ck-row", title=row)]
        for column in columns:
            cell = cells.get((row, column))
            tds.append(_heat_td(row, column, cell, scale))
        body.append(element("tr", *tds))
    return element("table", element("thead", head), element("tbody", *body), class_="ck-heat", **attributes)


def _heat_td(row: str, column: str, cell: HeatCell | None, scale: ColourScale) -> Markup:
    if cell is None:
        return element("td", "", class_="ck-empty")
    common = {"data_row": row, "data_column": column, "title": cell.title}
    unchanged = cell.changed is False or (cell.changed is None and cell.value == 0)
    if unchanged:
        return element("td", "0", class_="ck-cell ck-zero", data_value=exact(cell.value or 0.0), **common)
    if cell.value is None or math.isnan(cell.value):
        return element("td", "?", class_="ck-cell ck-unknown", data_value=exact(cell.value) if cell.value else "",
                       **common)
    return element("td", "", class_="ck-cell", data_value=exact(cell.value),
                   style=f"background:{scale.colour(cell.value)}", **common)


STYLE = """
.ckptfs-report{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1f23;max-width:1200px;
 margin:0 auto;padding:8px 16px}
.ckptfs-report h1{font-size:1.5em;margin:.3em 0 .6em}
.ckptfs-report h2{font-size:1.15em;display:inline;margin:0}
.ckptfs-report .ck-section{margin:1.2em 0;border-top:1px solid #d8dbe0;padding-top:.5em}
.ckptfs-report summary{cursor:pointer;margin-bottom:.5em}
.ckptfs-report code,.ckptfs-report .ck-code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em}
.ckptfs-report .ck-summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em;margin:.5em 0}
.ckptfs-report .ck-summary dt{color:#5a606b}
.ckptfs-report .ck-summary dd{margin:0}
.ckptfs-report .ck-verdict{font-size:1.15em;font-weight:600}
.ckptfs-report .ck-same{color:#1a7f37}
.ckptfs-report .ck-different{color:#b35900}
.ckptfs-report table{border-collapse:collapse}
.ckptfs-report .ck-table th,.ckptfs-report .ck-table td{padding:.2em .6em;border-bottom:1px solid #eceef1;
 text-align:left;vertical-align:top}
.ckptfs-report .ck-table th{background:#f4f5f7;position:sticky;top:0;cursor:default}
.ckptfs-report .ck-table th.ck-sortable{cursor:pointer}
.ckptfs-report .ck-table th.ck-sorted::after{content:" \\25BE"}
.ckptfs-report .ck-table th.ck-sorted-up::after{content:" \\25B4"}
.ckptfs-report .ck-n{text-align:right;font-variant-numeric:tabular-nums}
.ckptfs-report .ck-none{color:#9aa0a8}
.ckptfs-report .ck-nav{margin:.4em 0;display:flex;gap:.6em;align-items:center}
.ckptfs-report .ck-nav button{font:inherit;padding:.1em .6em}
.ckptfs-report .ck-nav input{font:inherit;padding:.1em .4em;min-width:16em}
.ckptfs-report .ck-outline .ck-toggle{cursor:pointer;user-select:none}
.ckptfs-report .ck-outline .ck-toggle::before{content:"\\25B8 ";color:#5a606b}
.ckptfs-report .ck-outline .ck-open::before{content:"\\25BE "}
.ckptfs-report .ck-count{color:#5a606b;font-size:.9em}
.ckptfs-report .ck-heat{font-size:12px;display:block;overflow:auto;max-width:100%;max-height:90vh}
.ckptfs-report .ck-heat td{width:26px;min-width:26px;height:22px;border:1px solid #fff;text-align:center;
 padding:0;color:#5a606b;font-size:10px}
.ckptfs-report .ck-heat td.ck-zero{background:repeating-linear-gradient(45deg,#f4f5f7 0 3px,#dfe2e6 3px 5px);
 color:#1d1f23;font-weight:600}
.ckptfs-report .ck-heat td.ck-unknown{background:#eceef1}
.ckptfs-report .ck-heat td.ck-empty{background:none}
.ckptfs-report .ck-heat th.ck-row{text-align:right;padding-right:.5em;font-weight:normal;white-space:nowrap}
.ckptfs-report .ck-heat th.ck-col{vertical-align:bottom;height:9em;padding:0 0 4px;font-weight:normal}
.ckptfs-report .ck-heat th.ck-col span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.ckptfs-report .ck-legend text{font-size:11px;fill:#1d1f23}
.ckptfs-report .ck-bar-bg{fill:#eceef1}
.ckptfs-report .ck-bar-fg{fill:#3b528b}
.ckptfs-report .ck-hist rect{fill:#3b528b}
.ckptfs-report .ck-diff{background:#f7f8fa;padding:.5em;overflow-x:auto;font-size:.9em}
.ckptfs-report .ck-diff .ck-add{color:#1a7f37;background:#e6ffec}
.ckptfs-report .ck-diff .ck-del{color:#b42318;background:#ffebe9}
.ckptfs-report .ck-diff .ck-hunk{color:#6639ba}
.ckptfs-report .ck-diff .ck-file{font-weight:600}
.ckptfs-report .ck-footer{color:#9aa0a8;font-size:.85em;margin-top:2em}
"""

#: builds the tables of embedded rows (`paged_table`, `outline`) when they are
#: shown: at load those in open sections, the others when their section opens
SCRIPT = r"""
(function () {
  "use strict";
  var cache = Object.create(null);
  // the embedded rows: a list of objects, or `columnar`'s one list per key read back as one
  function rows(id) {
    if (!(id in cache)) {
      var data = JSON.parse(document.getElementById(id).textContent);
      cache[id] = Array.isArray(data) ? data : fromColumns(data.columns);
    }
    return cache[id];
  }
  function fromColumns(columns) {
    var keys = Object.keys(columns), n = keys.length ? columns[keys[0]].length : 0, out = new Array(n);
    for (var i = 0; i < n; i++) {
      var row = {};
      for (var k = 0; k < keys.length; k++) row[keys[k]] = columns[keys[k]][i];
      out[i] = row;
    }
    return out;
  }
  function g4(v) {
    if (typeof v === "string") return v;
    if (v === 0) return "0";
    var parts = v.toExponential(3).split("e"), e = parseInt(parts[1], 10);
    if (e >= -4 && e < 4) {
      var s = v.toFixed(Math.max(3 - e, 0));
      return s.indexOf(".") < 0 ? s : s.replace(/0+$/, "").replace(/\.$/, "");
    }
    var m = parts[0].indexOf(".") < 0 ? parts[0] : parts[0].replace(/0+$/, "").replace(/\.$/, "");
    return m + "e" + (e < 0 ? "-" : "+") + (Math.abs(e) < 10 ? "0" : "") + Math.abs(e);
  }
  function bytes(n) {
    if (n < 1000) return Math.round(n) + (Math.round(n) === 1 ? " byte" : " bytes");
    var units = ["kB", "MB", "GB", "TB"];
    for (var i = 0; i < units.length; i++) {
      n /= 1000;
      if (n < 1000 || i === units.length - 1)
        return (n < 100 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US")) + " " + units[i];
    }
  }
  var FORMATS = {
    text: function (v) { return String(v); },
    code: function (v) { return String(v); },
    int: function (v) { return typeof v === "number" ? v.toLocaleString("en-US") : String(v); },
    float: g4,
    bytes: function (v) { return typeof v === "number" ? bytes(v) : String(v); },
    shape: function (v) { return "[" + v.join(", ") + "]"; }
  };
  function exact(v) {
    return typeof v === "string" ? v : JSON.stringify(v);
  }
  function cell(row, column) {
    var td = document.createElement("td"), v = row[column.key];
    if (v === null || v === undefined) {
      td.textContent = "\u2013";
      td.className = "ck-none";
      td.dataset.value = "";
    } else {
      var text = row[column.key + "~"];  // the text Python shows (with_text)
      td.textContent = typeof text === "string" ? text : FORMATS[column.format](v);
      td.dataset.value = exact(v);
      if (column.format !== "text" && column.format !== "code") {
        td.className = "ck-n";
        td.title = exact(v);
      } else if (column.format === "code") td.className = "ck-code";
    }
    td.dataset.key = column.key;
    return td;
  }
  function heading(columns, onSort) {
    var tr = document.createElement("tr");
    columns.forEach(function (column, i) {
      var th = document.createElement("th");
      th.textContent = column.label;
      if (onSort) {
        th.className = "ck-sortable";
        th.addEventListener("click", function () { onSort(i, th); });
      }
      tr.appendChild(th);
    });
    var thead = document.createElement("thead");
    thead.appendChild(tr);
    return thead;
  }
  function magnitude(v) {
    // a number, "inf" and "-inf" as the --json output writes them; NaN for anything else
    return typeof v === "number" ? v : (v === "inf" ? Infinity : (v === "-inf" ? -Infinity : NaN));
  }
  function compare(a, b, numeric) {
    var x = numeric ? magnitude(a) : String(a), y = numeric ? magnitude(b) : String(b);
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  function sorted(all, key, numeric, desc) {
    // numbers by value (infinities at the ends), texts by text; then "nan", then none
    var kept = [], nan = [], rest = [];
    all.forEach(function (row) {
      var v = row[key];
      if (numeric ? !isNaN(magnitude(v)) : v !== null && v !== undefined) kept.push(row);
      else (v === "nan" ? nan : rest).push(row);
    });
    kept.sort(function (a, b) { return desc ? compare(b[key], a[key], numeric) : compare(a[key], b[key], numeric); });
    return kept.concat(nan, rest);
  }
  function button(text, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.addEventListener("click", onClick);
    return b;
  }
  function paged(box) {
    var all = rows(box.dataset.rows), columns = JSON.parse(box.dataset.columns);
    var size = parseInt(box.dataset.page, 10), shown = all, start = 0;
    var table = document.createElement("table"), tbody = document.createElement("tbody");
    var nav = document.createElement("div"), where = document.createElement("span");
    var sortedBy = -1, up = false;
    table.className = "ck-table";
    nav.className = "ck-nav";
    function draw() {
      tbody.textContent = "";
      shown.slice(start, start + size).forEach(function (row) {
        var tr = document.createElement("tr");
        columns.forEach(function (column) { tr.appendChild(cell(row, column)); });
        tbody.appendChild(tr);
      });
      where.textContent = shown.length ? (start + 1) + "\u2013" + Math.min(start + size, shown.length) +
        " of " + shown.length.toLocaleString("en-US") : "no rows";
    }
    function sort(i, th) {
      up = sortedBy === i ? !up : false;
      sortedBy = i;
      var key = columns[i].key, numeric = columns[i].format !== "text" && columns[i].format !== "code";
      var desc = numeric !== up;
      shown = sorted(shown, key, numeric, desc);
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.classList.remove("ck-sorted", "ck-sorted-up"); });
      th.classList.add(desc ? "ck-sorted" : "ck-sorted-up");
      start = 0;
      draw();
    }
    table.appendChild(heading(columns, sort));
    table.appendChild(tbody);
    nav.appendChild(button("\u2039 previous", function () { start = Math.max(start - size, 0); draw(); }));
    nav.appendChild(button("next \u203a", function () { if (start + size < shown.length) { start += size; draw(); } }));
    nav.appendChild(where);
    if (box.dataset.filter) {
      var input = document.createElement("input"), key = box.dataset.filter;
      input.type = "search";
      input.placeholder = "filter by " + key;
      input.addEventListener("input", function () {
        var text = input.value;
        shown = text ? all.filter(function (row) { return String(row[key]).indexOf(text) >= 0; }) : all;
        start = 0;
        draw();
      });
      nav.appendChild(input);
    }
    box.textContent = "";
    box.appendChild(nav);
    box.appendChild(table);
    draw();
  }
  var CHUNK = 200;
  // a folder's count is of the rows below it, not its own; children keyed by
  // name with no prototype: a name such as "__proto__" or "constructor" is a name
  function tree(all, key, sep) {
    var root = {children: Object.create(null), order: [], count: 0};
    all.forEach(function (row, index) {
      var parts = String(row[key]).split(sep), node = root;
      parts.forEach(function (part, depth) {
        node.count++;
        if (!(part in node.children)) {
          node.children[part] = {label: part, children: Object.create(null), order: [], count: 0, row: -1,
                                 depth: depth};
          node.order.push(part);
        }
        node = node.children[part];
      });
      node.row = index;
    });
    return root;
  }
  function outlineBox(box) {
    var all = rows(box.dataset.rows), columns = JSON.parse(box.dataset.columns);
    var root = tree(all, box.dataset.key, box.dataset.sep);
    var table = document.createElement("table"), tbody = document.createElement("tbody");
    table.className = "ck-table ck-outline-table";
    function line(node) {
      var tr = document.createElement("tr"), first = document.createElement("td");
      var label = document.createElement("span");
      label.textContent = node.label;
      first.style.paddingLeft = (0.6 + node.depth * 1.2) + "em";
      first.appendChild(label);
      first.className = "ck-code";
      tr.appendChild(first);
      if (node.order.length) {
        label.className = "ck-toggle";
        var count = document.createElement("span");
        count.className = "ck-count";
        count.textContent = " (" + node.count.toLocaleString("en-US") + ")";
        first.appendChild(count);
        label.addEventListener("click", function () { toggle(node, tr, label); });
      }
      columns.forEach(function (column, i) {
        if (i === 0) return;
        tr.appendChild(node.row >= 0 ? cell(all[node.row], column) : document.createElement("td"));
      });
      if (node.row >= 0) {
        tr.dataset.value = String(all[node.row][box.dataset.key]);
        tr.dataset.row = String(node.row);  // its index in the embedded rows
      }
      return tr;
    }
    function children(node, after, from) {
      var made = [], anchor = after;
      node.order.slice(from, from + CHUNK).forEach(function (part) {
        var tr = line(node.children[part]);
        anchor.after(tr);
        anchor = tr;
        made.push(tr);
      });
      if (from + CHUNK < node.order.length) {
        var more = document.createElement("tr"), td = document.createElement("td");
        td.colSpan = columns.length;
        td.appendChild(button("show more (" + (node.order.length - from - CHUNK) + " left)", function () {
          more.remove();
          node.made = node.made.concat(children(node, anchor, from + CHUNK).slice(0));
        }));
        more.appendChild(td);
        anchor.after(more);
        made.push(more);
      }
      return made;
    }
    function close(node) {
      (node.made || []).forEach(function (tr) { tr.remove(); });
      node.order.forEach(function (part) { if (node.children[part].made) close(node.children[part]); });
      node.made = null;
    }
    function toggle(node, tr, label) {
      if (node.made) { close(node); label.classList.remove("ck-open"); return; }
      node.made = children(node, tr, 0);
      label.classList.add("ck-open");
    }
    table.appendChild(heading(columns, null));
    table.appendChild(tbody);
    var top = document.createElement("tr");
    tbody.appendChild(top);
    root.depth = -1;
    root.made = children(root, top, 0);
    top.remove();
    box.textContent = "";
    box.appendChild(table);
  }
  function build(scope) {
    scope.querySelectorAll(".ck-paged:not([data-built]), .ck-outline:not([data-built])").forEach(function (box) {
      var closed = box.parentElement.closest("details:not([open])");
      if (closed) return;
      box.dataset.built = "1";
      (box.classList.contains("ck-paged") ? paged : outlineBox)(box);
    });
  }
  document.querySelectorAll("details").forEach(function (d) {
    d.addEventListener("toggle", function () { if (d.open) build(d); });
  });
  // set first: the histogram panel's script uses it, whatever a table's build does
  window.ckptfsReport = {format: FORMATS, rows: rows};
  build(document);
  document.documentElement.dataset.ready = "1";
})();
"""
