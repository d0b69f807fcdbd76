"""`ckptfs info --html/--png` (ckptfs/info_report.py, ckptfs/report/info_page.py,
stats_page.py, info_png.py) and the notebook reprs: each page opened in a
real headless Chromium (tests/browser.py) from file://, with no console error
and no request; its numbers are those of `ckptfs info --json`, `ckptfs stats
--json` and `ckptfs scan --json`; the outline opens, a histogram appears on
demand, NaN and infinities are red; 100k tensors stay a small page."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ckptfs
from ckptfs.commands import info as info_command
from ckptfs.errors import CkptfsError
from ckptfs.report import info_page, info_png, plot, stats_page

from .browser import chromium
from .conftest import CKPTFS, FIXTURES, REPO, TIMEOUT, run_ckptfs

NEMO = FIXTURES / "nemo" / "tiny.nemo"
LIGHTNING = FIXTURES / "lightning" / "tiny.ckpt"
SHARD = FIXTURES / "hf" / "bert_tiny_sharded" / "model-00002-of-00004.safetensors"
#: the computed style of a cell the page calls out
RED = "rgb(180, 35, 24)"


def planted(folder: Path) -> tuple[Path, str, str]:
    """A copy of a safetensors shard with NaN in one tensor and +inf and
    -inf in another: the path, and the two names."""
    tensors = load_file(SHARD)
    first, second = sorted(name for name, t in tensors.items() if t.dtype == np.float32 and t.size >= 4)[:2]
    tensors[first].flat[[0, 3]] = np.nan
    tensors[second].flat[1], tensors[second].flat[2] = np.inf, -np.inf
    path = folder / "planted.safetensors"
    save_file(tensors, str(path))
    return path, first, second


def json_of(*args) -> dict:
    done = run_ckptfs(*args)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def write_report(source: Path, folder: Path, *options: str) -> tuple[Path, Path]:
    html, png = folder / f"{source.stem}.html", folder / f"{source.stem}.png"
    done = run_ckptfs("info", source, "--html", html, "--png", png, *options)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("source ")  # the text of `ckptfs info` as ever
    return html, png


@pytest.fixture(scope="module")
def browser():
    with chromium() as opened:
        yield opened


@pytest.fixture(scope="module")
def nan_source(tmp_path_factory):
    return planted(tmp_path_factory.mktemp("planted"))


class Outline(HTMLParser):
    """The tags of a page, and the JSON of its data scripts by id."""

    def __init__(self):
        super().__init__()
        self.tags, self.data, self._in = [], {}, None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "script" and attributes.get("type") == "application/json":
            self._in = attributes["id"]

    def handle_data(self, data):
        if self._in:
            self.data[self._in] = json.loads(data)
            self._in = None


def by_row(data: dict) -> list[dict]:
    """`page.columnar`'s lists, one per key, as rows."""
    columns = data["columns"]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def parsed(text: str) -> Outline:
    outline = Outline()
    outline.feed(text)
    return outline


def test_png_of_each_sample(tmp_path, nan_source):
    for source in (NEMO, LIGHTNING, nan_source[0]):
        html, png = write_report(source, tmp_path, *(() if source == NEMO else ("--exact",)))
        stats = by_row(parsed(html.read_text()).data["ckptfs-stats"])
        if source == NEMO:  # sampled by default; tensors this small are read whole all the same
            assert "about 65,536 elements of each tensor sampled" in html.read_text()
            assert all(t["counted"] == t["elements"] for t in stats)
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert 600 <= width <= 4000 and 300 <= height <= 2000


def test_page_structure_holds_the_jsons(tmp_path):
    html, _ = write_report(LIGHTNING, tmp_path, "--exact")
    text = html.read_text()
    page = parsed(text)
    assert text.startswith("<!DOCTYPE html>") and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    ids = {a.get("id") for _, a in page.tags}
    assert {"ri-tree", "ri-stats", "ri-globals", "ri-scan", "ri-by-module", "ri-by-dtype"} <= ids
    info = json_of("info", LIGHTNING, "--json")
    tree = json_of("ls", LIGHTNING, "-R", "--json")
    rows = by_row(page.data["ckptfs-outline"])
    assert [r["path"] for r in rows] == [e["path"] for e in tree if not e["path"].startswith(".ckptfs")]
    shapes = {e["path"]: e["shape"] for e in tree if "shape" in e}
    assert {r["path"]: r["shape"] for r in rows if r["shape"] is not None} == shapes
    globals_shown = [a for t, a in page.tags if t == "table" and a.get("id") == "ri-globals-table"]
    assert globals_shown and all(g in text for g in info["pickle_globals"])


