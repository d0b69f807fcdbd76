"""torch.export archives (.pt2): archives written at test time by
torch.export.save (and package_pt2, and in the layout of torch 2.5-2.7),
read through a real mount, every weight and constant bit for bit what
torch.export.load loads; the JSON records as YAML, every record in the raw
mirror; info, ls, diff and export on them."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import ml_dtypes  # noqa: F401  (bfloat16 for np.load)
import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file
from torch.export.pt2_archive import PT2ArchiveWriter
from torch.export.pt2_archive._package import load_pt2, package_pt2

from .conftest import run_ckptfs


class Tiny(torch.nn.Module):
    """float32 and bfloat16 parameters, a parameter tied to another, a
    transposed (non-contiguous) parameter, a buffer and a slice of it (one
    storage, an offset), and a tensor constant."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(4, 3)
        self.low = torch.nn.Linear(3, 2).to(torch.bfloat16)
        self.head = torch.nn.Linear(4, 3, bias=False)
        self.head.weight = self.lin.weight
        self.turned = torch.nn.Parameter(torch.randn(4, 6).t())
        self.register_buffer("steps", torch.arange(10, dtype=torch.int64))
        self.register_buffer("window", self.steps[2:8])
        self.scale = torch.tensor([1.0, 2.0, 3.0])

    def forward(self, x):
        y = self.lin(x) + self.head(x) + self.scale + self.window.sum() + self.steps.sum()
        return self.low(y.bfloat16()).float().sum() + self.turned.sum()


def _exported(seed: int = 0) -> torch.export.ExportedProgram:
    return torch.export.export(Tiny(seed), (torch.randn(2, 4),))


