"""`ckptfs diff --html/--png` on a real fine-tune pair (tests/fixtures/finetune:
a tiny Llama trained a few steps on CPU, decoder layer 1 frozen), opened in
a real headless Chromium (tests/browser.py): the page fetches nothing and
logs no error, its heatmap has one cell per (layer, module) of the pair and
the frozen row alone shows zero, and every number it shows is the one of
`ckptfs diff --json`, whose norms are NumPy's over safetensors' tensors."""

from __future__ import annotations

import json
import math
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
from ckptfs.report import diff_page, grouping
from ckptfs.report.grouping import Place, place

from .browser import chromium
from .conftest import REPO, TIMEOUT, run_ckptfs

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
    report = {"differing": {n: {"norm_a": 2.0, "norm_diff": 1.0} for n in names}, "equal_tensors": {}}
    assert grouping.grid(report).rows == ["decoder.block 0", "decoder.block 1", "encoder.block 0", "encoder.block 1",
                                          "other"]
    many = {f"h.{i}.attn.weight": {"norm_a": 1.0, "norm_diff": 0.5} for i in range(200)}
    found = grouping.grid({"differing": many, "equal_tensors": {}})
    assert len(found.rows) <= grouping.MAX_ROWS and found.rows[0] == "0–2"
    assert found.cells[("0–2", "attn")].tensors == 3


def test_the_grid_is_bounded_whatever_the_names():
    names = {f"w{i}.weight": {"norm_a": 1.0, "norm_diff": 0.1} for i in range(500)}
    names["x." + "9" * 5000 + ".weight"] = {"norm_a": 1.0, "norm_diff": 0.1}  # no int() of 5,000 digits
    found = grouping.grid({"differing": names, "equal_tensors": {}})
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
    assert frozen and set(report["equal_tensors"]) == frozen
    assert all(np.array_equal(a[n], b[n]) for n in frozen)
    for name, e in report["equal_tensors"].items():
        assert e["norm_a"] == pytest.approx(np.linalg.norm(a[name].astype(np.float64)), rel=1e-12)


def _expected_cells(report: dict) -> dict[tuple[str, str], float]:
    sums: dict[tuple[str, str], list[float]] = {}
    for name, a, d in grouping.compared(report):
        p = place(name)
        key = (grouping.OTHER if p.layer is None else str(p.layer), p.module)
        sums.setdefault(key, [0.0, 0.0])
        sums[key][0] += a * a
        sums[key][1] += d * d
    return {key: (0.0 if sd == 0 else math.sqrt(sd) / math.sqrt(sa)) for key, (sa, sd) in sums.items()}


def test_the_page_shows_the_pair_offline(made, browser):
    report, html, _ = made
    page = browser.open(html)
    assert page.console_errors == [] and page.requests == []
    rows = page.attributes(".ck-heat td.ck-cell", "data-row")
    columns = page.attributes(".ck-heat td.ck-cell", "data-column")
    values = [float(v) for v in page.attributes(".ck-heat td.ck-cell", "data-value")]
    shown = dict(zip(zip(rows, columns), values))
    expected = _expected_cells(report)
    assert len(rows) == len(shown) == len(expected) == 3 * 9 + 3  # 3 layers × 9 modules, and 3 "other"
    assert shown.keys() == expected.keys()
    assert shown == expected  # exactly: the page's value is the JSON's norms' own sum
    assert all((v == 0) == (row == FROZEN) for (row, _), v in shown.items())
    assert page.count(".ck-heat td.ck-zero") == 9 == sum(1 for row in rows if row == FROZEN)


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
    return {"removed": [], "added": [], "changed": [], "differing": differing, "equal": 0, "equal_tensors": {},
            "values": [], "files": {"removed": [], "added": [], "changed": []}, "same": False}


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