def test_page_in_the_browser_equals_the_jsons(tmp_path, browser, nan_source):
    source, nan_name, inf_name = nan_source
    html, _ = write_report(source, tmp_path, "--exact")
    opened = browser.open(html)
    assert opened.console_errors == [] and opened.requests == []
    info, stats = json_of("info", source, "--json"), json_of("stats", source, "--json")
    summary = [int(v) for v in opened.attributes(".ck-summary dd .ck-num", "data-value")]
    assert summary == [info["source_bytes"], info["tensors"], info["parameters"], info["tensor_bytes"]]
    by_module = opened.attributes("#ri-by-module tbody .ck-num", "data-value")
    assert [int(v) for v in by_module[1::3]] == sorted((r["parameters"] for r in info["by_prefix"].values()),
                                                       reverse=True)
    # every stats row of the first page: each number the JSON's, exactly
    shown = opened.js("return Array.from(document.querySelectorAll('#ri-stats tbody tr'), tr => "
                      "Object.fromEntries(Array.from(tr.cells, td => [td.dataset.key, td.dataset.value])))")
    expected = {t["name"]: t for t in stats["tensors"]}
    assert len(shown) == min(50, len(expected))
    for row in shown:
        t = expected[row["name"]]
        for key in ("min", "max", "mean", "std"):
            assert float(row[key]) == t[key], (row["name"], key)
        for key in ("counted", "nan", "posinf", "neginf", "zeros"):
            assert int(row[key]) == t[key], (row["name"], key)
    # NaN and inf cells red, the others not
    colour = "return getComputedStyle(document.querySelector(arguments[0])).color"
    nan_row = f"#ri-stats tbody tr:nth-child({[r['name'] for r in shown].index(nan_name) + 1})"
    assert opened.js(colour, nan_row + " td[data-key=nan]") == RED
    assert opened.js(colour, nan_row + " td[data-key=mean]") != RED
    assert expected[nan_name]["nan"] == 2 and expected[inf_name]["posinf"] == expected[inf_name]["neginf"] == 1
    assert set(opened.texts("#ri-flagged-table tbody td:first-child")) == {nan_name, inf_name}


def test_outline_and_histogram_open_on_click(tmp_path, browser, nan_source):
    source, nan_name, _ = nan_source
    html, _ = write_report(source, tmp_path, "--exact")
    stats = {t["name"]: t for t in json_of("stats", source, "--json")["tensors"]}
    opened = browser.open(html)
    before = opened.count("#ri-tree tbody tr")
    path = stats[nan_name]["path"].split("/")
    for depth in range(len(path) - 1):  # open each folder down to the tensor
        opened.js("Array.from(document.querySelectorAll('#ri-tree .ck-toggle')).find("
                  "e => e.closest('tr').dataset.value === arguments[0]).click()", "/".join(path[:depth + 1]))
    assert opened.count("#ri-tree tbody tr") > before
    row = f"#ri-tree tbody tr[data-value='{stats[nan_name]['path']}']"
    assert opened.attributes(row + " td[data-key=shape]", "data-value") == [json.dumps(stats[nan_name]["shape"])]
    assert opened.js("return getComputedStyle(document.querySelector(arguments[0])).color",
                     row + " td[data-key=nonfinite]") == RED
    assert opened.count("#ri-tree + .ri-detail svg, .ri-pick + .ri-detail svg") == 0
    opened.js("document.querySelector(arguments[0]).click()", row)
    bars = opened.attributes("#ri-tree .ri-detail svg rect", "data-count")
    assert [int(b) for b in bars] == stats[nan_name]["histogram"]["counts"]
    lows = opened.attributes("#ri-tree .ri-detail svg rect", "data-low")
    highs = opened.attributes("#ri-tree .ri-detail svg rect", "data-high")
    assert [float(v) for v in lows + highs[-1:]] == stats[nan_name]["histogram"]["edges"]
    # and in the stats table
    opened.js("document.querySelector('#ri-stats tbody tr').click()")
    first = next(iter(stats.values()))
    assert [int(b) for b in opened.attributes("#ri-stats .ri-detail svg rect", "data-count")] == \
        first["histogram"]["counts"]
    opened.refresh_logs()
    assert opened.console_errors == [] and opened.requests == []


