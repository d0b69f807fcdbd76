"""ONNX models (formats/onnx.py): every initializer read through a mount
bit for bit as onnx.load + numpy_helper.to_array read it, in every way ONNX
stores values, inline or in external data files; graph.yaml and
metadata.yaml; edits run in onnxruntime; export, diff against the torch
checkpoint the model was exported from."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from ckptfs.formats import file_formats
from ckptfs.formats import onnx as onnx_format
from ckptfs.formats.base import SNIFF_BYTES
from ckptfs.formats.onnx_graph import yaml_text

from . import onnx_models
from .conftest import REPO, TIMED_APART, run_ckptfs, umount, write_refused

pytestmark = TIMED_APART
LAYOUTS = ["inline", "external", "per-tensor"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("onnx")
    return {layout: onnx_models.save(folder / layout, layout) for layout in LAYOUTS}


def _tensors(mnt) -> dict[str, np.ndarray]:
    """Every `.npy` of the mount by its tensor name (user.ckptfs.name)."""
    found = {}
    for folder, _, files in os.walk(mnt):
        if "/.ckptfs" in folder:
            continue
        for name in files:
            if name.endswith(".npy"):
                path = os.path.join(folder, name)
                found[os.getxattr(path, "user.ckptfs.name").decode()] = np.load(path)
    return found


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_initializer_is_read_bit_for_bit_as_onnx_reads_it(models, layout, mount):
    path = models[layout]
    expected = onnx_models.reference(path)
    mnt = mount(path, "-o", "ro")
    shown = _tensors(mnt)
    assert sorted(shown) == sorted(expected)
    for name, array in shown.items():
        want = expected[name]
        assert array.dtype == want.dtype and array.shape == want.shape, name
        assert array.tobytes() == want.tobytes(), name
    assert yaml.safe_load((mnt / "metadata.yaml").read_text()) == onnx_models.METADATA
    graph = yaml.safe_load((mnt / "graph.yaml").read_text())
    assert graph["ir_version"] == 8 and graph["opsets"] == {"ai.onnx": 17} and graph["producer_name"] == "ckptfs-tests"
    assert graph["graph"]["inputs"] == [{"name": "x", "type": "float32", "shape": ["batch", 4]}]
    assert graph["graph"]["nodes"] == [{"op_type": "Gemm", "name": "fc", "inputs": ["x", "fc.weight", "fc.bias"],
                                        "outputs": ["y"], "attributes": {"alpha": 1.0, "transB": 1}}]
    assert graph["graph"]["initializers"] == len(expected)


def test_external_tensors_are_served_zero_copy_from_their_data_file(models, mount):
    mnt = mount(models["external"], "-o", "ro")
    source = os.getxattr(mnt / "raw" / "big.npy", "user.ckptfs.source").decode()
    assert source.endswith("external/model.data")
    assert os.getxattr(mnt / "fc" / "bias.npy", "user.ckptfs.source").decode().endswith("model.onnx")  # under 64 bytes


def test_only_onnx_takes_a_model_and_it_takes_no_other_format():
    head = onnx_models.model().SerializeToString()[:SNIFF_BYTES]
    assert file_formats(head) == [onnx_format.FORMAT]  # no other format takes a model, wherever it is tried
    for other in (b"\x80\x02}q\x00.", b"\x08\x01\x00\x00\x00\x00\x00\x00{}", b"PK\x03\x04", b"GGUF\x03\x00",
                  b"\x93NUMPY", b"\x08\x00", b"\x08\x07\x99\x01", b"\x0a\x03abc"):
        assert not onnx_format.sniff(other), other


def test_a_tensorflow_saved_model_pb_is_no_onnx_model(tmp_path):
    """Both start `08 01 12`: ir_version 1 and producer_name, or a SavedModel's
    schema version 1 and its MetaGraphDef."""
    done = subprocess.run([sys.executable, "-c", "import sys, tensorflow as tf; "
                           "tf.saved_model.save(tf.Module(), sys.argv[1])", str(tmp_path / "saved")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    head = (tmp_path / "saved" / "saved_model.pb").read_bytes()[:SNIFF_BYTES]
    assert head.startswith(b"\x08\x01\x12") and not onnx_format.sniff(head)
    whole = head[:3] + bytes([100]) + head[5:105]  # its field 2 cut to end inside the head: binary, no name
    assert not onnx_format.sniff(whole)
    assert run_ckptfs("info", tmp_path / "saved" / "saved_model.pb").returncode != 0


def test_every_onnx_model_of_the_installed_packages_is_sniffed():
    """The .onnx files the test libraries ship (onnx's backend test data): each taken."""
    import site

    found = [os.path.join(folder, name) for root in site.getsitepackages() for folder, _, files in os.walk(root)
             for name in files if name.endswith(".onnx")]
    assert len(found) > 100
    refused = []
    for path in found:
        with open(path, "rb") as f:
            if not onnx_format.sniff(f.read(SNIFF_BYTES)):
                refused.append(path)
    assert not refused, refused


def test_graph_yaml_reads_back_as_the_values_it_was_written_from():
    tricky = ["yes", "No", "1.5", "", "x y", "#c", "\u00e9", "\x85z", "\U0001F600", "a: b", "a:", "onnx::MatMul_1",
              "-x", "[1]", None, 1e-05, float("inf"), -0.0, 3, True, "null", "~", "0x10", ".inf", "12:30", "<<"]
    value = {"graph": {"nodes": [{"op_type": "If", "attributes": {"then_branch": {"nodes": []}, "xs": tricky}}],
                       "empty": {}, "lists": [[1, 2], []]}}
    assert yaml.safe_load(yaml_text(value)) == value


def test_info_ls_cat(models):
    path = models["external"]
    info = run_ckptfs("info", path)
    assert info.returncode == 0 and "onnx" in info.stdout, info.stderr
    listed = run_ckptfs("ls", path, "fc")
    assert listed.returncode == 0 and listed.stdout.split() == ["bias.npy", "weight.npy"], listed.stdout
    cat = subprocess.run([sys.executable, "-m", "ckptfs", "cat", str(path), "metadata.yaml"], capture_output=True,
                         cwd=REPO, timeout=120)
    assert cat.returncode == 0 and yaml.safe_load(cat.stdout) == onnx_models.METADATA


def _run(path, x: np.ndarray, inputs: str = "x", output: str = "y") -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # not the warnings of unused initializers
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([output], {inputs: x})[0]


def test_the_initializers_of_subgraphs_are_shown_and_take_edits(tmp_path, mount):
    path = onnx_models.save(tmp_path / "if", "inline", onnx_models.if_model())
    branches = {a.name: {t.name: numpy_helper.to_array(t) for t in a.g.initializer}
                for a in onnx.load(str(path)).graph.node[0].attribute}
    mnt = mount(path)
    assert sorted(os.listdir(mnt / "subgraphs" / "choose")) == ["else_branch", "then_branch"]
    for branch, tensors in branches.items():
        shown = mnt / "subgraphs" / "choose" / branch / "c.npy"
        assert np.load(shown).tobytes() == tensors["c"].tobytes()
        assert os.getxattr(shown, "user.ckptfs.name").decode() == f"choose/{branch}/c"
    assert "else_branch:" in (mnt / "graph.yaml").read_text()
    np.save(mnt / "subgraphs" / "choose" / "then_branch" / "c.npy", np.array([7.0, 8.0], np.float32))
    assert umount(mnt).returncode == 0
    onnx.checker.check_model(str(path))
    assert _run(path, np.array(True), "cond", "z").tolist() == [7.0, 8.0]
    assert _run(path, np.array(False), "cond", "z").tolist() == [3.0, -3.0]


def test_an_edited_model_runs_in_onnxruntime_with_its_new_bias_and_metadata(models, tmp_path, mount):
    path = onnx_models.save(tmp_path / "edit", "inline")
    x = np.ones((2, 4), np.float32)
    before = _run(path, x)
    mnt = mount(path)
    np.save(mnt / "fc" / "bias.npy", onnx_models.BIAS + 10)
    (mnt / "metadata.yaml").write_text("author: someone else\nnew key: '1.0'\n")
    assert umount(mnt).returncode == 0
    onnx.checker.check_model(str(path))
    assert np.allclose(_run(path, x), before + 10)
    loaded = onnx.load(str(path))
    assert {p.key: p.value for p in loaded.metadata_props} == {"author": "someone else", "new key": "1.0"}
    assert onnx_models.reference(path)["raw.big"].tobytes() == numpy_helper.to_array(
        next(t for t in onnx_models.model().graph.initializer if t.name == "raw.big")).tobytes()


def test_metadata_added_to_a_model_without_any(tmp_path, mount):
    proto = onnx_models.model()
    del proto.metadata_props[:]
    path = onnx_models.save(tmp_path / "plain", "inline", proto)
    mnt = mount(path)
    assert (mnt / "metadata.yaml").read_text() == "{}\n"
    (mnt / "metadata.yaml").write_text("converted_by: ckptfs\n")
    assert umount(mnt).returncode == 0
    onnx.checker.check_model(str(path))
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == {"converted_by": "ckptfs"}


def test_external_data_entries_without_data_location_external_are_ignored_as_onnx_does(tmp_path, mount):
    """raw_data beside stray external_data entries: onnx.load + to_array and
    onnxruntime read raw_data (they look at data_location only); so does the mount."""
    w = numpy_helper.from_array(np.array([1, 2], np.float32), "w")
    w.external_data.add(key="location", value="w.bin")
    path = tmp_path / "stray" / "model.onnx"
    path.parent.mkdir()
    (path.parent / "w.bin").write_bytes(np.array([9, 9], np.float32).tobytes())
    onnx.save_model(onnx_models.add_model([w]), path)
    expected = onnx_models.reference(path)["w"]
    assert expected.tolist() == [1, 2]
    assert _run(path, np.zeros(2, np.float32)).tolist() == [1, 2]
    mnt = mount(path, "-o", "ro")
    assert np.load(mnt / "w.npy").tobytes() == expected.tobytes()


def test_of_initializers_named_twice_the_last_is_shown_and_edited_as_onnxruntime_runs_it(tmp_path, mount):
    path = onnx_models.save(tmp_path / "twice", "inline", onnx_models.add_model(
        [numpy_helper.from_array(np.array(v, np.float32), "w") for v in ([1, 2], [7, 8])]))
    x = np.zeros(2, np.float32)
    ran = _run(path, x)
    assert ran.tolist() == [7, 8]
    mnt = mount(path)
    assert np.load(mnt / "w.npy").tobytes() == ran.tobytes()
    notes = "\n".join(yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"])
    assert "'w': an earlier initializer of this name is left out" in notes
    np.save(mnt / "w.npy", np.array([5, 6], np.float32))
    assert umount(mnt).returncode == 0
    assert _run(path, x).tolist() == [5, 6]
    assert [numpy_helper.to_array(t).tolist() for t in onnx.load(str(path)).graph.initializer] == [[1, 2], [5, 6]]


def test_strings_over_a_mebibyte_are_summarized_and_kept_byte_for_byte(tmp_path, mount):
    """A 2 MiB metadata value and doc_string: shown as their length, the
    model mounted whole; an untouched repack, and an edit of another key,
    keep them as they were."""
    proto = onnx_models.model()
    proto.doc_string = "d" * (2 << 20)
    helper_props = {**onnx_models.METADATA, "vocab": "v" * (2 << 20)}
    onnx.helper.set_model_props(proto, helper_props)
    path = onnx_models.save(tmp_path / "long", "inline", proto)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = onnx_models.reference(path)
    mnt = mount(path)
    assert _tensors(mnt).keys() == expected.keys()
    assert all(array.tobytes() == expected[name].tobytes() for name, array in _tensors(mnt).items())
    assert yaml.safe_load((mnt / "metadata.yaml").read_text())["vocab"] == f"<{2 << 20} bytes>"
    assert yaml.safe_load((mnt / "graph.yaml").read_text())["doc_string"] == f"<{2 << 20} bytes>"
    (mnt / "metadata.yaml").write_bytes((mnt / "metadata.yaml").read_bytes())
    assert umount(mnt).returncode == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    mnt = mount(path)
    shown = yaml.safe_load((mnt / "metadata.yaml").read_text())
    (mnt / "metadata.yaml").write_text(yaml.safe_dump({**shown, "author": "another"}))
    assert umount(mnt).returncode == 0
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == {**helper_props, "author": "another"}


def test_metadata_not_utf8_is_kept_byte_for_byte_when_another_key_is_edited(tmp_path, mount):
    from ckptfs.formats.onnx_write import entry_bytes
    from ckptfs.formats.protowire import encode_len

    odd = encode_len(1, 3) + b"odd" + encode_len(2, 2) + b"\xff\xfe"
    path = onnx_models.save(tmp_path / "odd", "inline")
    path.write_bytes(path.read_bytes() + encode_len(14, len(odd)) + odd)
    mnt = mount(path)
    shown = yaml.safe_load((mnt / "metadata.yaml").read_text())
    assert shown["odd"] == "\ufffd\ufffd"
    (mnt / "metadata.yaml").write_text(yaml.safe_dump({**shown, "license": "apache"}))
    assert umount(mnt).returncode == 0
    data = path.read_bytes()
    assert encode_len(14, len(odd)) + odd in data and entry_bytes("license", "apache") in data


def test_an_attribute_of_a_wrong_wire_type_fails_graph_yaml_alone(tmp_path, mount):
    from ckptfs.formats.protowire import VARINT, encode_len, encode_tag, encode_varint

    proto = onnx_models.add_model([numpy_helper.from_array(np.array([1, 2], np.float32), "w")])
    attribute = encode_len(1, 1) + b"f" + encode_tag(2, VARINT) + encode_varint(1)  # a float written as a varint
    node = encode_len(4, 4) + b"Relu" + encode_len(5, len(attribute)) + attribute
    graph = proto.graph.SerializeToString() + encode_len(1, len(node)) + node
    proto.ClearField("graph")
    path = tmp_path / "odd.onnx"
    path.write_bytes(proto.SerializeToString() + encode_len(7, len(graph)) + graph)
    mnt = mount(path, "-o", "ro")
    assert np.load(mnt / "w.npy").tolist() == [1, 2]
    assert "has wire type 0" in yaml.safe_load((mnt / "graph.yaml").read_text())["graph"]
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert any(n.startswith("graph.yaml cannot show the graph") for n in notes), notes


def test_nodes_of_one_name_keep_their_subgraphs_in_folders_of_their_own(tmp_path, mount):
    """Two If nodes named `choose` (and an unnamed one beside a node named
    `If_3`): each node's branches in a folder of its own, `_INDEX` appended."""
    made = onnx_models.if_model()
    first = made.graph.node[0]
    second, third, fourth = (onnx.NodeProto() for _ in range(3))
    for node, output, name in ((second, "z2", "choose"), (third, "z3", "If_3"), (fourth, "z4", "")):
        node.CopyFrom(first)
        node.output[0], node.name = output, name
        node.attribute[0].g.initializer[0].CopyFrom(numpy_helper.from_array(np.float32([len(output)] * 2), "c"))
        made.graph.node.append(node)
    path = onnx_models.save(tmp_path / "same", "inline", made)
    mnt = mount(path, "-o", "ro")
    assert sorted(os.listdir(mnt / "subgraphs")) == ["If_3", "If_3_3", "choose", "choose_1"]
    for folder, node in zip(["choose", "choose_1", "If_3", "If_3_3"], onnx.load(str(path)).graph.node):
        for attribute in node.attribute:
            want = numpy_helper.to_array(attribute.g.initializer[0])
            assert np.load(mnt / "subgraphs" / folder / attribute.name / "c.npy").tobytes() == want.tobytes()


def test_external_data_located_in_the_model_file_itself_is_left_out(tmp_path, mount):
    w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2])
    for key, value in (("location", "model.onnx"), ("offset", "0"), ("length", "8")):
        w.external_data.add(key=key, value=value)
    w.data_location = onnx.TensorProto.EXTERNAL
    path = onnx_models.save(tmp_path / "self", "inline", onnx_models.add_model([w]))
    mnt = mount(path, "-o", "ro")
    assert not (mnt / "w.npy").exists()
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert "'w' is left out: its external data location 'model.onnx' is the model file itself" in notes, notes


