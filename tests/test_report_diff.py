"""`ckptfs diff --html/--png` on a real fine-tune pair (tests/fixtures/finetune:
a tiny Llama trained a few steps on CPU, decoder layer 1 frozen), opened in
a real headless Chromium (tests/browser.py): the page fetches nothing and
logs no error, its heatmap has one cell per (layer, module) of the pair and
the frozen row alone shows zero, and every number it shows is the one of
`ckptfs diff --json`, whose norms are NumPy's over safetensors' tensors."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ckptfs
from ckptfs import compare
from ckptfs.commands import build_parser, manual
from ckptfs.report import diff_page, diff_png, grouping, plot, write_atomic
from ckptfs.report.grouping import Place, place

from .browser import chromium
from .conftest import CKPTFS, REPO, TIMEOUT, run_ckptfs

FINETUNE = REPO / "tests" / "fixtures" / "finetune"
BASE, TUNED = FINETUNE / "base", FINETUNE / "tuned"
FROZEN = "1"  # make.py's FROZEN


def make_diff_report(folder: Path) -> Path:
    """The diff report of the fine-tune pair, written into `folder` (also
    docs/report-diff.png: `python -m tests.browser --screenshots docs/`)."""
    html = folder / "report-diff.html"
    done = subprocess.run([sys.executable, "-m", "ckptfs", "diff", "tests/fixtures/finetune/base",
                           "tests/fixtures/finetune/tuned", "--html", str(html)], cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 1, done.stderr
    return html


SCREENSHOTS = {"diff": make_diff_report}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """`ckptfs diff base tuned --json --html --png`: its report, page and figure."""
    folder = tmp_path_factory.mktemp("report")
    done = run_ckptfs("diff", BASE, TUNED, "--json", "--html", folder / "r.html", "--png", folder / "r.png")
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout), folder / "r.html", folder / "r.png"


@pytest.fixture(scope="module")
def browser():
    with chromium() as opened:
        yield opened


@pytest.mark.parametrize("name, expected", [
    ("model.layers.3.self_attn.q_proj.weight", Place("model.layers", 3, "self_attn.q_proj")),  # Llama
    ("transformer.h.3.attn.c_attn.weight", Place("transformer.h", 3, "attn.c_attn")),  # GPT-2
    ("bert.encoder.layer.3.attention.self.query.bias", Place("bert.encoder.layer", 3, "attention.self.query")),
    # Mixtral: the expert's index folded, a column per projection
    ("model.layers.3.block_sparse_moe.experts.7.w1.weight", Place("model.layers", 3, "block_sparse_moe.experts.*.w1")),
    ("decoder.layers.3.mlp.experts.local_experts.12.linear_fc1.weight",
     Place("decoder.layers", 3, "mlp.experts.local_experts.*.linear_fc1")),
    # T5: the sublayer's index kept (layer.0 attention, layer.1 feed-forward)
    ("encoder.block.3.layer.0.SelfAttention.q.weight", Place("encoder.block", 3, "layer.0.SelfAttention.q")),
    ("decoder.layers.3.self_attention.linear_qkv.weight", Place("decoder.layers", 3, "self_attention.linear_qkv")),
    ("features.0.weight", Place("features", 0, "weight")),  # nothing between the index and the parameter
    ("model.embed_tokens.weight", Place("", None, "model.embed_tokens")),  # no number: the row "other"
    ("lm_head.weight", Place("", None, "lm_head")),
    ("bias", Place("", None, "bias")),
    ("conv1.weight", Place("", None, "conv1")),  # a number inside a word is no layer
])
def test_the_place_of_a_name(name, expected):
    assert place(name) == expected


def test_stacks_are_told_apart_and_long_ones_binned():
    names = [f"encoder.block.{i}.layer.0.SelfAttention.q.weight" for i in range(2)] + \
            [f"decoder.block.{i}.layer.0.SelfAttention.q.weight" for i in range(2)] + ["shared.weight"]
    assert grouping.grid((n, 2.0, 1.0, True) for n in names).rows == [
        "decoder.block 0", "decoder.block 1", "encoder.block 0", "encoder.block 1", "other"]
    found = grouping.grid((f"h.{i}.attn.weight", 1.0, 0.5, True) for i in range(200))
    assert len(found.rows) <= grouping.MAX_ROWS and found.rows[0] == "0–2"
    assert found.cells[("0–2", "attn")].tensors == 3


def test_many_stacks_make_a_bounded_grid_in_linear_time():
    """20k stacks of one layer each (was quadratic: 257 s for `--html`, and
    a row per stack): a bounded grid, quickly, the stacks past MAX_STACKS
    folded into one row."""
    names = [f"s{i}.0.w" for i in range(20_000)] + [f"big.{i}.mlp.w" for i in range(300)] + ["lm_head.weight"]
    began = time.monotonic()
    found = grouping.grid((n, 1.0, 0.5, True) for n in names)
    assert time.monotonic() - began < 30
    assert len(found.rows) <= grouping.MAX_ROWS and found.rows[-2:] == [grouping.MORE_STACKS, grouping.OTHER]
    assert sum(c.tensors for c in found.cells.values()) == len(names)
    assert found.rows[0].startswith("big ") and found.cells[(grouping.MORE_STACKS, "w")].tensors == 20_000 - 7
    report = _gridded({**_synthetic(0), "differing": {n: {"elements": 1, "differing": 1, "norm_a": 1.0,
                                                           "norm_diff": 0.5, "relative_change": 0.5} for n in names}})
    began = time.monotonic()
    made = diff_page.document(report)
    assert time.monotonic() - began < 30
    heat = made[made.index('<table class="ck-heat"'):]
    assert heat[:heat.index("</table>")].count("<tr>") == len(found.rows) + 1  # and the head


def test_the_grid_is_bounded_whatever_the_names():
    names = [f"w{i}.weight" for i in range(500)] + ["x." + "9" * 5000 + ".weight"]  # no int() of 5,000 digits
    found = grouping.grid((n, 1.0, 0.1, True) for n in names)
    assert found.rows == ["other"] and len(found.columns) == grouping.MAX_COLUMNS
    assert found.columns[-1] == grouping.MORE and sum(c.tensors for c in found.cells.values()) == 501


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def test_the_norms_are_numpys_and_the_frozen_layer_did_not_move(made):
    report, _, _ = made
    a, b = _tensors(BASE), _tensors(TUNED)
    for name, d in report["differing"].items():
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        assert d["norm_a"] == pytest.approx(np.linalg.norm(x), rel=1e-12)
        assert d["norm_diff"] == pytest.approx(np.linalg.norm(y - x), rel=1e-12)
        assert d["relative_change"] == d["norm_diff"] / d["norm_a"]
    frozen = {n for n in a if place(n).layer == int(FROZEN)}
    assert frozen and not frozen & set(report["differing"]) and report["equal"] == len(frozen)
    assert all(np.array_equal(a[n], b[n]) for n in frozen)
    assert "equal_tensors" not in report  # no list of the bit-equal tensors: --json stays small
    for cell, (norm_a, norm_diff, changed, tensors) in _expected_cells(a, b).items():
        shown = next(c for c in report["by_layer_module"]["cells"] if (c["row"], c["column"]) == cell)
        assert (shown["changed"], shown["tensors"]) == (changed, tensors)
        assert shown["norm_a"] == pytest.approx(norm_a, rel=1e-12)
        assert shown["norm_diff"] == pytest.approx(norm_diff, rel=1e-12)
        assert shown["relative_change"] == (shown["norm_diff"] / shown["norm_a"] if changed else 0.0)


def _expected_cells(a: dict, b: dict) -> dict[tuple[str, str], tuple[float, float, int, int]]:
    """Each cell's ‖A‖, ‖B−A‖ over its tensors as one vector (NumPy), how many changed, how many tensors."""
    cells: dict[tuple[str, str], list] = {}
    for name in a:
        p = place(name)
        cell = cells.setdefault((grouping.OTHER if p.layer is None else str(p.layer), p.module), [[], [], 0, 0])
        x, y = a[name].astype(np.float64).ravel(), b[name].astype(np.float64).ravel()
        cell[0].append(x)
        cell[1].append(y - x)
        cell[2] += not np.array_equal(a[name], b[name])
        cell[3] += 1
    return {key: (np.linalg.norm(np.concatenate(xs)), np.linalg.norm(np.concatenate(ds)), changed, tensors)
            for key, (xs, ds, changed, tensors) in cells.items()}


