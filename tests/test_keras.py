"""Keras `.keras` files and HDF5 `.h5` / `.weights.h5` files, written by
Keras in a subprocess (tests/keras_writer.py): every dataset read through
a real mount equal, bit for bit, to what `keras.saving.load_model` (or
`model.load_weights`) gives and to what h5py reads; chunked, compressed,
big-endian and compact datasets read through h5py in the forked daemon;
a config edit repacked into a model Keras loads; info, cat, export, diff;
Lambda layers found by `ckptfs scan`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from ckptfs.errors import FormatError
from ckptfs.formats import hdf5
from ckptfs.sources.base import FileSource

from .conftest import REPO, TIMED_APART, run_ckptfs, umount, write_refused
from .hostile.keras import weights_h5

pytestmark = TIMED_APART

MODELS = ("plain.keras", "plain.h5", "plain.weights.h5")


@pytest.fixture(scope="module")
def models(written):
    return written("tests.keras_writer")


def _served_weights(mnt: Path, model: str) -> dict[tuple[str, int], Path]:
    """(layer name, weight index) -> its file in the mount, through
    attributes.yaml: each `vars` group's `name` in a .keras or .weights.h5
    file, each layer's `weight_names` in a legacy .h5."""
    attributes = yaml.safe_load((mnt / "attributes.yaml").read_text())
    found = {}
    for group, attrs in attributes.items():
        if model.endswith(".weights.h5") or model.endswith(".keras"):
            if group.endswith("/vars") and group != "vars":
                for file in (mnt / group).glob("*.npy"):
                    found[(attrs["name"], int(file.stem))] = file
        elif "weight_names" in attrs:
            layer = group.rpartition("/")[2]
            for n, weight in enumerate(attrs["weight_names"]):
                found[(layer, n)] = mnt / group / f"{weight}.npy"
    return found