def test_a_model_with_external_data_takes_metadata_and_inline_edits_and_refuses_external_ones(tmp_path, mount):
    path = onnx_models.save(tmp_path / "edit", "external")
    data_before = (path.parent / "model.data").read_bytes()
    reference = onnx_models.reference(path)
    mnt = mount(path)
    write_refused(mnt / "raw" / "big.npy", (mnt / "raw" / "big.npy").read_bytes())
    with pytest.raises(OSError) as refused:
        (mnt / "graph.yaml").write_text("graph: {}\n")
    assert refused.value.errno == errno.EROFS
    np.save(mnt / "fc" / "bias.npy", onnx_models.BIAS * 2)
    (mnt / "metadata.yaml").write_text("{}\n")
    done = umount(mnt, "--discard")
    assert done.returncode == 0, done.stderr
    mnt = mount(path)
    np.save(mnt / "fc" / "bias.npy", onnx_models.BIAS * 2)
    (mnt / "metadata.yaml").write_text("{}\n")
    assert umount(mnt).returncode == 0
    assert (path.parent / "model.data").read_bytes() == data_before
    onnx.checker.check_model(str(path))
    after = onnx_models.reference(path)
    assert after["fc.bias"].tolist() == (onnx_models.BIAS * 2).tolist()
    assert all(after[k].tobytes() == v.tobytes() for k, v in reference.items() if k != "fc.bias")
    assert not onnx.load(str(path)).metadata_props
    assert np.allclose(_run(path, np.zeros((1, 4), np.float32)), onnx_models.BIAS * 2)