def test_globals_and_verdict_shown(tmp_path, browser):
    html, _ = write_report(LIGHTNING, tmp_path, "--no-stats")
    opened = browser.open(html)
    assert opened.console_errors == [] and opened.requests == []
    info, scan = json_of("info", LIGHTNING, "--json"), json_of("scan", LIGHTNING, "--json")
    assert opened.texts("#ri-globals-table tbody td:first-child") == info["pickle_globals"]
    assert set(opened.attributes("[data-verdict]", "data-verdict")) == {scan["verdict"]} == {"safe"}
    assert opened.count("#ri-stats .ck-paged") == 0  # --no-stats: metadata and pickles alone


def test_a_dangerous_global_is_red_and_the_verdict_dangerous(tmp_path, browser):
    import torch

    source = tmp_path / "hooked.pt"
    torch.save({"weight": torch.ones(3), "hook": os.system}, source)  # names os.system; loading would import it
    html = tmp_path / "hooked.html"
    done = run_ckptfs("info", source, "--html", html, "--no-stats")
    assert done.returncode == 1 and done.stdout.startswith("source ")  # as `ckptfs scan` exits
    assert done.stderr == "ckptfs: the report is written; it found the scan says dangerous (ckptfs scan -v says why)\n"
    opened = browser.open(html)
    assert opened.console_errors == [] and opened.requests == []
    info, scan = json_of("info", source, "--json"), json_of("scan", source, "--json")
    assert scan["verdict"] == "dangerous" and info["unsafe_globals"] == ["posix.system"]
    assert set(opened.attributes("[data-verdict]", "data-verdict")) == {"dangerous"}
    red = opened.js("return Array.from(document.querySelectorAll('#ri-globals-table .ri-bad'), "
                    "e => e.closest('tr').cells[0].textContent)")
    assert red == info["unsafe_globals"]
    shown = opened.js("return Array.from(document.querySelectorAll('#ri-dangerous tbody tr'), "
                      "tr => Array.from(tr.cells, td => td.textContent))")
    assert shown == [[f["global"], f["location"], f["reason"]] for f in scan["dangerous"]]
    assert opened.js("return getComputedStyle(document.querySelector('[data-verdict]')).color") == RED
    png = run_ckptfs("info", source, "--png", tmp_path / "hooked.png", "--no-stats")  # the figure shows no verdict
    assert (png.returncode, png.stderr) == (0, "")
    assert (tmp_path / "hooked.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_ckptfs("info", source).returncode == 0  # plain info has no finding


def test_checkpoint_repr_html_is_a_fragment_of_the_summary():
    ckpt = ckptfs.open(NEMO)
    made = ckpt._repr_html_()
    info = json_of("info", NEMO, "--json")
    assert made.startswith('<div class="ckptfs-report">') and "<html" not in made and "<script" not in made
    tags = parsed(made)
    values = [a["data-value"] for t, a in tags.tags if t == "span" and "data-value" in a]
    assert [int(v) for v in values[:4]] == [info["source_bytes"], info["tensors"], info["parameters"],
                                            info["tensor_bytes"]]
    assert info["format"] in made and all(g in made for g in info["pickle_globals"])


def test_stats_repr_html_is_a_bounded_fragment(nan_source):
    source, nan_name, _ = nan_source
    stats = ckptfs.stats(source)
    made = stats._repr_html_()
    assert made.startswith('<div class="ckptfs-report">') and "<html" not in made and "<script" not in made
    assert nan_name in made and 'class="ri-bad"' in made
    huge = synthetic(100_000)["stats"]
    started = time.monotonic()
    fragment = stats_page.fragment(huge)
    assert time.monotonic() - started < 5 and len(fragment) < 200_000
    assert "99,950 more tensors" in fragment


def test_even_edges_are_numpys():
    rng = np.random.default_rng(7)
    for low, high in [(-1.5, 2.5), (0.0, 1e-30), (-3e38, 3e38), *rng.normal(size=(50, 2)).cumsum(axis=1)]:
        for bins in (1, 2, 7, 32, 100):
            assert stats_page.even_edges(float(low), float(high), bins) == \
                np.linspace(low, high, bins + 1).tolist()
    uneven = {"edges": [0.0, 0.1, 1.0], "counts": [1, 2]}
    even = {"edges": [0.0, 0.5, 1.0], "counts": [3, 4]}
    made = stats_page.rows({"tensors": [{"histogram": uneven, "min": 2**60}, {"histogram": even, "min": 0.5}]})
    assert made["columns"]["histogram"] == [uneven, [0.0, 1.0, [3, 4]]]
    assert made["columns"]["min"] == [str(2**60), 0.5] and made["columns"]["min~"] == [None, "0.5"]


def synthetic(n: int) -> dict:
    """An info report of `n` tensors in 100 layers, one with NaN."""
    tensors, outline = [], [{"path": "model", "type": "dir", "size": 0}]
    for layer in range(100):
        outline.append({"path": f"model/layers/{layer}", "type": "dir", "size": 0})
    outline.insert(1, {"path": "model/layers", "type": "dir", "size": 0})
    for i in range(n):
        name, path = f"model.layers.{i % 100}.w{i}", f"model/layers/{i % 100}/w{i}.npy"
        tensors.append({"name": name, "path": path, "dtype": "float32", "shape": [4, 4], "elements": 16,
                        "counted": 16, "dequantized": False, "min": -1.5, "max": 2.5, "mean": i / 7, "std": 0.5,
                        "nan": int(i == 5), "posinf": 0, "neginf": 0, "zeros": 1,
                        "histogram": {"edges": [-1.5, 0.5, 2.5], "counts": [7, 9 - int(i == 5)]}, "error": None})
        outline.append({"path": path, "type": "file", "size": 192, "name": name, "dtype": "float32", "shape": [4, 4]})
    by = {"tensors": n, "parameters": 16 * n, "bytes": 64 * n}
    info = {"source": "/data/big.safetensors", "format": "safetensors", "format_description": "", "source_bytes":
            64 * n, "writable": True, "read_only_because": None, "tensors": n, "parameters": 16 * n,
            "tensor_bytes": 64 * n, "by_dtype": {"float32": by}, "by_prefix": {"model": by},
            "dequantized_on_read": {}, "pickle_globals": [], "unsafe_globals": [], "notes": [],
            "ckptfs_version": ckptfs.__version__}
    return {"info": info, "outline": outline, "stats": {"source": info["source"], "format": "safetensors",
            "sample": None, "bins": 2, "tensors": tensors}, "stats_note": None,
            "scan": {"verdict": "safe", "pickles": [], "globals": [], "dangerous": [], "problems": []}}


def test_100k_tensors_render_and_open_small(tmp_path, browser):
    report = synthetic(100_000)
    started = time.monotonic()
    text = info_page.document(report)
    assert time.monotonic() - started < 20
    # by columns, no path in the stats (the outline's rows point at them): 19 MB; an object per row was 40 MB
    assert len(text) < 25_000_000
    data = parsed(text).data
    assert "path" not in data["ckptfs-stats"]["columns"] and data["ckptfs-outline"]["columns"]["stat"][-1] == 99_999
    html = tmp_path / "big.html"
    html.write_text(text, encoding="utf-8")
    opened = browser.open(html)
    assert opened.console_errors == [] and opened.requests == []
    assert opened.seconds < 30 and opened.elements() < 5_000
    assert opened.count("#ri-stats tbody tr") == 50
    opened.js("document.querySelector('#ri-tree .ck-toggle').click()")  # model/
    opened.js("document.querySelectorAll('#ri-tree .ck-toggle')[1].click()")  # model/layers/
    assert opened.elements() < 5_000
    assert opened.texts("#ri-flagged-table tbody td:first-child") == ["model.layers.5.w5"]


def test_hostile_names_stay_text(tmp_path, browser):
    report = synthetic(3)
    hostile = '</script><img src="http://127.0.0.1:9/x.png" onerror="boom()"><!--'
    for rows in (report["stats"]["tensors"], report["outline"][-3:]):
        rows[0]["name"] = hostile
    report["stats"]["tensors"][0]["path"] = report["outline"][-3]["path"] = "model/layers/0/" + hostile
    report["info"]["pickle_globals"] = report["info"]["unsafe_globals"] = [hostile]
    html = tmp_path / "hostile.html"
    html.write_text(info_page.document(report), encoding="utf-8")
    opened = browser.open(html)
    assert opened.console_errors == [] and opened.requests == [] and opened.count("img") == 0
    assert opened.texts("#ri-globals-table tbody td:first-child") == [hostile]
    assert opened.attributes("#ri-stats tbody td[data-key=name]", "data-value")[0] == hostile
    opened.js("document.querySelector('#ri-stats tbody tr').click()")
    assert opened.texts("#ri-stats .ri-detail h3") == [hostile]
    opened.refresh_logs()
    assert opened.console_errors == [] and opened.requests == [] and opened.count("img") == 0


def test_png_without_matplotlib_is_one_line(tmp_path):
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    (poisoned / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    env = dict(os.environ, PYTHONPATH=f"{poisoned}{os.pathsep}{REPO}")
    done = subprocess.run([sys.executable, "-m", "ckptfs", "info", str(NEMO), "--png", str(tmp_path / "x.png"),
                           "--no-stats"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "ckptfs: --png needs matplotlib: pip install matplotlib, or pip install -e '.[plot]' in a clone of ckptfs"]
    assert not (tmp_path / "x.png").exists()


def test_bad_sample_and_unwritable_file_are_one_line(tmp_path):
    done = run_ckptfs("info", NEMO, "--html", tmp_path / "r.html", "--sample", "0")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == \
        "ckptfs info: error: argument --sample: '0': give a whole number, 1 or more"
    done = run_ckptfs("info", NEMO, "--html", tmp_path / "missing" / "r.html", "--no-stats")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "r.html: No such file or directory" in done.stderr


def make_screenshot_report(folder: Path) -> Path:
    """docs/report-info.png's page: the sharded BERT with a NaN and infinities planted."""
    copy = folder / "bert"
    shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", copy)
    source, _, _ = planted(folder)
    shutil.move(source, copy / SHARD.name)
    html, _ = write_report(copy, folder, "--exact")
    return html


SCREENSHOTS = {"info": make_screenshot_report}


#: names that are members of every JavaScript object: a script indexing by name with `{}` finds them there
PROTO_NAMES = ("__proto__.weight", "constructor.weight", "toString", "model.__proto__.bias",
               "model.constructor", "model.hasOwnProperty.w", "model.w")


def test_names_of_object_members_are_names_on_both_pages(tmp_path, browser):
    """`__proto__`, `constructor`... as folder and tensor names: the outline
    opens each, a click shows each one's own histogram; the diff page too."""
    tensors = {name: np.arange(4, dtype=np.float32) + i for i, name in enumerate(PROTO_NAMES)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(a))
    save_file({name: t * 2 for name, t in tensors.items()}, str(b))
    html, _ = write_report(a, tmp_path, "--exact")
    opened = browser.open(html)
    assert opened.console_errors == [] and opened.requests == []
    top = opened.texts("#ri-tree tbody tr td:first-child .ck-toggle, #ri-tree tbody tr td:first-child > span")
    assert {"__proto__", "constructor", "model", "toString.npy"} <= set(top)
    opened.js("Array.from(document.querySelectorAll('#ri-tree .ck-toggle')).find("
              "e => e.closest('tr').dataset.value === 'model').click()")
    opened.js("Array.from(document.querySelectorAll('#ri-tree .ck-toggle')).find("
              "e => e.closest('tr').dataset.value === 'model/__proto__').click()")
    opened.js("document.querySelector(\"#ri-tree tr[data-value='model/__proto__/bias.npy']\").click()")
    assert opened.texts("#ri-tree .ri-detail h3") == ["model.__proto__.bias"]
    for i, name in enumerate(sorted(PROTO_NAMES)):
        opened.js("document.querySelectorAll('#ri-stats tbody tr')[arguments[0]].click()", i)
        assert opened.texts("#ri-stats .ri-detail h3") == [name]
        assert sum(int(c) for c in opened.attributes("#ri-stats .ri-detail svg rect", "data-count")) == 4
    opened.refresh_logs()
    assert opened.console_errors == [] and opened.requests == []
    done = run_ckptfs("diff", a, b, "--html", tmp_path / "d.html")
    assert done.returncode == 1, done.stderr
    diffed = browser.open(tmp_path / "d.html")
    assert diffed.console_errors == [] and diffed.requests == []
    assert sorted(diffed.attributes("#ranked-table td[data-key=name]", "data-value")) == sorted(PROTO_NAMES)


def test_outline_counts_the_entries_below_a_folder(tmp_path, browser):
    """A folder's count is of what is below it (`ls -R`), not itself too."""
    save_file({"a.w": np.ones(2, np.float32), "b.c.w": np.ones(2, np.float32), "b.c.v": np.ones(2, np.float32),
               "b.d": np.ones(2, np.float32)}, str(tmp_path / "t.safetensors"))
    html, _ = write_report(tmp_path / "t.safetensors", tmp_path, "--no-stats")
    opened = browser.open(html)
    counts = opened.js("return Array.from(document.querySelectorAll('#ri-tree tbody tr'), "
                       "tr => [tr.dataset.value, tr.querySelector('.ck-count').textContent])")
    assert counts == [["a", " (1)"], ["b", " (4)"]]  # b: c, c/w.npy, c/v.npy, d.npy


def test_a_tensor_with_no_finite_value_shows_its_panel(tmp_path, browser):
    """An empty tensor and an all-NaN one: a click shows a dash for each
    statistic and says why there is no histogram."""
    save_file({"model.empty_buffer": np.zeros(0, np.float32), "model.allnan": np.full(3, np.nan, np.float32),
               "model.w": np.ones(3, np.float32)}, str(tmp_path / "e.safetensors"))
    html, _ = write_report(tmp_path / "e.safetensors", tmp_path, "--exact")
    opened = browser.open(html)
    for i, name in enumerate(["model.allnan", "model.empty_buffer"]):
        opened.js("document.querySelectorAll('#ri-stats tbody tr')[arguments[0]].click()", i)
        assert opened.texts("#ri-stats .ri-detail h3") == [name]
        panel = opened.texts("#ri-stats .ri-detail p")
        assert "min \u2013, max \u2013, mean \u2013, std \u2013" in panel[0]
        assert panel[-1] == "no histogram: no finite value counted"
    opened.refresh_logs()
    assert opened.console_errors == [] and opened.requests == []


def _raw_safetensors(path: Path, names: list[str]) -> None:
    """A safetensors of float32 [2] tensors named as written (JSON escapes
    kept: "\\udc80" is a lone surrogate once read), each [NaN, 1]."""
    header = "{" + ",".join(f'"{n}":{{"dtype":"F32","shape":[2],"data_offsets":[{8 * i},{8 * i + 8}]}}'
                            for i, n in enumerate(names)) + "}"
    header += " " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode("ascii") +
                     struct.pack("<2f", math.nan, 1.0) * len(names))


def test_png_draws_every_name_as_plain_text(tmp_path):
    """`$\\foo{$` (mathtext that cannot parse) and a lone surrogate, as the
    file's name, a module and a tensor with NaN: a PNG, no error; the
    labels are the names, the surrogate as its escape."""
    names = ["a$\\\\foo{$.w", "bad\\udc80name", "$x^2$"]
    source = tmp_path / "$\\foo{$.safetensors"
    _raw_safetensors(source, names)
    done = subprocess.run(CKPTFS + ["info", str(source), "--png", str(tmp_path / "r.png"), "--html",
                                    str(tmp_path / "r.html"), "--exact"], capture_output=True, timeout=TIMEOUT)
    assert (done.returncode, done.stderr) == (0, b"")  # stdout: the text of `ckptfs info` (bytes: the name)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = {"info": json_of("info", source, "--json"), "stats": json_of("stats", source, "--json")}
    drawn = info_png.figure(report)
    labels = [sorted(t.get_text() for t in axes.get_yticklabels()) for axes in drawn.axes]
    assert labels[0] == sorted(["$x^2$.npy", "a$\\foo{$", "bad\\udc80name.npy"])  # top-level entries
    assert labels[2] == sorted(["$x^2$", "a$\\foo{$.w", "bad\\udc80name"])
    assert drawn.get_suptitle().startswith(f"{source} (safetensors)")


def test_png_titles_count_in_words_one_tensor_one_parameter(tmp_path):
    """One tensor of one element, NaN: "1 tensor, 1 parameter" and "1 tensor
    with NaN or inf", not "1 tensors"; two tensors of 3 elements: plurals."""
    for values, words in (([math.nan], ("1 tensor, 1 parameter", "1 tensor with")),
                          ([math.nan, 1.0, 2.0], ("2 tensors, 6 parameters", "2 tensors with"))):
        source = tmp_path / f"n{len(values)}.safetensors"
        tensors = {"a.w": np.array(values, np.float32)}
        if len(values) > 1:
            tensors["b.w"] = np.array([np.inf, 0, 0], np.float32)
        save_file(tensors, str(source))
        drawn = info_png.figure({"info": json_of("info", source, "--json"), "stats": json_of("stats", source, "--json")})
        assert drawn.get_suptitle() == f"{source} (safetensors): {words[0]}"
        assert drawn.axes[2].get_title().startswith(words[1])


def test_png_or_html_naming_a_folder_is_one_line(tmp_path):
    for option in ("--png", "--html"):
        done = run_ckptfs("info", NEMO, option, tmp_path, "--no-stats")
        assert (done.returncode, done.stderr) == (2, f"ckptfs: {tmp_path}: Is a directory\n")
        assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_finished_leaves_the_old_file(tmp_path):
    """A file size limit (8 KiB) stops the writing midway: one line, exit 2,
    the file that was there untouched and no temporary left beside it."""
    for option in ("--html", "--png"):
        target = tmp_path / f"old.{option[2:]}"
        target.write_text("previous good report\n")
        command = " ".join(CKPTFS + ["info", str(LIGHTNING), option, str(target), "--exact"])
        done = subprocess.run(["bash", "-c", f"trap '' XFSZ; ulimit -f 8; exec {command}"], capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert (done.returncode, done.stderr) == (2, f"ckptfs: {target}: File too large\n")
        assert target.read_text() == "previous good report\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["old.html", "old.png"][:1 + (option == "--png")])


def test_png_without_matplotlib_is_said_before_any_stats(monkeypatch, capsys):
    def absent():
        raise CkptfsError("--png needs matplotlib")

    def gather(*_):
        raise AssertionError("stats read before matplotlib was looked for")

    monkeypatch.setattr(plot, "matplotlib", absent)
    monkeypatch.setattr("ckptfs.info_report.gather", gather)
    args = argparse.Namespace(source=str(NEMO), json=False, html=None, png="x.png", sample=None, exact=True,
                              no_stats=False)
    assert info_command.run(args) == 2
    assert capsys.readouterr().err == "ckptfs: --png needs matplotlib\n"


def test_report_options_alone_are_one_line():
    for option in (["--sample", "5"], ["--exact"], ["--no-stats"]):
        done = run_ckptfs("info", NEMO, *option)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == f"ckptfs: {option[0]} is for the report: give --html FILE or --png FILE too\n"


def test_a_finding_is_a_dangerous_verdict_or_a_tensor_without_stats():
    """A verdict counts where it is shown, on the page (html), not in the figure."""
    safe = {"scan": {"verdict": "safe"}, "stats": {"tensors": [{"error": None, "nan": 3}]}}
    assert info_command.findings(safe, html=True) is None
    assert info_command.findings({"scan": {"verdict": "not scanned"}, "stats": None}, html=True) is None
    bad = {"scan": {"verdict": "dangerous"}, "stats": {"tensors": [{"error": "cannot read"}, {"error": None}]}}
    assert info_command.findings(bad, html=True) == ("the scan says dangerous (ckptfs scan -v says why); "
                                                    "1 tensor whose stats could not be made")
    assert info_command.findings(bad, html=False) == "1 tensor whose stats could not be made"
    assert info_command.findings({"scan": {"verdict": "dangerous"}, "stats": None}, html=False) is None


def test_tables_by_module_and_of_globals_are_bounded(tmp_path):
    """20,000 dot-less names (a flat checkpoint): 20,000 top-level modules,
    shown as the largest 50 and one row summing the rest, in the page and in
    the notebook's fragment; the same for 20,000 globals."""
    save_file({f"w{i}": np.ones(1 + (i == 7), np.float32) for i in range(20_000)}, str(tmp_path / "flat.safetensors"))
    made = ckptfs.open(tmp_path / "flat.safetensors")._repr_html_()
    assert len(made) < 100_000
    rows = [a for t, a in parsed(made).tags if t == "tr"]
    assert len(rows) < 150
    module = parsed(made)
    numbers = [int(a["data-value"]) for t, a in module.tags if t == "span" and "data-value" in a]
    assert numbers[4:7] == [1, 2, 8]  # the largest first: w7, 2 parameters
    assert "and 19,950 others" in made
    tail = made[made.index("and 19,950 others"):]
    assert [int(v) for v in tail.split('data-value="')[1:4] for v in [v.split('"')[0]]] == [19_950, 19_950, 79_800]
    report = synthetic(3)
    report["info"]["pickle_globals"] = [f"m.g{i}" for i in range(20_000)]
    report["info"]["unsafe_globals"] = ["m.g19999"]
    page = info_page.document(report)
    shown = [a for t, a in parsed(page).tags if t == "tr"]
    assert len(shown) < 200 and "and 19,950 more" in page
    assert page.index("m.g19999") < page.index("m.g0<")  # outside the allowlist first


def test_one_tensor_is_singular_and_the_verdict_one_class():
    report = synthetic(3)
    report["stats"]["tensors"][1]["nan"] = 2
    report["scan"] = {"verdict": "not scanned", "problems": ["a URL"]}
    page = info_page.document(report)
    assert "1 tensor with NaN, infinities or an error" in page and "1 tensors" not in page
    classes = {a["class"] for t, a in parsed(page).tags if a.get("data-verdict")}
    assert classes == {"ri-verdict-not-scanned"}
    assert "1 tensor with NaN" in stats_page.fragment(report["stats"])


def test_numbers_read_as_python_rounds_them(tmp_path, browser):
    """1.0625 is a tie at four digits: Python (format_float, the notebook)
    writes 1.062, JavaScript's toFixed 1.063; the page shows Python's."""
    save_file({"tie": np.full(4, 1.0625, np.float32)}, str(tmp_path / "tie.safetensors"))
    html, _ = write_report(tmp_path / "tie.safetensors", tmp_path, "--exact")
    opened = browser.open(html)
    cells = opened.js("return Object.fromEntries(Array.from(document.querySelectorAll('#ri-stats tbody td'), "
                      "td => [td.dataset.key, td.textContent]))")
    python = stats_page.page.format_float(1.0625)
    assert python == "1.062" and [cells[k] for k in ("min", "max", "mean", "std")] == [python] * 3 + ["0"]
    opened.js("document.querySelector('#ri-stats tbody tr').click()")
    assert "min 1.062, max 1.062, mean 1.062, std 0" in opened.texts("#ri-stats .ri-detail p")[0]
    notebook = ckptfs.stats(tmp_path / "tie.safetensors")._repr_html_()
    assert notebook.count(">1.062<") == 3 and ">1.063<" not in notebook
    assert opened.console_errors == []