def _h5_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset as h5py reads it (inside the zip for a .keras)."""
    data = zipfile.ZipFile(path).read("model.weights.h5") if path.suffix == ".keras" else path.read_bytes()
    out = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_every_dataset_reads_as_keras_loads_it(models, mount, model):
    mnt = mount(models / model, "-o", "ro")
    references = models / "references" / model
    served = _served_weights(mnt, model)
    expected = {(layer.name, int(f.stem)): f for layer in references.iterdir() for f in layer.iterdir()}
    assert sorted(served) == sorted(expected) and len(served) == 8
    for key, reference in expected.items():
        want, got = np.load(reference), np.load(served[key])
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), key
    assert np.load(served[("d2", 0)]).dtype == np.float16
    datasets = _h5_datasets(models / model)
    for name, values in datasets.items():
        got = np.load(mnt / f"{name}.npy")
        assert got.dtype == values.dtype and got.tobytes() == values.tobytes(), name
    if model.endswith(".keras"):
        config = yaml.safe_load((mnt / "config.yaml").read_text())
        assert config == json.loads(zipfile.ZipFile(models / model).read("config.json"))
        assert yaml.safe_load((mnt / "metadata.yaml").read_text())["keras_version"].startswith("3.")
    if model == "plain.h5":
        assert yaml.safe_load((mnt / "model_config.yaml").read_text())["config"]["name"] == "plain"


def test_bfloat16_weights_read_as_keras_loads_them(models, mount):
    """Keras stores bfloat16 as 2-byte opaque HDF5 values with a `dtype`
    attribute: served as bfloat16 (docs/dtypes.md), bit for bit."""
    mnt = mount(models / "bf16.keras", "-o", "ro")
    for n in (0, 1):
        want = np.load(models / "references" / "bf16.keras" / "b" / f"{n}.npy", allow_pickle=False)
        served = mnt / "layers" / "dense" / "vars" / f"{n}.npy"
        assert os.getxattr(served, "user.ckptfs.dtype") == b"bfloat16"
        got = np.load(served)
        assert got.dtype == ml_dtypes.bfloat16 and want.dtype.itemsize == 2  # np.save wrote Keras's values as |V2
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), n


def test_contiguous_datasets_are_served_from_the_file(models, mount):
    """Keras stores the weights file uncompressed in the zip, and h5py
    writes contiguous datasets: each `.npy` names its byte range in the
    .keras file itself, where those bytes are the values."""
    path = models / "plain.keras"
    mnt = mount(path, "-o", "ro")
    kernel = mnt / "layers" / "dense" / "vars" / "0.npy"
    start, end = map(int, os.getxattr(kernel, "user.ckptfs.range").decode().split("-"))
    assert os.getxattr(kernel, "user.ckptfs.source").decode() == str(path)
    assert path.read_bytes()[start:end] == np.load(kernel).tobytes()


def _odd_h5(path: Path) -> dict[str, np.ndarray]:
    """An HDF5 file of datasets stored every way but contiguous and
    little-endian, as h5py writes them; returns what it holds."""
    rng = np.random.default_rng(3)
    arrays = {"gzip/weight": rng.standard_normal((301, 517)).astype(np.float32),
              "lzf/ids": rng.integers(-9, 9, (3, 40, 7)).astype(np.int64),
              "big_endian": np.arange(12, dtype=">f8").reshape(3, 4),
              "compact": np.arange(10, dtype=np.int16),
              "scalar": np.float64(2.5), "mask": np.array([True, False, True])}
    with h5py.File(path, "w") as f:
        f.create_dataset("gzip/weight", data=arrays["gzip/weight"], chunks=(7, 33), compression="gzip", shuffle=True)
        f.create_dataset("lzf/ids", data=arrays["lzf/ids"], chunks=(2, 9, 7), compression="lzf")
        f.create_dataset("big_endian", data=arrays["big_endian"])
        space = h5py.h5s.create_simple((10,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        h5py.h5d.create(f.id, b"compact", h5py.h5t.STD_I16LE, space, plist).write(
            h5py.h5s.ALL, h5py.h5s.ALL, arrays["compact"])
        f["scalar"], f["mask"] = arrays["scalar"], arrays["mask"]
        f["names"] = np.array([b"a", b"bcd"])  # no tensor: left out, in a note
        f.attrs["note"] = "written by h5py"
    return arrays


def test_chunked_compressed_and_compact_datasets_read_through_h5py(tmp_path, mount):
    path = tmp_path / "odd.h5"
    arrays = _odd_h5(path)
    mnt = mount(path, "-o", "ro")
    for name, values in arrays.items():
        got = np.load(mnt / f"{name}.npy")
        want = np.asarray(values).astype(np.asarray(values).dtype.newbyteorder("<"))
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name
    weight = (mnt / "gzip" / "weight.npy").read_bytes()
    header = len(weight) - arrays["gzip/weight"].nbytes
    rng = np.random.default_rng(0)
    with open(mnt / "gzip" / "weight.npy", "rb") as f:
        for _ in range(40):  # reads that start and end inside rows and chunks
            offset, length = int(rng.integers(header, len(weight))), int(rng.integers(1, 9000))
            assert os.pread(f.fileno(), length, offset) == weight[offset:offset + length]
    storage = os.getxattr(mnt / "gzip" / "weight.npy", "user.ckptfs.hdf5_storage").decode()
    assert storage.startswith("chunked [7, 33], filters: shuffle, deflate"), storage
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert any("names" in note and "not a tensor" in note for note in info["notes"])
    assert yaml.safe_load((mnt / "attributes.yaml").read_text())["/"]["note"] == "written by h5py"


def test_a_deflated_weights_record_still_reads(models, tmp_path, mount):
    """A .keras zip rewritten with every record deflated (Keras reads it):
    the HDF5 file is inflated as h5py and the mount read it."""
    path = tmp_path / "deflated.keras"
    with zipfile.ZipFile(models / "plain.keras") as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    mnt = mount(path, "-o", "ro")
    for name, values in _h5_datasets(path).items():
        assert np.load(mnt / f"{name}.npy").tobytes() == values.tobytes(), name
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert any("compressed in the archive" in note for note in info["notes"])


def test_info_cat_export_and_diff(models, tmp_path):
    info = json.loads(run_ckptfs("info", "--json", str(models / "plain.keras")).stdout)
    assert info["format"] == "Keras (.keras)" and info["tensors"] == 8
    legacy = json.loads(run_ckptfs("info", "--json", str(models / "plain.h5")).stdout)
    assert legacy["format"] == "HDF5 (Keras .h5)" and legacy["tensors"] == 8
    listed = run_ckptfs("ls", str(models / "plain.keras"), "layers/dense/vars")
    assert listed.returncode == 0 and "0.npy" in listed.stdout and "1.npy" in listed.stdout
    shown = run_ckptfs("cat", str(models / "plain.keras"), "config.yaml")
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["class_name"] == "Sequential"
    out = tmp_path / "plain.safetensors"
    done = run_ckptfs("export", str(models / "plain.keras"), "--to", "safetensors", str(out))
    assert done.returncode == 0, done.stderr
    exported = load_file(out)
    datasets = _h5_datasets(models / "plain.keras")
    assert {k.replace(".", "/") for k in exported} == set(datasets)
    for key, values in exported.items():
        assert values.tobytes() == datasets[key.replace(".", "/")].tobytes(), key
    diff = run_ckptfs("diff", str(models / "plain.keras"), str(models / "other.keras"))
    assert diff.returncode == 1 and "layers.dense.vars.0" in diff.stdout
    assert run_ckptfs("diff", str(models / "plain.keras"), str(models / "plain.keras")).returncode == 0


def _keras_check(path: Path, layer: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.keras_writer", "-", "--check", str(path), layer], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_config_edit_is_repacked_into_a_model_keras_loads(models, tmp_path, mount):
    path = tmp_path / "edited.keras"
    path.write_bytes((models / "plain.keras").read_bytes())
    mnt = mount(path)
    config = yaml.safe_load((mnt / "config.yaml").read_text())
    dense = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "d1")
    dense["config"]["name"], dense["config"]["trainable"] = "first", False
    (mnt / "config.yaml").write_text(yaml.safe_dump(config))
    assert run_ckptfs("umount", str(mnt)).returncode == 0
    loaded = _keras_check(path, "first")
    assert loaded["config"]["trainable"] is False and loaded["layers"][0] == "first"
    with zipfile.ZipFile(path) as new, zipfile.ZipFile(models / "plain.keras") as old:
        assert [i.filename for i in new.infolist()] == [i.filename for i in old.infolist()]
        for name in ("metadata.json", "model.weights.h5"):
            assert new.read(name) == old.read(name)
    references = models / "references" / "plain.keras" / "d1"
    remounted = mount(path, "-o", "ro")
    assert np.load(remounted / "layers" / "dense" / "vars" / "0.npy").tobytes() == np.load(
        references / "0.npy").tobytes()


def test_scan_lists_lambda_layers(models):
    for model in ("lambda.keras", "lambda.h5"):
        done = run_ckptfs("scan", "--json", str(models / model))
        report = json.loads(done.stdout)
        assert done.returncode == 1 and report["verdict"] == "dangerous", done.stdout
        assert [d["global"] for d in report["dangerous"]] == ["keras.layers.Lambda"]
        assert "bytecode" in report["dangerous"][0]["reason"] and "layer 'double'" in report["dangerous"][0]["location"]
    for model in MODELS:
        done = run_ckptfs("scan", "--json", str(models / model))
        assert done.returncode == 0 and json.loads(done.stdout)["verdict"] == "safe", done.stdout


def test_a_config_importing_a_module_outside_keras_is_dangerous(models, tmp_path):
    path = tmp_path / "custom.keras"
    with zipfile.ZipFile(models / "plain.keras") as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["module"] = "my_package.layers"
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)
    report = json.loads(run_ckptfs("scan", "--json", str(path)).stdout)
    assert [d["global"] for d in report["dangerous"]] == ["my_package.layers.Dense"]
    allowed = json.loads(run_ckptfs("scan", "--json", "--allow", "my_package.*", str(path)).stdout)
    assert allowed["verdict"] == "safe"


def test_without_h5py_one_line_names_the_extra(models):
    code = ("import sys, runpy; sys.modules['h5py'] = None; sys.argv = ['ckptfs', 'info', sys.argv[1]]; "
            "runpy.run_module('ckptfs', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(models / "plain.h5")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "pip install -e '.[keras]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "plain.h5" in done.stderr


def test_a_weight_edit_of_the_same_shape_is_put_in_place(models, tmp_path, mount):
    """A dataset's bytes are replaced where they lie in model.weights.h5:
    Keras loads the new values, and every other byte of the file stays."""
    path = tmp_path / "weights.keras"
    path.write_bytes((models / "plain.keras").read_bytes())
    mnt = mount(path)
    bias = mnt / "layers" / "dense_1" / "vars" / "1.npy"  # d2's float16 bias
    new = np.load(bias) + np.float16(1.5)
    np.save(bias, new)
    assert run_ckptfs("umount", str(mnt)).returncode == 0
    loaded = _keras_check(path, "d2")
    assert np.array_equal(np.array(loaded["weights"][1], np.float16), new)
    assert np.array_equal(np.array(loaded["weights"][0], np.float16), np.load(models / "references" / "plain.keras"
                                                                               / "d2" / "0.npy"))
    with zipfile.ZipFile(path) as edited, zipfile.ZipFile(models / "plain.keras") as old:
        before, after = old.read("model.weights.h5"), edited.read("model.weights.h5")
        changed = [i for i in range(len(before)) if before[i] != after[i]]
        assert len(after) == len(before) and changed and after[changed[0]:changed[-1] + 1] in new.tobytes()


def test_an_edit_the_file_cannot_hold_is_refused_when_closed(models, tmp_path, mount):
    path = tmp_path / "refused.keras"
    path.write_bytes((models / "plain.keras").read_bytes())
    mnt = mount(path)
    kernel = mnt / "layers" / "dense" / "vars" / "0.npy"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 2), np.float32))
    write_refused(kernel, buffer.getvalue())
    assert "keeps its dtype and shape (float32 [5, 4])" in os.getxattr(kernel, "user.ckptfs.problem").decode()
    write_refused(mnt / "notes.txt", b"hello")
    assert "a .keras file takes edits of config.yaml" in os.getxattr(mnt / "notes.txt", "user.ckptfs.problem").decode()
    assert umount(mnt, "--discard").returncode == 0
    assert path.read_bytes() == (models / "plain.keras").read_bytes()


def test_a_crash_of_the_hdf5_library_is_one_line(tmp_path, monkeypatch):
    """The walk of a local file runs in a child, a new Python handed the
    file's descriptor (never a fork of this process and its threads): a
    file that crashes HDF5 there (a byte-flipped attribute did) is refused,
    and this process goes on."""
    path = tmp_path / "x.h5"
    path.write_bytes(weights_h5())
    source = FileSource(str(path))
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked"))
    assert [d.path for d in hdf5.walk(source, str(path)).datasets] == ["layers/dense/vars/0", "layers/dense/vars/1"]
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"  # not SIGSEGV: pytest's faulthandler prints
    monkeypatch.setattr(hdf5, "_CHILD_CODE", crash)
    with pytest.raises(FormatError, match=r"the HDF5 library crashed reading it \(SIGTERM\)"):
        hdf5.walk(source, str(path))
    monkeypatch.setattr(hdf5, "_CHILD_CODE", "print('{\"problem\": \"a problem of its own\"}')")
    with pytest.raises(FormatError, match="a problem of its own"):
        hdf5.walk(source, str(path))
    monkeypatch.setattr(hdf5, "_CHILD_CODE", "import time; time.sleep(60)")
    monkeypatch.setattr(hdf5, "CHILD_SECONDS", 1)
    with pytest.raises(FormatError, match="took more than 1 s"):
        hdf5.walk(source, str(path))


def _walked(path: Path) -> hdf5.Contents:
    return hdf5.walk(FileSource(str(path)), str(path))


def test_external_storage_is_not_followed(tmp_path):
    """A dataset whose values HDF5 keeps in another file (`external=`) would
    serve any file the mounting user can read: left out, with a note."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRETSECRETKEY!" * 4)
    secret.chmod(0o600)
    path = tmp_path / "ext.h5"
    path.write_bytes(weights_h5(w=lambda f: f.create_dataset("w", (64,), "u1", external=[(str(secret), 0, 64)])))
    contents = _walked(path)
    assert [d.path for d in contents.datasets] == ["layers/dense/vars/0", "layers/dense/vars/1"]
    assert any(n.startswith("w: its values are kept in other files") for n in contents.notes), contents.notes