def test_initializers_kept_as_varints_are_written_back_as_varints(tmp_path, mount):
    """New values change the length of the field, of the TensorProto and of
    the graph: onnx reads every initializer back, the edited ones new."""
    path = onnx_models.save(tmp_path / "varints", "external")
    before = onnx_models.reference(path)
    new = {"typed/i64.npy": np.array([-1, 2**40, 0], np.int64), "typed/f16.npy": np.float16([[0.5, -1], [2, 70]]),
           "typed/i8.npy": np.int8([5, -5, 127, -128]), "typed/bool.npy": np.array([False, True, False]),
           "typed/u64.npy": np.uint64([0, 2**63]), "typed/bf16.npy": before["typed.bf16"][::-1].copy()}
    mnt = mount(path)
    for name, array in new.items():
        np.save(mnt / name, array)
    (mnt / "metadata.yaml").write_text("note: varints\n")
    assert umount(mnt).returncode == 0
    onnx.checker.check_model(str(path))
    after = onnx_models.reference(path)
    for name, array in new.items():
        key = name[:-4].replace("/", ".")
        assert after[key].dtype == before[key].dtype and after[key].tobytes() == array.tobytes(), key
    assert all(after[k].tobytes() == v.tobytes() for k, v in before.items() if f"{k.replace('.', '/')}.npy" not in new)
    assert np.allclose(_run(path, np.zeros((1, 4), np.float32)), onnx_models.BIAS)