def _save(ep, path: Path, **extra) -> None:
    """torch.export.save, which warns of the transposed parameter (its
    storage is no tensor of the module) and stores it whole all the same."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No complete tensor found")
        if isinstance(ep, dict):
            package_pt2(path, exported_programs=ep)
        else:
            torch.export.save(ep, path, **extra)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    _save(_exported(), path, extra_files={"notes.txt": "trained 3 epochs"})
    return path


def _reference(path: Path) -> dict[str, torch.Tensor]:
    """Every weight and constant as torch.export.load loads them."""
    ep = torch.export.load(path)
    return {**ep.state_dict, **ep.constants}


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(served: Path, tensor: torch.Tensor) -> None:
    array = np.load(served)
    assert array.dtype.name == str(tensor.dtype).removeprefix("torch."), served
    assert array.shape == tuple(tensor.shape), served
    assert array.tobytes() == _bits(tensor), served


def _npy_files(mnt: Path) -> set[str]:
    return {str(p.relative_to(mnt)) for p in mnt.rglob("*.npy") if ".ckptfs" not in p.parts}


def test_every_weight_and_constant_is_what_torch_export_load_loads(archive, mount):
    mnt = mount(archive, "-o", "ro")
    reference = _reference(archive)
    assert set(reference) == {"lin.weight", "lin.bias", "low.weight", "low.bias", "head.weight", "turned", "steps",
                              "window", "scale"}
    assert _npy_files(mnt) == {key.replace(".", "/") + ".npy" for key in reference}
    for key, tensor in reference.items():
        served = mnt / (key.replace(".", "/") + ".npy")
        _same(served, tensor)
        assert os.getxattr(served, "user.ckptfs.name").decode() == key
    # a view in C order is served from its record's bytes; the transposed one is gathered on read
    start, end = map(int, os.getxattr(mnt / "lin" / "weight.npy", "user.ckptfs.range").decode().split("-"))
    with open(archive, "rb") as f:
        f.seek(start)
        assert f.read(end - start) == _bits(reference["lin.weight"])
    tied = os.getxattr(mnt / "head" / "weight.npy", "user.ckptfs.range")
    assert tied == os.getxattr(mnt / "lin" / "weight.npy", "user.ckptfs.range")  # one record, shown twice
    assert os.getxattr(mnt / "turned.npy", "user.ckptfs.storage").decode().endswith("stride [1, 6]")
    start, end = map(int, os.getxattr(mnt / "window.npy", "user.ckptfs.range").decode().split("-"))
    assert end - start == 6 * 8  # the slice alone, inside the record of `steps`
    mapped = np.load(mnt / "lin" / "weight.npy", mmap_mode="r")
    assert mapped[1].tobytes() == _bits(reference["lin.weight"][1])
    del mapped


def test_the_json_records_are_yaml_and_every_record_is_in_raw(archive, mount):
    mnt = mount(archive, "-o", "ro")
    with zipfile.ZipFile(archive) as z:
        records = {info.filename: z.read(info) for info in z.infolist()}
    folder = next(iter(records)).split("/")[0]
    assert yaml.safe_load((mnt / "exported_program.yaml").read_text()) == json.loads(records[f"{folder}/models/model.json"])
    for kind in ("weights", "constants"):
        config = json.loads(records[f"{folder}/data/{kind}/model_{kind}_config.json"])
        assert yaml.safe_load((mnt / f"{kind}_config.yaml").read_text()) == config
    facts = yaml.safe_load((mnt / "archive.yaml").read_text())
    assert facts["archive_format"] == "pt2" and facts["byteorder"] == "little" and facts["archive_version"] == "0"
    assert (mnt / "extra" / "notes.txt").read_text() == "trained 3 epochs"
    inputs = torch.load(io.BytesIO((mnt / "sample_inputs.pt").read_bytes()), weights_only=True)
    assert torch.equal(inputs[0][0], torch.export.load(archive).example_inputs[0][0])
    raw = mnt / ".ckptfs" / "raw"
    assert (raw / archive.name).read_bytes() == archive.read_bytes()
    for name, data in records.items():
        assert (raw / name).read_bytes() == data, name
    for path in mnt.rglob("*"):
        assert path.is_dir() or os.access(path, os.R_OK) and not os.access(path, os.W_OK) or ".ckptfs" in path.parts


def test_info_ls_diff_and_export(archive, tmp_path):
    info = json.loads(run_ckptfs("info", "--json", archive).stdout)
    assert info["format"] == "torch.export (pt2)" and info["tensors"] == 9
    listed = run_ckptfs("ls", "-l", archive)
    assert listed.returncode == 0 and "turned.npy  float32 [6, 4]" in listed.stdout, listed.stdout
    other = tmp_path / "tuned.pt2"
    ep = _exported()
    with torch.no_grad():
        ep.state_dict["lin.bias"][1] += 1
    _save(ep, other)
    diff = run_ckptfs("diff", "--tensors-only", archive, other)
    assert diff.returncode == 1 and "differs: lin.bias: 1 of 3 elements" in diff.stdout, diff.stdout + diff.stderr
    assert "turned" not in diff.stdout
    out = tmp_path / "tiny.safetensors"
    done = run_ckptfs("export", archive, out, "--to", "safetensors")
    assert done.returncode == 0, done.stderr
    exported = load_file(out)
    reference = _reference(archive)
    assert set(exported) == set(reference)
    for key, tensor in reference.items():
        assert exported[key].tobytes() == _bits(tensor) and exported[key].shape == tuple(tensor.shape), key


def test_several_programs_each_have_their_folder(tmp_path, mount):
    path = tmp_path / "pair.pt2"
    _save({"enc": _exported(1), "dec": _exported(2)}, path)
    mnt = mount(path, "-o", "ro")
    loaded = load_pt2(path).exported_programs
    for program, ep in loaded.items():
        for key, tensor in {**ep.state_dict, **ep.constants}.items():
            _same(mnt / program / (key.replace(".", "/") + ".npy"), tensor)
        assert (mnt / program / "exported_program.yaml").is_file()
    assert sorted(os.listdir(mnt)) == [".ckptfs", "archive.yaml", "dec", "enc"]


def _saved(value) -> bytes:
    out = io.BytesIO()
    torch.save(value, out)
    return out.getvalue()


def _in_pt2_of_torch_2_7(path: Path, ep, model: bytes, inputs: bytes) -> None:
    """torch 2.5-2.7: a PT2 archive, each program's state dict and constants
    a torch.save zip (data/weights/model.pt)."""
    with PT2ArchiveWriter(str(path)) as w:
        w.write_bytes("models/model.json", model)
        w.write_bytes("data/sample_inputs/model.pt", inputs)
        w.write_bytes("data/weights/model.pt", _saved(ep.state_dict))
        w.write_bytes("data/constants/model.pt", _saved(ep.constants))
        w.write_string("extra/notes.txt", "older")


def _in_zip_of_torch_2_1(path: Path, ep, model: bytes, inputs: bytes) -> None:
    """torch 2.1-2.6: a plain zip of serialized_*.json and .pt records."""
    from torch._export.serde.schema import SCHEMA_VERSION

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("serialized_exported_program.json", model)
        z.writestr("serialized_state_dict.pt", _saved(ep.state_dict))
        z.writestr("serialized_constants.pt", _saved(ep.constants))
        z.writestr("serialized_example_inputs.pt", inputs)
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        z.writestr("extra_files/notes.txt", "older")


@pytest.mark.parametrize("write", [_in_pt2_of_torch_2_7, _in_zip_of_torch_2_1])
def test_an_archive_of_an_older_torch_shows_the_same_tree(archive, tmp_path, mount, write):
    """Layouts torch.export.load still reads: the tensors come from
    torch.save zips, read as such, and land where a new archive's do."""
    with zipfile.ZipFile(archive) as z:
        model, inputs = (next(z.read(n) for n in z.namelist() if n.endswith(end))
                         for end in ("models/model.json", "sample_inputs/model.pt"))
    path = tmp_path / "older.pt2"
    write(path, torch.export.load(archive), model, inputs)
    mnt = mount(path, "-o", "ro")
    extra = {"notes.txt": ""}
    ep = torch.export.load(path, extra_files=extra)
    reference = {**ep.state_dict, **ep.constants}
    assert _npy_files(mnt) == {key.replace(".", "/") + ".npy" for key in reference}
    for key, tensor in reference.items():
        _same(mnt / (key.replace(".", "/") + ".npy"), tensor)
    assert yaml.safe_load((mnt / "exported_program.yaml").read_text()) == json.loads(model)
    assert (mnt / "extra" / "notes.txt").read_text() == extra["notes.txt"] == "older"
    assert (mnt / "sample_inputs.pt").read_bytes() == inputs


def test_a_torch_save_zip_is_not_taken_for_an_archive(tmp_path):
    path = tmp_path / "state.pt2"
    torch.save(Tiny().state_dict(), path)
    info = json.loads(run_ckptfs("info", "--json", path).stdout)
    assert info["format"] == "torch (zip)"
