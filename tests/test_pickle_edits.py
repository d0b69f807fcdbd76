"""The inert pickle writer and YAML edits of pickled objects, checked
against pickle and torch.load (these tests unpickle only what they made)."""

import argparse
import collections
import io
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
import yaml

from ckptfs.pickle import object_edits
from ckptfs.pickle.inert import InertUnpickler
from ckptfs.pickle.object_edits import EditError
from ckptfs.pickle.pyobjects import to_yaml
from ckptfs.pickle.torch_classes import KNOWN, persistent_load
from ckptfs.pickle.writer import dumps

from .conftest import FIXTURES


def _data_pkl(path) -> tuple[zipfile.ZipFile, str, bytes]:
    archive = zipfile.ZipFile(path)
    name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
    return archive, name, archive.read(name)


def _inert(data: bytes):
    return InertUnpickler(data, persistent_load=persistent_load, known=KNOWN).load()


def _with_pickle(archive: zipfile.ZipFile, name: str, data: bytes) -> io.BytesIO:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as new:
        for info in archive.infolist():
            new.writestr(info.filename, data if info.filename == name else archive.read(info.filename))
    out.seek(0)
    return out


def _assert_same(a, b, where="") -> None:
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.requires_grad) == (b.dtype, b.shape, b.stride(), b.requires_grad), where
        assert torch.equal(a.view(torch.uint8) if a.dtype.is_floating_point and a.element_size() == 1 else a,
                           b.view(torch.uint8) if b.dtype.is_floating_point and b.element_size() == 1 else b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
        if isinstance(a, collections.defaultdict):
            assert a.default_factory is b.default_factory, where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def test_a_torch_save_pickle_written_back_loads_the_same(tmp_path):
    shared = torch.randn(4, 5)
    state = {
        "linear": torch.nn.Linear(3, 2).state_dict(),
        "param": torch.nn.Parameter(torch.ones(2)),
        "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
        "tied": [shared, shared, shared.t()],
        "f8": torch.arange(4, dtype=torch.float32).to(torch.float8_e4m3fn),
        "size": torch.Size([2, 3]),
        "device": torch.device("cuda", 1),
        "np_scalar": np.float32(0.5),
        "np_array": np.arange(6).reshape(2, 3),
        "namespace": argparse.Namespace(a=1, b="x"),
        "path": pathlib.PurePosixPath("/a/b"),
        "set": {1, 2},
        "bytes": b"\x00\xff",
        "big": 2**70,
        "complex": 1 + 2j,
        "defaultdict": collections.defaultdict(list, {"a": [1]}),
        1: "an int key",
        (1, 2): "a tuple key",
        "nested": {"x": (1, [2, {"y": None}]), "nan": float("nan")},
    }
    pt = tmp_path / "state.pt"
    torch.save(state, pt)
    archive, name, data = _data_pkl(pt)
    loaded = torch.load(_with_pickle(archive, name, dumps(_inert(data))), weights_only=False)
    _assert_same(torch.load(pt, weights_only=False), loaded)
    assert loaded["tied"][0].untyped_storage().data_ptr() == loaded["tied"][2].untyped_storage().data_ptr()
    assert loaded["tied"][0] is loaded["tied"][1]


def test_the_lightning_pickle_is_written_back_byte_for_byte():
    _, _, data = _data_pkl(FIXTURES / "lightning" / "tiny.ckpt")
    assert dumps(_inert(data)) == data


def _view(value) -> str:
    """The YAML view ckptfs shows of the pickled `value`."""
    return to_yaml(_inert(pickle.dumps(value, protocol=2)))


def _edit(value, text: str):
    """The pickled `value` after its YAML view is replaced by `text`,
    written and unpickled again."""
    inert = _inert(pickle.dumps(value, protocol=2))
    edited = object_edits.merge(inert, object_edits.parse(text.encode(), "v.yaml"), "v")
    return pickle.loads(dumps(edited))


CONFIG = {
    "lr": 0.01, "hidden": 16, "name": "tiny", "flag": True, "none": None, "scale": np.float32(0.5),
    "shape": (2, 3), "ns": argparse.Namespace(depth=2), "path": pathlib.PurePosixPath("/data/x"), 3: "int key",
}


def test_yaml_edits_keep_each_value_and_its_type():
    text = _view(CONFIG)
    assert "lr: 0.01" in text and "scale: 0.5" in text and "3: int key" in text
    edited = text.replace("lr: 0.01", "lr: 1e-4").replace("name: tiny", "name: 123").replace("scale: 0.5", "scale: 0.25")
    edited = edited.replace("- 3\n", "- 4\n").replace("depth: 2", "depth: 5").replace("/data/x", "/data/y")
    edited = edited.replace("none: null", "none: [1, 2]") + "added: {a: 1}\n"
    new = _edit(CONFIG, edited)
    assert new["lr"] == 1e-4 and type(new["lr"]) is float
    assert new["name"] == "123"
    assert type(new["scale"]) is np.float32 and new["scale"] == 0.25
    assert new["shape"] == (2, 4) and type(new["shape"]) is tuple
    assert type(new["ns"]) is argparse.Namespace and new["ns"].depth == 5
    assert new["path"] == pathlib.PurePosixPath("/data/y")
    assert new["none"] == [1, 2] and new["added"] == {"a": 1}
    assert new[3] == "int key" and new["hidden"] == 16 and new["flag"] is True
    assert list(new)[:-1] == list(CONFIG)


def test_an_unchanged_view_changes_nothing():
    inert = _inert(pickle.dumps(CONFIG, protocol=2))
    before = dict(inert)
    same = object_edits.merge(inert, object_edits.parse(to_yaml(inert).encode(), "v.yaml"), "v")
    assert same is inert and all(inert[k] is before[k] for k in before)


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("hidden: 16", "hidden: sixteen", "was an int"),
        ("flag: true", "flag: 1", "was a bool"),
        ("lr: 0.01", "lr: fast", "was a float"),
        ("hidden: 16", "hidden: [16]", "the edit makes it a list"),
        ("name: tiny", "name: null", "was a str"),
        ("lr: 0.01", "lr: 0.01\nlr: 0.02", "appears twice"),
        ("flag: true", "flag: [", "not valid YAML"),
    ],
)
def test_an_edit_that_would_change_a_type_is_refused(old, new, problem):
    with pytest.raises(EditError, match=problem):
        _edit(CONFIG, _view(CONFIG).replace(old, new))


def test_omegaconf_configs_are_edited_through_their_nodes():
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.create({"model": {"hidden": 16, "act": "tanh"}, "data": {"path": "${oc.env:HOME}/data"}})
    text = _view(cfg)
    assert text == yaml.safe_dump(OmegaConf.to_container(cfg), sort_keys=False)
    new = _edit(cfg, text.replace("hidden: 16", "hidden: 32\n  layers: 4").replace("  act: tanh\n", ""))
    assert isinstance(new, DictConfig)
    assert OmegaConf.to_container(new) == {"model": {"hidden": 32, "layers": 4}, "data": {"path": "${oc.env:HOME}/data"}}
    assert new.model._get_parent() is new and new.model._get_node("layers")._get_parent() is new.model
    assert new.data.path.endswith("/data") and "$" not in new.data.path  # the interpolation still resolves
    new.model.layers = 5  # a working node
    assert new.model.layers == 5
