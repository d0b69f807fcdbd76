"""Hostile ONNX models: lengths past the end, shapes of astronomical or
negative size, external data that climbs out of the model's folder or runs
past its file, varints that are too few or never end, graphs nested a
thousand deep."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml
from onnx import TensorProto, helper, numpy_helper

from ckptfs.formats.protowire import LEN, VARINT, encode_len, encode_tag, encode_varint

from . import Case

GOOD = np.arange(6, dtype=np.float32).reshape(2, 3)


def _model(path: Path, initializers: list[TensorProto]) -> Path:
    """A model holding a good initializer and `initializers`, saved as the onnx package writes it."""
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("good", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(GOOD, "good"), *initializers])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def _raw(name: str, dims: list[int], data: bytes, data_type: int = TensorProto.FLOAT) -> TensorProto:
    tensor = TensorProto(name=name, data_type=data_type, raw_data=data)
    tensor.dims.extend(dims)
    return tensor


def _external(name: str, location: str, offset: int = 0, length: int = 16) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[length // 4])
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _model_of_bad_initializers(tmp_path: Path) -> Path:
    (tmp_path / "secret.bin").write_bytes(b"s" * 64)  # beside the model's folder: never to be read
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\0" * 32)
    os.symlink(tmp_path / "secret.bin", folder / "link.bin")
    too_few = TensorProto(name="too_few", data_type=TensorProto.INT32, dims=[4], int32_data=[1, 2, 3])
    return _model(folder / "bad.onnx", [
        _raw("astronomical", [1 << 40, 1 << 40], b"\0" * 16),
        _raw("overflowing", [1 << 62, 1 << 62, 16], b"\0" * 16),
        _raw("negative", [-4], b"\0" * 16),
        _raw("short", [8], b"\0" * 16),
        _raw("text", [1], b"abc", TensorProto.STRING),
        _raw("nibbles", [4], b"\x12\x34", TensorProto.INT4),
        _external("climbing", "../secret.bin"),
        _external("absolute", str(tmp_path / "secret.bin")),
        _external("linked", "link.bin"),
        _external("missing", "nowhere.bin"),
        _external("past", "data.bin", offset=24, length=16),
        _external("within", "data.bin", offset=16, length=16),
        too_few,
    ])


BAD = ("astronomical", "overflowing", "negative", "short", "text", "nibbles", "climbing", "absolute", "linked",
       "missing", "past", "too_few")


def _each_bad_initializer_breaks_only_itself(mnt: Path, source: Path) -> None:
    assert np.load(mnt / "good.npy").tolist() == GOOD.tolist()
    assert np.load(mnt / "within.npy").tolist() == [0.0] * 4
    shown = sorted(p.name for p in mnt.glob("*.npy"))
    assert shown == ["good.npy", "within.npy"], shown
    notes = "\n".join(yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"])
    for name in BAD:
        assert f"'{name}' is left out" in notes, name
    assert "'../secret.bin' is no relative path inside the model's folder" in notes


def _endless_varint(path: Path) -> Path:
    """An int64 initializer whose int64_data is one varint that never ends."""
    tensor = (encode_tag(1, VARINT) + encode_varint(3) + encode_tag(2, VARINT) + encode_varint(TensorProto.INT64)
              + encode_tag(8, LEN) + encode_varint(4) + b"vars" + encode_len(7, 3000) + b"\xff" * 3000)
    graph = encode_len(5, len(tensor)) + tensor
    path.write_bytes(encode_tag(1, VARINT) + encode_varint(8) + encode_len(7, len(graph)) + graph)
    return path


def _deep_graph(depth: int) -> bytes:
    """A graph whose one node is an If whose then_branch is such a graph, `depth` times over."""
    graph = encode_len(2, 4) + b"leaf"
    for _ in range(depth):
        name = encode_len(1, 11) + b"then_branch"
        attribute = name + encode_tag(20, VARINT) + encode_varint(5) + encode_len(6, len(graph)) + graph
        node = encode_len(4, 2) + b"If" + encode_len(5, len(attribute)) + attribute
        graph = encode_len(1, len(node)) + node
    return graph


def _model_of_a_deep_graph(tmp_path: Path) -> Path:
    graph = _deep_graph(5000)
    path = tmp_path / "deep.onnx"
    path.write_bytes(encode_tag(1, VARINT) + encode_varint(8) + encode_len(7, len(graph)) + graph)
    return path


def _deep_is_cut(mnt: Path, source: Path) -> None:
    assert "nested more than 16 deep" in (mnt / "graph.yaml").read_text()


def _model_past_its_end(tmp_path: Path) -> Path:
    """A graph field that claims more bytes than the file holds."""
    path = tmp_path / "cut.onnx"
    whole = _model(tmp_path / "whole" / "m.onnx", []).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _model_of_a_long_attribute(tmp_path: Path) -> Path:
    """A node whose `ints` attribute holds 600,000 values, each its own field
    (as onnx.proto's unpacked repeated ints are written): read in linear
    time, and past max_yaml_values (set lower) graph.yaml says so."""
    values = (encode_tag(8, VARINT) + encode_varint(7)) * 600_000
    attribute = encode_len(1, 4) + b"ints" + encode_tag(20, VARINT) + encode_varint(7) + values
    node = encode_len(4, 4) + b"Pads" + encode_len(5, len(attribute)) + attribute
    graph = encode_len(1, len(node)) + node
    path = tmp_path / "long.onnx"
    path.write_bytes(encode_tag(1, VARINT) + encode_varint(8) + encode_len(7, len(graph)) + graph)
    return path


def _long_attribute_is_cut(mnt: Path, source: Path) -> None:
    nodes = yaml.safe_load((mnt / "graph.yaml").read_text())["graph"]["nodes"]
    assert nodes[0]["attributes"]["ints"] == [7] * 400_000 + ["... more values, past max_yaml_values (400001)"]


CASES = {
    "an onnx model of initializers that climb out, run past their file, claim huge shapes":
        Case(_model_of_bad_initializers, "served", check=_each_bad_initializer_breaks_only_itself),
    "an onnx model whose varints never end": Case(lambda p: _endless_varint(p / "endless.onnx"), "served",
                                                  "is cut short or longer than 10 bytes"),
    "an onnx model of If branches nested 5000 deep": Case(_model_of_a_deep_graph, "served", check=_deep_is_cut),
    "an onnx model of an attribute of 600,000 values, each its own field":
        Case(_model_of_a_long_attribute, "served", options=("-o", "max_yaml_values=400001"),
             check=_long_attribute_is_cut),
    "an onnx model cut in half": Case(_model_past_its_end, "refused", "past its message"),
}