def test_a_virtual_dataset_is_not_followed(tmp_path):
    """A virtual dataset maps other HDF5 files' datasets: left out, with a note."""
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["data"] = np.arange(16, dtype=np.float64)
    layout = h5py.VirtualLayout((16,), np.float64)
    layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "data", (16,))
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("v", layout, fillvalue=-1)
    contents = _walked(path)
    assert contents.datasets == []
    assert any(n.startswith("v: a virtual dataset") for n in contents.notes), contents.notes


def _dangerous(path: Path) -> list[str]:
    done = run_ckptfs("scan", "--json", str(path))
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["verdict"] == "dangerous", done.stdout
    return [d["global"] for d in report["dangerous"]]


def test_a_reordered_keras_zip_is_scanned_for_its_config(models, tmp_path):
    """Keras reads `config.json` by name, whatever comes first in the zip."""
    path = tmp_path / "reordered.keras"
    with zipfile.ZipFile(models / "lambda.keras") as src, zipfile.ZipFile(path, "w") as out:
        out.writestr("assets/x.txt", b"first")
        for info in sorted(src.infolist(), key=lambda i: i.filename != "model.weights.h5"):
            out.writestr(info.filename, src.read(info))
    assert _dangerous(path) == ["keras.layers.Lambda"]


def test_an_h5_after_a_user_block_is_scanned_for_its_config(models, tmp_path):
    """HDF5 allows a user block (512, 1024, 2048... bytes) before its signature."""
    path = tmp_path / "ub.h5"
    with h5py.File(models / "lambda.h5", "r") as src, h5py.File(path, "w", userblock_size=1024) as out:
        for key in src.attrs:
            out.attrs[key] = src.attrs[key]
        for key in src:
            src.copy(src[key], out, key)
    assert path.read_bytes()[:8] != hdf5.MAGIC
    assert _dangerous(path) == ["keras.layers.Lambda"]