def test_the_page_shows_the_pair_offline(made, browser):
    report, html, _ = made
    page = browser.open(html)
    assert page.console_errors == [] and page.requests == []
    rows = page.attributes(".ck-heat td.ck-cell", "data-row")
    columns = page.attributes(".ck-heat td.ck-cell", "data-column")
    values = [float(v) for v in page.attributes(".ck-heat td.ck-cell", "data-value")]
    shown = dict(zip(zip(rows, columns), values))
    expected = {(c["row"], c["column"]): c["relative_change"] for c in report["by_layer_module"]["cells"]}
    assert len(rows) == len(shown) == len(expected) == 3 * 9 + 3  # 3 layers × 9 modules, and 3 "other"
    assert shown == expected  # exactly: the page draws the JSON's cells
    assert all((v == 0) == (row == FROZEN) for (row, _), v in shown.items())
    assert page.count(".ck-heat td.ck-zero") == 9 == sum(1 for row in rows if row == FROZEN)
    assert page.attributes("[data-zero-rows]", "data-zero-rows") == [FROZEN]


def test_the_ranked_table_and_the_summary_are_the_jsons(made, browser):
    report, html, _ = made
    page = browser.open(html)
    ranked = sorted(report["differing"].items(), key=lambda item: -item[1]["relative_change"])
    names = page.attributes("#ranked-table tbody td[data-key=name]", "data-value")
    assert names == [name for name, _ in ranked]  # 21 rows: one page
    for key in ("relative_change", "cosine", "max_abs_diff", "max_rel_diff", "norm_a", "norm_diff"):
        shown = page.attributes(f"#ranked-table tbody td[data-key={key}]", "data-value")
        assert [float(v) for v in shown] == [d[key] for _, d in ranked], key
    for key in ("differing", "elements"):
        shown = page.attributes(f"#ranked-table tbody td[data-key={key}]", "data-value")
        assert [int(v) for v in shown] == [d[key] for _, d in ranked], key
    summary = dict(zip(page.attributes(".ck-summary [data-key]", "data-key"),
                       page.attributes(".ck-summary [data-key]", "data-value")))
    assert summary["equal"] == str(report["equal"]) and summary["differing"] == str(len(report["differing"]))
    assert float(summary["largest"]) == ranked[0][1]["relative_change"]
    assert page.attributes(".ck-verdict", "data-same") == ["false"]


