"""The generated malicious corpus (tests/malicious/generate.py): each sample
really runs its payload under its loader, in a throwaway child, and `ckptfs
scan` calls every one dangerous without running anything; checkpoints
written by Lightning, transformers, DeepSpeed, NeMo, torch's optimizers,
NumPy and torch.distributed.checkpoint are safe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptfs.scan import scan

from .conftest import TIMED_APART, TIMEOUT
from .malicious.generate import LOADERS, SAMPLES
from .malicious.safe import REPO, SAFE
from .malicious.safe import SAMPLES as REPO_SAMPLES

#: the real checkpoints are written once by Lightning, transformers and DeepSpeed, within their own timeout
pytestmark = [pytest.mark.filterwarnings("ignore:torch.distributed is disabled"), TIMED_APART]


@pytest.mark.parametrize("name", SAMPLES)
def test_the_payload_runs_under_its_loader(name, tmp_path):
    sample = SAMPLES[name]
    assert sample.loader in LOADERS
    marker = tmp_path / "ran"
    path = sample.write(tmp_path, marker)
    done = subprocess.run([sys.executable, "-m", "tests.malicious.load", sample.loader, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert marker.exists(), f"{name}: the loader did not run the payload\n{done.stderr[-2000:]}"


@pytest.mark.parametrize("name", SAMPLES)
def test_scan_calls_it_dangerous(name, tmp_path):
    sample = SAMPLES[name]
    marker = tmp_path / "ran"
    report = scan(str(sample.write(tmp_path, marker)), cache_dir=str(tmp_path / "cache"))
    assert report.verdict == "dangerous", (name, report.problems, report.notes)
    assert not marker.exists()


@pytest.fixture(scope="module")
def safe_checkpoints(tmp_path_factory, written) -> dict[str, Path]:
    """Written in a child: Lightning, transformers and DeepSpeed stay out of the test process.
    The DeepSpeed and DCP saves are test_deepspeed.py's and test_dcp.py's, by the same writers."""
    base = tmp_path_factory.mktemp("safe")
    shared = {"deepspeed": written("tests.deepspeed_writer", "2", "3", "PORT"),  # test_deepspeed.py's zero2
              "dcp": written("tests.dcp_writer", "2", "PORT")}  # test_dcp.py's 2 ranks
    done = subprocess.run([sys.executable, "-m", "tests.malicious.safe", str(base),
                           *(f"{name}={folder}" for name, folder in shared.items())], cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT * 15)
    assert done.returncode == 0, done.stderr[-3000:]
    return {path.name: path for path in base.iterdir()}


@pytest.mark.parametrize("name", [*SAFE, *(Path(p).name for p in REPO_SAMPLES)])
def test_real_checkpoints_are_safe(name, safe_checkpoints):
    report = scan(str(safe_checkpoints[name]))
    assert (report.verdict, report.problems, report.dangerous) == ("safe", [], []), name
    if name in ("deepspeed", "lightning.ckpt", "optimizer.pt", "transformers", "dcp"):
        assert report.pickles, name  # they hold pickles, all read


def test_the_corpus_generator_writes_a_manifest(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.malicious.generate", str(tmp_path / "corpus")], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert list(manifest) == list(SAMPLES)
    assert all(os.path.exists(tmp_path / "corpus" / entry["path"]) for entry in manifest.values())
    assert not list((tmp_path / "corpus").glob("*/ran"))  # written, never loaded