def test_a_varint_edit_behind_a_length_written_long_is_refused(tmp_path, mount):
    """A graph whose length takes a byte more than it needs (protobuf reads
    it, no writer makes it): the repack could not rewrite it as it lies."""
    from ckptfs.formats.protowire import encode_varint
    from ckptfs.sources.base import FileSource

    path = onnx_models.save(tmp_path / "long", "inline")
    data = path.read_bytes()
    graph = onnx_format.read_model(FileSource(str(path))).graph
    header = encode_varint(graph.value)
    path.write_bytes(data[: graph.offset - len(header)] + header[:-1] + bytes([header[-1] | 0x80, 0])
                     + data[graph.offset:])
    onnx.checker.check_model(str(path))
    mnt = mount(path)
    write_refused(mnt / "typed" / "i64.npy", _npy(np.array([1, 2, 3], np.int64)))
    assert umount(mnt, "--discard").returncode == 0


@pytest.mark.parametrize("layout", ["inline", "external"])
def test_a_model_rewritten_with_its_own_bytes_repacks_to_identical_bytes(layout, tmp_path, mount):
    path = onnx_models.save(tmp_path / "same", layout)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    mnt = mount(path)
    for name in ("metadata.yaml", "typed/f32.npy", "typed/f64.npy", "typed/i8.npy", "typed/f16.npy", "typed/u64.npy") \
            + (("fc/weight.npy",) if layout == "inline" else ()):
        (mnt / name).write_bytes((mnt / name).read_bytes())
    assert umount(mnt).returncode == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


