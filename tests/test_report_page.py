"""The page shell of the HTML reports (ckptfs/report/page.py) in a real
headless Chromium (tests/browser.py): a page opens from file:// with no
console error and no request, its lazily built tables show the embedded
rows exactly, and the harness does catch a page that fetches or throws."""

from __future__ import annotations

import json
import random
import re

import pytest

from ckptfs.report import page

from .browser import chromium
from .conftest import free_port

HOSTILE = '</script><!-- <b>&amp; "quoted" \u2028'
COLUMNS = [page.Column("name", "name", "code"), page.Column("size", "bytes", "bytes"),
           page.Column("mean", "mean", "float"), page.Column("count", "count", "int")]


def _rows(n: int) -> list[dict]:
    rows = [{"name": f"model.layers.{i % 7}.mlp.w{i}", "size": i * 1037, "mean": (i - 3) / 7 * 10 ** (i % 9 - 4),
             "count": i * 1001} for i in range(n)]
    rows[0]["name"] = HOSTILE
    rows[1]["mean"] = "nan"
    rows[2]["mean"] = None
    return rows


def _report(tmp_path, rows: list[dict], *parts) -> str:
    path = tmp_path / "page.html"
    scale = page.ColourScale.spanning([1e-4, 0.5])
    cells = {("0", "a"): page.HeatCell(0.0, "zero"), ("0", "b"): page.HeatCell(0.01, "some"),
             ("1", "b"): page.HeatCell(0.5, "most")}
    path.write_text(page.document(
        "A <report>",
        page.summary_list([("rows", len(rows)), ("name", page.element("code", HOSTILE))]),
        page.section("Heatmap", page.heatmap(["0", "1"], ["a", "b"], cells, scale), scale.legend("change")),
        page.json_script("rows", rows),
        page.section("Paged", page.paged_table("rows", COLUMNS, page=25, filter_key="name")),
        page.section("Outline", page.outline("rows", COLUMNS), open_=False),
        page.unified_diff(["--- a\n", "+++ b\n", "@@ -1 +1 @@\n", "-x\n", "+y\n"]),
        *parts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser():
    with chromium() as opened:
        yield opened


def test_json_script_keeps_the_data_and_never_closes_early():
    data = {"name": HOSTILE, "x": [1.5, "nan", None]}
    script = page.json_script("d", data)
    inner = re.fullmatch(r'<script type="application/json" id="d">(.*)</script>', script, re.S).group(1)
    assert "<" not in inner and ">" not in inner and "\u2028" not in inner
    assert json.loads(inner) == data
    with pytest.raises(ValueError):
        page.json_script("d", {"x": float("nan")})  # compare.json_safe first


def test_escaping_and_elements():
    assert page.escape('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert page.escape(page.Markup("<b>")) == "<b>"
    assert page.element("td", "<x>", class_="c", data_value="1", hidden=True, title=None) == \
        '<td class="c" data-value="1" hidden>&lt;x&gt;</td>'
    assert page.number(float("inf")) == '<span class="ck-num" data-value="inf" title="inf">inf</span>'


def test_colour_scale_ends():
    scale = page.ColourScale.spanning([1e-3, 1e-1, 0.0, None, float("nan")])
    assert (scale.low, scale.high, scale.log) == (1e-3, 1e-1, True)
    assert scale.colour(1e-3) == page.colour(0) == "#440154"
    assert scale.colour(1e-1) == page.colour(1) == "#fde725"
    assert scale.fraction(1e-2) == pytest.approx(0.5)


def test_page_opens_offline_and_shows_the_rows_exactly(tmp_path, browser):
    rows = _rows(120)
    opened = browser.open(_report(tmp_path, rows))
    assert opened.console_errors == [] and opened.requests == []
    assert opened.js("return document.title") == "A <report>"
    # the first page of the paged table: 25 rows, each cell's exact value the JSON's
    assert opened.count(".ck-paged tbody tr") == 25
    names = opened.attributes(".ck-paged tbody td[data-key=name]", "data-value")
    assert names == [r["name"] for r in rows[:25]]
    means = opened.attributes(".ck-paged tbody td[data-key=mean]", "data-value")
    assert means[1:3] == ["nan", ""]
    assert [float(m) for m in means[3:]] == [r["mean"] for r in rows[3:25]]
    # the script shows numbers as the Python side writes them
    shown = opened.texts(".ck-paged tbody td[data-key=mean]")
    assert shown[3:] == [page.format_float(r["mean"]) for r in rows[3:25]]
    assert opened.texts(".ck-paged tbody td[data-key=size]")[3] == page.human_size(rows[3]["size"])
    assert opened.texts(".ck-paged tbody td[data-key=count]")[3] == page.format_int(rows[3]["count"])
    # the outline is in a closed section: not built until it is opened
    assert opened.count(".ck-outline table") == 0
    assert opened.count(".ck-heat td.ck-zero") == 1 and opened.count(".ck-heat td.ck-empty") == 1


def test_tables_are_built_as_they_are_opened(tmp_path, browser):
    rows = _rows(120)
    opened = browser.open(_report(tmp_path, rows))
    opened.js("document.querySelectorAll('.ck-nav button')[1].click()")  # next page
    assert opened.attributes(".ck-paged tbody td[data-key=name]", "data-value") == [r["name"] for r in rows[25:50]]
    opened.js("document.querySelectorAll('.ck-paged th')[2].click()")  # sort by mean, largest first
    top = opened.attributes(".ck-paged tbody td[data-key=mean]", "data-value")[0]
    assert float(top) == max(r["mean"] for r in rows if isinstance(r["mean"], float))
    opened.js("document.querySelectorAll('details')[2].open = true")
    opened.js("return 0")  # lets the toggle event run
    top_level = opened.texts(".ck-outline tbody tr td:first-child .ck-toggle, .ck-outline tbody tr td:first-child > span")
    assert "model" in top_level
    opened.js("document.querySelector('.ck-outline .ck-toggle').click()")
    assert opened.count(".ck-outline tbody tr") > 2
    opened.refresh_logs()
    assert opened.console_errors == [] and opened.requests == []


def test_formatting_of_the_script_equals_pythons(tmp_path, browser):
    values = [0.0, 1.0, -2.5, 1234.5678, 12345.678, 1e-5, 0.000123456, 9.99996, 99999.5, 1e21, -3.14159e-12, 0.1]
    opened = browser.open(_report(tmp_path, _rows(3)))
    shown = opened.js("return arguments[0].map(v => window.ckptfsReport.format.float(v))", values)
    assert shown == [page.format_float(v) for v in values]
    sizes = [0, 1, 999, 1000, 38_500, 999_999, 1_234_567_890, 5 * 10**15]
    assert opened.js("return arguments[0].map(v => window.ckptfsReport.format.bytes(v))", sizes) == \
        [page.human_size(v) for v in sizes]


def test_the_harness_catches_a_request_and_an_error(tmp_path, browser):
    port = free_port()
    fetching = tmp_path / "fetching.html"
    fetching.write_text(f'<!DOCTYPE html><html><body><img src="http://127.0.0.1:{port}/x.png"></body></html>')
    opened = browser.open(fetching)
    assert opened.requests == [f"http://127.0.0.1:{port}/x.png"]
    throwing = tmp_path / "throwing.html"
    throwing.write_text("<!DOCTYPE html><html><body><script>null.boom();</script></body></html>")
    opened = browser.open(throwing)
    assert opened.requests == [] and len(opened.console_errors) == 1
    assert "TypeError" in opened.console_errors[0]


def test_a_report_refuses_to_fetch_even_what_it_is_handed(tmp_path, browser):
    """The shell's Content-Security-Policy blocks any URL a part brings in."""
    port = free_port()
    sneaky = page.Markup(f'<img src="http://127.0.0.1:{port}/x.png">')
    opened = browser.open(_report(tmp_path, _rows(3), sneaky))
    assert opened.requests == [] or opened.console_errors  # blocked before it is asked, or refused aloud
    assert any("Content Security Policy" in e for e in opened.console_errors)


def test_a_fragment_is_no_document():
    made = page.fragment(page.summary_list([("a", 1)]))
    assert made.startswith('<div class="ckptfs-report"><style>') and "<html" not in made and "<script" not in made


def _ties() -> list[float]:
    """20,012 values, many of them ties at four digits (short dyadics, as the
    largest difference of float16 tensors is): 1.0625, 12345.0, 0.15625..."""
    values = [1.0625, 12345.0, 0.00012345, 2.5e-5, 1.2345e20, 99995.0, 0.15625, -0.0, 5e-324,
              1.7976931348623157e308, 0.0001, 9999.5]
    generator = random.Random(1)
    return values + [generator.randint(1, 99999) / 2 ** generator.randint(0, 20) for _ in range(20_000)]


def test_every_float_a_table_shows_is_pythons_text(tmp_path, browser):
    """JavaScript rounds a tie away from zero (1.0625 → 1.063), Python the
    binary value half to even (1.062): the table shows Python's text."""
    values = _ties()
    columns = [page.Column("name", "name", "code"), page.Column("v", "value", "float")]
    rows = page.with_text(({"name": str(i), "v": v} for i, v in enumerate(values)), columns)
    path = tmp_path / "ties.html"
    path.write_text(page.document("ties", page.json_script("ties", rows),
                                  page.paged_table("ties", columns, page=len(values))), encoding="utf-8")
    opened = browser.open(path)
    assert opened.console_errors == []
    shown = opened.texts(".ck-paged tbody td[data-key=v]")
    assert len(shown) == len(values) and shown == [page.format_float(v) for v in values]
    assert shown[:2] == ["1.062", "1.234e+04"]


def test_only_the_two_file_lines_of_a_diff_are_headers():
    made = page.unified_diff(["--- A/c.yaml\n", "+++ B/c.yaml\n", "@@ -1,3 +1,2 @@\n", "----\n", " a: 1\n",
                              "--- x\n", "+++ B/config.json\n"])
    classes = re.findall(r'<span(?: class="([^"]+)")?>', made)
    assert classes == ["ck-file", "ck-file", "ck-hunk", "ck-del", "", "ck-del", "ck-add"]


def test_long_labels_are_shortened_in_the_heatmap(tmp_path, browser):
    """A name of 5,000 digits made the map 38,000 px tall: labels show their
    last 40 characters, the whole one in the title."""
    long_row, long_column = "9" * 5000, "m" * 5000
    cells = {(long_row, long_column): page.HeatCell(0.5, "x", True), ("0", "a"): page.HeatCell(0.1, "y", True)}
    path = tmp_path / "long.html"
    path.write_text(page.document("long", page.heatmap([long_row, "0"], [long_column, "a"], cells,
                                                       page.ColourScale.spanning([0.1, 0.5]))), encoding="utf-8")
    opened = browser.open(path)
    width, height = opened.js("var r = document.querySelector('.ck-heat').getBoundingClientRect();"
                              "return [r.width, r.height]")
    assert width <= 1200 and height < 800
    scroll_width, scroll_height = opened.js("var d = document.documentElement; return [d.scrollWidth, d.scrollHeight]")
    assert scroll_width <= 1280 and scroll_height < 1500
    assert [len(t) for t in opened.texts(".ck-heat th.ck-row")] == [page.LONGEST_LABEL, 1]
    assert opened.attributes(".ck-heat th.ck-row", "title") == [long_row, "0"]
    assert opened.attributes(".ck-heat th.ck-col", "title") == [long_column, "a"]


def test_text_utf8_cannot_encode_is_shown_as_its_escape():
    name = "w\udcff.weight"
    assert page.escape(name) == "w\\udcff.weight"
    script = page.json_script("d", {"name": name})
    assert json.loads(script[script.index(">") + 1:script.rindex("<")]) == {"name": "w\\udcff.weight"}
    assert page.encoded(page.document(name, page.element("code", name))).decode("utf-8").count("w\\udcff") == 3