def _linked_300_times(path: Path) -> Path:
    with h5py.File(path, "w", libver="latest") as f:
        group = f.create_group("g")
        group.attrs["big"] = np.zeros(1 << 17, np.float64)  # 1 MiB
        group["w"] = np.arange(4, dtype=np.float32)
        for i in range(300):
            f[f"l{i}"] = group
    return path


def test_an_object_linked_many_times_is_read_once(tmp_path):
    """300 hard links to a group with a 1 MiB attribute took 28 s and 2 GB
    of RSS when each link was walked: each object is read once, by address."""
    contents = _walked(_linked_300_times(tmp_path / "amp.h5"))
    assert [d.path for d in contents.datasets] == ["g/w"] and list(contents.attributes) == ["g"]
    assert sum(n.endswith("a hard link to g, shown there only") for n in contents.notes) == 300


def test_attributes_are_bounded_in_all(tmp_path, monkeypatch):
    from ckptfs.limits import LIMITS

    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        for i in range(10):
            f.create_group(f"g{i}").attrs["a"] = np.zeros(1000, np.float64)
    monkeypatch.setattr(LIMITS, "yaml_values", 4500)  # handed to the walk's child
    contents = _walked(path)
    assert len(contents.attributes) == 4
    assert sum("the rest of the file's not shown" in n for n in contents.notes) == 1


