"""`ckptfs diff A B`: what differs, measured as NumPy measures it, across
formats, with --map, --include and --exclude; exit status as diff(1)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import ml_dtypes
import numpy as np
import torch
from safetensors.numpy import save_file

from .conftest import FIXTURES, TIMEOUT, run_ckptfs

NEMO = FIXTURES / "nemo" / "tiny.nemo"


def _diff(*args) -> tuple[int, dict]:
    done = run_ckptfs("diff", "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _expected(x: np.ndarray, y: np.ndarray) -> dict:
    fx, fy = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    delta = np.abs(fx - fy)
    rel = np.where(delta == 0, 0, delta / np.maximum(np.abs(fx), np.abs(fy)))
    return {"elements": x.size, "differing": int((x.view(np.uint8).reshape(x.size, -1)
                                                  != y.view(np.uint8).reshape(y.size, -1)).any(axis=1).sum()),
            "max_abs_diff": delta.max(), "max_rel_diff": rel.max(),
            "cosine": fx @ fy / (np.linalg.norm(fx) * np.linalg.norm(fy))}


def test_every_kind_of_difference_is_named_and_measured(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 48)).astype(np.float32)
    tuned = base.copy()
    tuned[3, :7] += 0.25
    half = rng.standard_normal(100).astype(ml_dtypes.bfloat16)
    half_tuned = half.copy()
    half_tuned[::10] = 0
    a = {"same": base, "tuned": base, "half": half, "gone": base[:2], "reshaped": base, "retyped": base}
    b = {"same": base, "tuned": tuned, "half": half_tuned, "new": base[:1], "reshaped": base.reshape(48, 64),
         "retyped": base.astype(np.float16)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    status, report = _diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert status == 1 and not report["same"]
    assert (report["removed"], report["added"], report["equal"]) == (["gone"], ["new"], 1)
    assert [c["name"] for c in report["changed"]] == ["reshaped", "retyped"]
    assert report["changed"][1]["b"] == {"dtype": "float16", "shape": [64, 48]}
    for name, (x, y) in {"tuned": (base, tuned), "half": (half, half_tuned)}.items():
        got, want = report["differing"][name], _expected(x, y)
        assert got["elements"] == want["elements"] and got["differing"] == want["differing"], name
        for key in ("max_abs_diff", "max_rel_diff", "cosine"):
            assert np.isclose(got[key], want[key], rtol=1e-12, atol=0), (name, key, got[key], want[key])
    assert report["differing"]["tuned"]["differing"] == 7
    text = run_ckptfs("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors").stdout.splitlines()
    assert "only in A: gone" in text and "only in B: new" in text
    assert "changed: retyped: float32 [64, 48] -> float16 [64, 48]" in text
    assert text[-1] == "1 tensor bit-equal"
    only, report = _diff("--include", "same", "--include", "t*", "--exclude", "tuned",
                         tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert only == 0 and report["same"] and report["equal"] == 1


def test_a_nemo_against_a_safetensors_of_its_weights_with_a_prefix_map(tmp_path):
    """Across formats: the .nemo's state dict saved by safetensors under
    other names; --map rewrites A's names to B's."""
    with tarfile.open(NEMO) as tf:
        weights = torch.load(io.BytesIO(tf.extractfile("./model_weights.ckpt").read()), weights_only=True)
    from safetensors.torch import save_file as save_torch

    save_torch({f"model.{k}": v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"))
    status, report = _diff(NEMO, tmp_path / "w.safetensors")
    assert status == 1 and len(report["removed"]) == len(weights) == len(report["added"])
    maps = ["--map", "encoder.=model.encoder.", "--map", "emb.=model.emb.", "--map", "norm.=model.norm.", "--map",
            "counter=model.counter"]
    status, report = _diff(*maps, NEMO, tmp_path / "w.safetensors")  # the .nemo's config and vocabulary too
    with tarfile.open(NEMO) as tf:
        beside = sorted(name.removeprefix("./") for name in tf.getnames() if name.endswith((".yaml", ".txt")))
    assert (status, report["equal"], report["files"]["removed"]) == (1, len(weights), beside), report
    status, report = _diff("--tensors-only", *maps, NEMO, tmp_path / "w.safetensors")
    assert (status, report["equal"], report["same"]) == (0, len(weights), True), report


def test_identical_configs_and_a_changed_one(tmp_path):
    same = run_ckptfs("diff", NEMO, NEMO)
    assert same.returncode == 0 and same.stdout.strip().endswith("the checkpoints are the same")
    changed = tmp_path / "changed.nemo"
    with tarfile.open(NEMO) as src, tarfile.open(changed, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "./model_config.yaml":
                data = data.replace(b"d_out: 8", b"d_out: 9")
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    status, report = _diff(NEMO, changed)
    assert status == 1 and report["equal"] == 8
    assert [change["path"] for change in report["files"]["changed"]] == ["model_config.yaml"]
    assert "-d_out: 8\n+d_out: 9\n" in report["files"]["changed"][0]["diff"]


def test_trouble_is_status_2():
    done = run_ckptfs("diff", NEMO, "/nonexistent/model.pt")
    assert done.returncode == 2 and done.stderr == "ckptfs: /nonexistent/model.pt: no such file or directory\n"
    for bad in ("nothing", "=model."):
        bad_map = run_ckptfs("diff", "--map", bad, NEMO, NEMO)
        assert bad_map.returncode == 2 and "OLD=NEW" in bad_map.stderr


def test_without_ml_dtypes_bfloat16_is_compared_bit_for_bit(tmp_path):
    half = np.arange(40, dtype=np.float32).astype(ml_dtypes.bfloat16)
    other = half.copy()
    other[5] = 99
    save_file({"h": half}, str(tmp_path / "a.safetensors"))
    save_file({"h": other}, str(tmp_path / "b.safetensors"))
    no_ml_dtypes = "import sys; sys.modules['ml_dtypes'] = None; from ckptfs.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", no_ml_dtypes, "diff", "--json", str(tmp_path / "a.safetensors"),
                           str(tmp_path / "b.safetensors")], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["differing"] == {"h": {"elements": 40, "differing": 1}}


def test_nan_and_infinity_are_measured_and_written_as_json_can_hold(tmp_path):
    x = np.array([1.0, np.nan, 3.0, 4.0], np.float32)
    y = np.array([1.0, np.nan, np.inf, 4.0], np.float32)  # the same NaN on both sides is no difference
    save_file({"same_nan": x, "to_inf": x}, str(tmp_path / "a.safetensors"))
    save_file({"same_nan": x.copy(), "to_inf": y}, str(tmp_path / "b.safetensors"))
    done = run_ckptfs("diff", "--json", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    assert done.returncode == 1
    assert "NaN" not in done.stdout and "Infinity" not in done.stdout
    report = json.loads(done.stdout)
    assert report["equal"] == 1 and list(report["differing"]) == ["to_inf"]
    assert report["differing"]["to_inf"]["differing"] == 1
    assert report["differing"]["to_inf"]["max_abs_diff"] == "inf"
    assert report["differing"]["to_inf"]["cosine"] == "nan"