#: metadata that YAML reads and a repack could not write: a lone surrogate
#: (UTF-8 cannot encode it), a list nested deeper than the parser recurses
UNWRITABLE_YAML = (b'a: "\\ud800"\n', b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n")


def test_edits_it_cannot_hold_are_refused_at_once(tmp_path, mount):
    path = onnx_models.save(tmp_path / "bad", "inline")
    mnt = mount(path)
    write_refused(mnt / "fc" / "bias.npy", _npy(np.zeros(4, np.float32)))  # another shape
    write_refused(mnt / "fc" / "weight.npy", _npy(onnx_models.WEIGHT.astype(np.float64)))  # another dtype
    write_refused(mnt / "metadata.yaml", b"key: 3\n")  # not a string
    write_refused(mnt / "metadata.yaml", UNWRITABLE_YAML[0])
    write_refused(mnt / "metadata.yaml", UNWRITABLE_YAML[1])
    write_refused(mnt / "new.npy", _npy(np.zeros(2, np.float32)))
    with pytest.raises(PermissionError):
        os.rename(mnt / "fc" / "bias.npy", mnt / "fc" / "b.npy")
    assert umount(mnt, "--discard").returncode == 0


def _npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_export_to_safetensors_streams_in_bounded_memory(tmp_path):
    from safetensors.torch import load_file

    big = numpy_helper.from_array(np.random.default_rng(0).standard_normal((96 << 20) // 4).astype(np.float32),
                                  "huge.weight")
    path = onnx_models.save(tmp_path / "big", "external", onnx_models.model([big]))
    out = tmp_path / "out.safetensors"
    measured = subprocess.run(
        [sys.executable, "-c", "import resource, subprocess, sys; "
         "done = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)",
         sys.executable, "-m", "ckptfs", "export", str(path), str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert measured.returncode == 0, measured.stderr
    assert "left out typed.c128: safetensors has no dtype complex128" in measured.stderr
    peak_kib = int(measured.stdout.split()[-1])
    # Python and ckptfs take about 45 MiB: the 96 MiB tensor held whole would pass the bound
    assert peak_kib < 96 << 10, f"export peaked at {peak_kib} KiB"
    import torch

    exported = load_file(str(out))
    expected = onnx_models.reference(path)
    del expected["typed.c128"]
    assert sorted(exported) == sorted(expected)
    for name, tensor in exported.items():
        assert tensor.flatten().view(torch.uint8).numpy().tobytes() == expected[name].tobytes(), name
        assert tuple(tensor.shape) == expected[name].shape, name


def test_diff_with_the_torch_checkpoint_it_was_exported_from(tmp_path):
    folder = tmp_path / "torch"
    done = subprocess.run([sys.executable, "-m", "tests.onnx_models", "torch", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    compared = run_ckptfs("diff", folder / "model.pt", folder / "model.onnx", "--map", "model.=", "--tensors-only")
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.strip() == "4 tensors bit-equal; the checkpoints are the same"
    unmapped = run_ckptfs("diff", folder / "model.pt", folder / "model.onnx", "--tensors-only")
    assert unmapped.returncode == 1 and "model.0.weight" in unmapped.stdout