def test_the_walks_answer_is_bounded(tmp_path, monkeypatch):
    from ckptfs.limits import LIMITS

    path = tmp_path / "wide.h5"
    with h5py.File(path, "w") as f:
        for i in range(40):
            f[f"w{i}"] = np.zeros(2, np.float32)
    monkeypatch.setattr(LIMITS, "header_bytes", 1000)
    with pytest.raises(FormatError, match=r"take more than 4,?000 bytes of JSON"):
        _walked(path)


def test_datasets_read_through_h5py_are_slow_and_their_chunks_bounded(tmp_path):
    """A read through h5py may inflate chunks: it runs off the mount's event
    loop (slow); a chunk of more than MAX_CHUNK_BYTES decoded is left out."""
    path = tmp_path / "chunks.h5"
    rows = hdf5.MAX_CHUNK_BYTES // 4096 + 1
    with h5py.File(path, "w") as f:
        f.create_dataset("small", data=np.arange(64, dtype=np.float32).reshape(8, 8), chunks=(4, 4), compression="gzip")
        f.create_dataset("big", data=(np.arange(rows * 1024) % 7).astype(np.float32).reshape(rows, 1024),
                         chunks=(rows, 1024), compression="gzip")
    shown = hdf5.expand(FileSource(str(path)), str(path))
    assert [p.path for p in shown.placed] == ["small.npy"]
    assert any(n.startswith("big: one chunk holds") for n in shown.notes), shown.notes
    content = shown.root.children["small.npy"].content
    assert content.slow
    assert np.array_equal(np.load(io.BytesIO(content.read(0, content.size))), np.arange(64).reshape(8, 8))


