"""One record per tensor, one builder of its `.npy` (tree/tensors.py), its
attribute names in one module (tree/xattrs.py), and one inverse of
`names.tensor_path`: the seams every format builds its tensor files on."""

import io
import re
from pathlib import Path

import numpy as np
import pytest

import ckptfs
from ckptfs.tree import names, xattrs
from ckptfs.tree.dtypes import BY_NAME
from ckptfs.tree.nodes import Content, Extent, File
from ckptfs.tree.tensors import ComputedTensor, PiecedTensor, Tensor, TensorFile, dtype_before, tensor_key

from .test_gather_assemble import MemorySource

F32 = BY_NAME["float32"]
VALUES = np.arange(6, dtype="<f4").reshape(2, 3)


def _source():
    return MemorySource(b"head" + VALUES.tobytes())  # its path: "memory"


def _read(file: File) -> np.ndarray:
    return np.load(io.BytesIO(file.content.read(0, file.content.size)))


@pytest.mark.parametrize("name", ["encoder.layers.0.weight", "a..b", ".x", "x.", "a/b.c", "100%.w", "bad\ud800name",
                                  "x.npy", "%"])
def test_tensor_name_is_the_inverse_of_tensor_path(name):
    assert names.tensor_name("/".join(names.tensor_path(name))) == name
    assert names.tensor_name("/".join(names.tensor_path(name, suffix="")), suffix="") == name


def test_a_shortened_path_spells_no_name():
    with pytest.raises(ValueError, match="shortened"):
        names.tensor_name("/".join(names.tensor_path("x" * 300)))


def test_every_record_builds_its_npy_and_attributes():
    source = _source()
    stored = Extent(source, 4, VALUES.nbytes)
    plain = TensorFile(Tensor("enc.w", F32, (2, 3), stored))
    assert np.array_equal(_read(plain), VALUES)
    assert plain.xattrs == {xattrs.NAME: "enc.w", xattrs.DTYPE: "float32", xattrs.SHAPE: "[2, 3]",
                            xattrs.SOURCE: "memory", xattrs.RANGE: f"4-{4 + VALUES.nbytes}"}
    rows = (Extent(source, 4, 12), Extent(source, 16, 12))
    pieced = TensorFile(PiecedTensor("enc.w", F32, (2, 3), stored, rows, ((xattrs.CHUNKS, "[...]"),)))
    assert np.array_equal(_read(pieced), VALUES)
    assert pieced.xattrs == {xattrs.NAME: "enc.w", xattrs.DTYPE: "float32", xattrs.SHAPE: "[2, 3]",
                             xattrs.CHUNKS: "[...]"}
    own = io.BytesIO()
    np.save(own, VALUES)
    header = own.getvalue()[: -VALUES.nbytes]
    kept = TensorFile(PiecedTensor("w", F32, (2, 3), stored, (stored,), header=header))
    assert kept.content.read(0, kept.content.size) == own.getvalue()  # the header as it was stored
    computed = TensorFile(ComputedTensor("blk.w", F32, (2, 3), stored, (stored,), ((xattrs.DEQUANTIZED_FROM, "Q4_0"),)))
    assert np.array_equal(_read(computed), VALUES)
    assert computed.xattrs == {xattrs.DEQUANTIZED_FROM: "Q4_0", xattrs.SHAPE: "[2, 3]"}  # no key or dtype of its own


def test_writers_read_the_record_not_the_attributes():
    """An attribute is what users see: changing the shown dict (as an
    edit's bookkeeping does) never changes the key or dtype a writer uses."""
    file = TensorFile(Tensor("enc.w", BY_NAME["bfloat16"], (3,), Extent(_source(), 4, 6)))
    file.xattrs[xattrs.NAME], file.xattrs[xattrs.DTYPE] = "other", "float32"
    assert tensor_key("enc/w.npy", file) == "enc.w"
    assert dtype_before(file).name == "bfloat16"
    file.moved = True  # a rename: the key its path spells
    assert tensor_key("dec/w%2Ex.npy", file) == "dec.w.x"
    new = File(Content([b""]))  # made through the mount: no record
    assert new.tensor is None and dtype_before(new) is None
    assert tensor_key("a/b.npy", new) == "a.b"


def test_every_tensor_file_of_a_checkpoint_keeps_its_record(tmp_path):
    torch = pytest.importorskip("torch")
    source = tmp_path / "m.pt"
    saved = {"enc": {"w": torch.arange(6.0).reshape(2, 3).t()}, "b.c": torch.ones(2)}  # a strided view: a Gather
    torch.save(saved, source)
    expected = {"enc.w": saved["enc"]["w"].numpy(), "b.c": saved["b.c"].numpy()}
    ckpt = ckptfs.open(source)
    files = {p: n for p, n in ckpt._parsed.root.walk() if isinstance(n, File) and p.endswith(".npy")}
    assert set(files) == {"enc/w.npy", "b/c.npy"}
    for path, file in files.items():
        assert file.tensor.name == tensor_key(path, file) == file.xattrs[xattrs.NAME]
        assert np.array_equal(_read(file), expected[file.tensor.name])


def test_attribute_names_are_spelled_in_one_module():
    """`ckptfs.*` attribute names are constants of tree/xattrs.py; any other
    module names them through it."""
    package = Path(ckptfs.__file__).parent
    literal = re.compile(r"""["']ckptfs\.[a-z_]+["']""")
    spelled = [f"{path.relative_to(package)}:{i}" for path in sorted(package.rglob("*.py"))
               if path.name != "xattrs.py" or path.parent.name != "tree"
               for i, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert spelled == []