def test_added_removed_reshaped_and_config_changes(tmp_path, browser):
    tuned = tmp_path / "tuned"
    shutil.copytree(TUNED, tuned)
    weights = _tensors(tuned)
    del weights["lm_head.weight"]
    weights["model.extra.weight"] = weights["model.norm.weight"] * 2
    weights["model.layers.2.mlp.up_proj.weight"] = weights["model.layers.2.mlp.up_proj.weight"][:8].copy()
    save_file(weights, str(tuned / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tuned / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (tuned / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    done = run_ckptfs("diff", BASE, tuned, "--json", "--html", tmp_path / "r.html")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert (report["removed"], report["added"]) == (["lm_head.weight"], ["model.extra.weight"])
    page = browser.open(tmp_path / "r.html")
    assert page.console_errors == [] and page.requests == []
    assert page.attributes("#removed-table td[data-key=name]", "data-value") == report["removed"]
    assert page.attributes("#added-table td[data-key=name]", "data-value") == report["added"]
    assert page.attributes("#changed-table td[data-key=b_shape]", "data-value") == ["[8,16]"]
    assert page.texts(".ck-diff .ck-del") == ['-  "rms_norm_eps": 1e-06,\n']
    assert page.texts(".ck-diff .ck-add") == ['+  "rms_norm_eps": 1e-05,\n']
    assert page.count('.ck-heat td[data-row="other"][data-column="lm_head"]') == 0  # compared tensors only


def test_hostile_names_are_shown_as_they_are(tmp_path, browser):
    report = _synthetic(3)
    hostile = ['model.layers.0.</script><script>alert(1)</script>.weight', 'model.layers.1.<!--x-->.weight',
               'lm_head.<img src="http://127.0.0.1:9/x">.weight']
    report["differing"] = dict(zip(hostile, report["differing"].values()))
    report["removed"] = hostile[:1]
    report = _gridded(report)
    (tmp_path / "r.html").write_text(diff_page.document(report, "<a>", "&b"), encoding="utf-8")
    page = browser.open(tmp_path / "r.html")
    assert page.console_errors == [] and page.requests == []
    assert sorted(page.attributes("#ranked-table td[data-key=name]", "data-value")) == sorted(hostile)
    assert page.attributes("#removed-table td[data-key=name]", "data-value") == hostile[:1]
    assert page.js("return document.title") == "ckptfs diff: <a> → &b"
    assert page.count(".ck-heat td.ck-cell") == 3


def test_the_png(made):
    _, _, png = made
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 300 <= width <= 3000 and 200 <= height <= 3000 and 10_000 < len(data) < 1_000_000


def test_without_matplotlib_png_is_one_line_and_nothing_is_done(tmp_path):
    no_matplotlib = "import sys; sys.modules['matplotlib'] = None; from ckptfs.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", no_matplotlib, "diff", str(BASE), str(TUNED), "--png",
                           str(tmp_path / "r.png")], capture_output=True, text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "ckptfs: --png needs matplotlib: pip install matplotlib, or pip install -e '.[plot]' in a clone of ckptfs\n"
    assert not (tmp_path / "r.png").exists()


def test_a_report_that_cannot_be_written_is_one_line():
    done = run_ckptfs("diff", BASE, TUNED, "--html", "/nonexistent/r.html")
    assert done.returncode == 2 and done.stderr == "ckptfs: /nonexistent/r.html: No such file or directory\n"


def test_a_notebook_shows_the_summary_and_the_heatmap():
    diff = ckptfs.diff(BASE, ckptfs.open(TUNED))
    shown = diff._repr_html_()
    assert shown.startswith('<div class="ckptfs-report">') and "<html" not in shown and "<script" not in shown
    assert "The checkpoints differ." in shown and shown.count('class="ck-cell') == 30
    assert json.loads(json.dumps(diff))["equal"] == diff["equal"] == 9  # still the dict --json prints
    assert diff.html().startswith("<!DOCTYPE html>")


def _synthetic(tensors: int) -> dict:
    """A report of `tensors` differing tensors in 100 layers of a mixture of
    experts (as json_safe writes it): no checkpoint needed."""
    differing, i = {}, 0
    while len(differing) < tensors:
        layer, rest = divmod(i, 1000)
        name = (f"model.layers.{layer}.block_sparse_moe.experts.{rest // 3}.w{rest % 3 + 1}.weight" if rest < 990
                else f"model.layers.{layer}.self_attn.p{rest - 990}.weight")
        change = (i % 997 + 1) / 1e4
        differing[name] = {"elements": 4096, "differing": 4000, "max_abs_diff": change, "max_rel_diff": 2 * change,
                           "cosine": 1 - change, "norm_a": 1.0, "norm_diff": change, "relative_change": change}
        i += 1
    return _gridded({"removed": [], "added": [], "changed": [], "differing": differing, "equal": 0,
                     "values": [], "files": {"removed": [], "added": [], "changed": []}, "same": False})


def _gridded(report: dict) -> dict:
    """The report with the heatmap's cells of its differing tensors, as compare.compare makes them."""
    grid = grouping.grid((name, d.get("norm_a"), d.get("norm_diff"), True) for name, d in report["differing"].items())
    return {**report, "by_layer_module": compare.json_safe(grid.as_dict())}


def test_a_hundred_thousand_tensors_stay_responsive(tmp_path, browser):
    report = _synthetic(100_000)
    began = time.monotonic()
    (tmp_path / "big.html").write_text(diff_page.document(report), encoding="utf-8")
    assert time.monotonic() - began < 30
    page = browser.open(tmp_path / "big.html")
    assert page.console_errors == [] and page.requests == []
    assert page.seconds < 30 and page.elements() < 5_000
    assert page.count(".ck-heat td.ck-cell") == 50 * 13  # 100 layers in 50 rows; 10 projections, 3 experts' w
    assert page.count("#ranked-table tbody tr") == 50
    page.js("document.querySelector('#ranked-table input').value = 'layers.99.self_attn';"
            "document.querySelector('#ranked-table input').dispatchEvent(new Event('input'))")
    assert page.count("#ranked-table tbody tr") == 10
    page.refresh_logs()
    assert page.console_errors == []


def test_readme_shows_each_report_screenshot():
    readme = (REPO / "README.md").read_text()
    shots = sorted((REPO / "docs").glob("report-*.png"))
    assert REPO / "docs" / "report-diff.png" in shots
    for shot in shots:
        assert f"](docs/{shot.name})" in readme, shot.name


def _pair(folder: Path, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[Path, Path]:
    for side, tensors in (("a", a), ("b", b)):
        (folder / side).mkdir()
        save_file(tensors, str(folder / side / "model.safetensors"))
    return folder / "a", folder / "b"


def _awkward_tensors() -> tuple[dict, dict]:
    """Changes a float ratio gets wrong, one a layer: +0 → −0 (bits changed,
    ratio 0), a change beside an inf of A (ratio 0), float64 values whose
    squares underflow or overflow (ratio 0.5), a NaN in A, an inf new in B,
    a bit-equal tensor, a plain 10% change, A all zeros (no ratio)."""
    f = np.arange(1, 11, dtype=np.float32)
    inf_a, nan = f.copy(), f.copy()
    inf_a[0], nan[3] = np.inf, np.nan
    a = {"signed": np.zeros(10, np.float32), "inf_a": inf_a, "tiny": np.full(4, 1e-200), "huge": np.full(4, 1e200),
         "nan": nan, "inf_b": f, "same": f, "plain": f, "zero_a": np.zeros(4, np.float32)}
    b = {"signed": -np.zeros(10, np.float32), "inf_a": inf_a + (np.arange(10) == 1), "tiny": a["tiny"] * 1.5,
         "huge": a["huge"] * 1.5, "nan": nan + (np.arange(10) == 5), "inf_b": np.where(np.arange(10) == 0, np.inf, f),
         "same": f.copy(), "plain": f * np.float32(1.1), "zero_a": np.ones(4, np.float32)}
    names = {key: f"model.layers.{i}.{key}.w" for i, key in enumerate(a)}
    return ({names[k]: v for k, v in a.items()}, {names[k]: v.astype(a[k].dtype) for k, v in b.items()})


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    a, b = _pair(folder, *_awkward_tensors())
    done = run_ckptfs("diff", a, b, "--json", "--html", folder / "r.html")
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout), folder / "r.html"


def test_norms_that_overflow_or_underflow_in_squares_are_right(awkward):
    report, _ = awkward
    for key, value in (("tiny", 1e-200), ("huge", 1e200)):
        d = report["differing"][f"model.layers.{2 if key == 'tiny' else 3}.{key}.w"]
        assert d["norm_a"] == pytest.approx(2 * value, rel=1e-15)  # sqrt(4) · value: NumPy's norm gives 0 and inf
        assert d["norm_diff"] == pytest.approx(value, rel=1e-15) and d["relative_change"] == pytest.approx(0.5)


def test_the_heatmap_tells_unchanged_from_the_bits(awkward, browser):
    """Hatched "0" only where not one bit changed; the other cells by their
    ratio: none ("?") where A is all zeros or a norm is NaN, the scale's low
    end where the ratio is 0, an infinite one the top colour."""
    report, html = awkward
    cells = {c["row"]: c for c in report["by_layer_module"]["cells"]}
    assert [row for row, c in cells.items() if not c["changed"]] == ["6"]
    assert {row: c["relative_change"] for row, c in cells.items() if row in "014568"} == {
        "0": 0.0, "1": 0.0, "4": "nan", "5": "inf", "6": 0.0, "8": None}
    page = browser.open(html)
    assert page.console_errors == [] and page.requests == []
    assert page.attributes(".ck-heat td.ck-zero", "data-row") == ["6"]
    assert page.attributes(".ck-heat td.ck-unknown", "data-row") == ["4", "8"]
    styles = dict(zip(page.attributes(".ck-heat td.ck-cell", "data-row"), page.attributes(".ck-heat td.ck-cell", "style")))
    low, high = diff_page.page.colour(0.0), diff_page.page.colour(1.0)
    assert low in styles["0"] and low in styles["1"] and high in styles["5"]
    assert page.attributes("[data-zero-rows]", "data-zero-rows") == ["6"]


def test_an_infinite_change_is_ranked_first_and_named_largest(awkward, browser):
    report, html = awkward
    expected = ["5.inf_b", "2.tiny", "3.huge", "7.plain", "0.signed", "1.inf_a", "4.nan", "8.zero_a"]
    page = browser.open(html)
    names = page.attributes("#ranked-table tbody td[data-key=name]", "data-value")
    assert names == [f"model.layers.{n}.w" for n in expected]
    assert page.attributes(".ck-summary [data-key=largest]", "data-value") == ["inf"]
    assert "model.layers.5.inf_b.w" in page.texts(".ck-summary dd code")
    page.js("document.querySelectorAll('#ranked-table th')[1].click()")  # the script's sort, largest first
    assert page.attributes("#ranked-table tbody td[data-key=name]", "data-value") == names
    assert report["differing"]["model.layers.5.inf_b.w"]["relative_change"] == "inf"


def test_the_png_marks_what_colour_cannot_say(awkward):
    report, _ = awkward
    drawn = diff_png.figure(report)
    axes = drawn.axes[0]
    marks = {(round(t.get_position()[1]), t.get_text()) for t in axes.texts}
    rows = report["by_layer_module"]["rows"]
    assert marks == {(rows.index("8"), "?"), (rows.index("4"), "?"), (rows.index("5"), "∞")}
    hatched = [p for p in axes.patches if p.get_hatch()]
    assert [round(p.get_y() + 0.5) for p in hatched] == [rows.index("6")]
    assert "∞" in axes.get_xlabel() and "blank: no such tensor" in axes.get_xlabel()


def test_the_png_shows_its_labels_whole(made, awkward):
    """The colour bar's label, the title and the legend under the axes lie
    inside the figure as drawn, for the fine-tune pair (whose legend leaves
    a short axes) and a grid of a single row."""
    one_row = {"by_layer_module": {"rows": ["0"], "columns": ["mlp"], "cells": [
        {"row": "0", "column": "mlp", "changed": True, "relative_change": 0.5}]}}
    for report in (made[0], awkward[0], one_row):
        drawn = diff_png.figure(report)
        renderer = plot.matplotlib()[1](drawn).get_renderer()  # the Agg canvas the PNG is drawn on
        drawn.draw(renderer)  # the constrained layout is made as it draws
        heatmap, bar = drawn.axes
        labels = [bar.yaxis.label, heatmap.xaxis.label, heatmap.title]
        assert bar.get_ylabel() != "" and all(label.get_text() for label in labels)
        for label in labels:
            extent = label.get_window_extent(renderer)
            assert drawn.bbox.x0 <= extent.x0 and extent.x1 <= drawn.bbox.x1, label.get_text()
            assert drawn.bbox.y0 <= extent.y0 and extent.y1 <= drawn.bbox.y1, label.get_text()


def test_a_report_that_cannot_be_finished_leaves_the_old_file(tmp_path):
    """A file size limit (8 KiB) stops the writing midway: one line, exit 2,
    the file that was there untouched and no temporary left beside it."""
    for option in ("--html", "--png"):
        target = tmp_path / f"old.{option[2:]}"
        target.write_text("previous good report\n")
        command = " ".join(CKPTFS + ["diff", str(BASE), str(TUNED), option, str(target)])
        done = subprocess.run(["bash", "-c", f"trap '' XFSZ; ulimit -f 8; exec {command}"], capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert (done.returncode, done.stderr) == (2, f"ckptfs: {target}: File too large\n")
        assert target.read_text() == "previous good report\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["old.html", "old.png"][:1 + (option == "--png")])


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["r.html"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()

    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"newer")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_write_atomic_takes_a_name_as_long_as_the_file_system_allows(tmp_path):
    """The temporary beside a 250-byte name stays within NAME_MAX (it was
    `.NAME.RANDOM.tmp`: ENAMETOOLONG for a name the target itself could have)."""
    target = tmp_path / ("r" * 245 + ".html")
    write_atomic(target, b"page")
    assert target.read_bytes() == b"page" and [p.name for p in tmp_path.iterdir()] == [target.name]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_names_are_plain_text_in_the_png(tmp_path):
    """A `$` in a name was read as mathtext: an internal error for `\\foo{`."""
    f = np.ones(4, np.float32)
    names = ["model.layers.0.a$\\foo{$.weight", "model.layers.0.$x^2$.weight", "model.layers.1.mlp.weight"]
    a, b = _pair(tmp_path, dict.fromkeys(names, f), dict.fromkeys(names, f * 2))
    done = run_ckptfs("diff", a, b, "--png", tmp_path / "r.png")
    assert done.returncode == 1 and done.stderr == ""
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(run_ckptfs("diff", a, b, "--json").stdout)
    labels = [t.get_text() for t in diff_png.figure(report, "$\\foo{$").axes[0].get_xticklabels()]
    assert labels == ["$x^2$", "a$\\foo{$", "mlp"]


def _safetensors_with_raw_header(path: Path, header: str, data: bytes) -> None:
    encoded = header.encode("ascii")
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_a_name_utf8_cannot_encode_is_shown_escaped(tmp_path, browser):
    """A lone surrogate in a name (JSON's "\\ud800" in a safetensors header):
    a valid UTF-8 page showing `\\ud800`, never an internal error or an empty file."""
    for side, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / side).mkdir()
        _safetensors_with_raw_header(tmp_path / side / "model.safetensors",
                                     '{"model.layers.0.w\\ud800.weight":{"dtype":"F32","shape":[1],'
                                     '"data_offsets":[0,4]}}', struct.pack("<f", value))
    done = run_ckptfs("diff", tmp_path / "a", tmp_path / "b", "--html", tmp_path / "r.html")
    assert done.returncode == 1 and done.stderr == "" and "model.layers.0.w\\ud800.weight" in done.stdout
    (tmp_path / "r.html").read_bytes().decode("utf-8")  # strict: valid UTF-8
    page = browser.open(tmp_path / "r.html")
    assert page.console_errors == [] and page.requests == []
    assert page.attributes("#ranked-table td[data-key=name]", "data-value") == ["model.layers.0.w\\ud800.weight"]


def test_json_of_identical_checkpoints_stays_small(tmp_path):
    """Two identical checkpoints: the report is its counts and the heatmap's
    cells, whatever the number of tensors (it listed every bit-equal one)."""
    sizes = []
    for count in (200, 4000):
        weights = {f"model.layers.{i % 100}.mlp.w{i // 100}": np.zeros(1, np.float32) for i in range(count)}
        folder = tmp_path / str(count)
        folder.mkdir()
        save_file(weights, str(folder / "model.safetensors"))
        done = run_ckptfs("diff", folder, folder, "--json", "--tensors-only")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["equal"] == count and "equal_tensors" not in report
        assert sum(c["tensors"] for c in report["by_layer_module"]["cells"]) == count
        sizes.append(len(done.stdout))
    assert sizes[1] < 1.1 * sizes[0] < 50 * 600  # 50 cells (100 layers in 50 rows) of 200 or 4,000 tensors


def test_the_report_files_complete_as_file_names():
    """`--html FILE` and `--png FILE` completed nothing in bash and zsh."""
    made = manual.render(build_parser())
    for option in ("--html", "--png"):
        assert f'{option}) COMPREPLY=($(compgen -f -- "$cur")); return ;;' in made["bash"]
        assert re.search(re.escape(option) + r"\[[^]]*\]:value:_files'", made["zsh"])