def test_keras_functions_of_published_bypasses_are_dangerous():
    """`keras.*` is trusted, except what CVE-2025-8747 / CVE-2025-9906 called from a config."""
    from ckptfs.formats.keras_code import code_in

    dense = {"module": "keras.layers", "class_name": "Dense", "config": {
        "name": "d", "trainable": True, "units": 3,
        "activation": {"module": "keras.utils", "class_name": "function", "config": "get_file"},
        "kernel_initializer": {"module": "keras.config", "class_name": "function",
                               "config": "enable_unsafe_deserialization"},
        "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {}}}}
    found, problems = code_in({"module": "keras", "class_name": "Sequential", "config": {"layers": [dense]}})
    assert problems == []
    assert sorted((c.module, c.name) for c in found) == [("keras.config", "enable_unsafe_deserialization"),
                                                         ("keras.utils", "get_file")]
    assert all("CVE-2025-" in c.reason and not c.bytecode for c in found)


def test_types_hdf5_converts_on_read_are_not_served_zero_copy(tmp_path):
    """An integer type of 16 bits of precision at bit 8 of 4 bytes is int32
    to h5py, which converts it when reading: its raw bytes are not its values."""
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        odd = h5py.h5t.STD_I32LE.copy()
        odd.set_precision(16)
        odd.set_offset(8)
        dset = h5py.Dataset(h5py.h5d.create(f.id, b"odd", odd, h5py.h5s.create_simple((4,))))
        dset[...] = np.array([1, 2, -3, 300], np.int32)
        want = dset[...]
    shown = hdf5.expand(FileSource(str(path)), str(path))
    content = shown.root.children["odd.npy"].content
    assert np.array_equal(np.load(io.BytesIO(content.read(0, content.size))), want)
    assert content.slow  # read through h5py


def test_a_dataset_hard_linked_twice_is_shown_once(tmp_path):
    """Two paths to one dataset would be two files whose edits land on the same bytes."""
    path = tmp_path / "twice.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.arange(4, dtype=np.float32)
        f["b"] = f["a"]
    contents = _walked(path)
    assert [d.path for d in contents.datasets] == ["a"] and contents.notes == ["b: a hard link to a, shown there only"]
