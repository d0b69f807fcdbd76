"""The tree made from a table of tensors (tree/table.py) is the tree
`tensor_tree` makes of the same records, and the safetensors reader's
checks made once per kind of entry still refuse every entry they did."""

from __future__ import annotations

import bisect
import json
import os

import pytest

from ckptfs.errors import FormatError
from ckptfs.formats import safetensors
from ckptfs.tree.nodes import Dir
from ckptfs.tree.table import NameColumn, TableDir
from ckptfs.tree.tensors import TensorFile, tensor_tree

from .fuzz.targets import MemorySource

#: names whose folders and files need care: a name that is also a folder's
#: prefix, parts that sort around "." ("-", "/"), empty parts, a leading
#: dot, "%", a name too long for one file name, non-ASCII
NAMES = ["a", "a.b", "a-b", "a.b.c", "a.b0", "a/b", "a..b", ".x", "x.", "%.y", "z" * 300 + ".w",
         "model.layers.0.mlp.weight", "model.layers.10.mlp.weight", "model.layers.2.mlp.weight",
         "model.layers.0.mlp.bias", "ü.é.weight", "model.norm"]


def _safetensors(names: list[str], shapes=None) -> bytes:
    header, offset = {}, 0
    for i, name in enumerate(names):
        shape = shapes[i] if shapes else [i % 3 + 1]
        length = 4 * (shape[0] if shape else 1)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    text = json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(8, "little") + text + bytes(offset)


def _shown(folder: Dir) -> list[tuple[str, str, object]]:
    return [(path, type(node).__name__ if not isinstance(node, Dir) else "Dir",
             node.tensor if isinstance(node, TensorFile) else None) for path, node in folder.walk()]


def test_the_table_tree_is_tensor_tree_of_the_same_records():
    source = MemorySource(_safetensors(NAMES))
    folder, placed, by_name, _ = safetensors.expand(source)
    tensors = safetensors.read(source)[1]
    expected_tree, expected_placed = tensor_tree(tensors)
    assert isinstance(folder, TableDir) and not folder.filled
    assert _shown(folder) == _shown(expected_tree)
    assert list(placed) == expected_placed
    assert placed[3] == expected_placed[3] and placed[-1] == expected_placed[-1] and len(placed) == len(NAMES)
    assert dict(by_name) == {t.name: t for t in tensors}
    assert "a.b" in by_name and "a.b.c.d" not in by_name and by_name.get("nope") is None


def test_records_are_made_once_and_listed_in_byte_order():
    source = MemorySource(_safetensors(NAMES))
    folder, placed, by_name, _ = safetensors.expand(source)
    assert by_name["a.b"] is by_name["a.b"] is folder.children["a"].children["b.npy"].tensor
    offsets = [t.data.offset for t in safetensors.read(source)[1]]
    assert offsets == sorted(offsets)


def test_a_folder_is_made_only_when_used():
    folder = safetensors.expand(MemorySource(_safetensors(NAMES)))[0]
    model = folder.children["model"]
    assert isinstance(model, TableDir) and not model.filled
    assert model.subdir_count() == 1 and model.filled
    assert sorted(model.children["layers"].children) == ["0", "10", "2"]


def test_the_name_column_is_the_sorted_names():
    names = sorted(NAMES)
    column = NameColumn(names)
    assert list(column) == names == [column[i] for i in range(len(names))]
    assert column[-1] == names[-1] and column[1:3] == names[1:3]
    assert [bisect.bisect_left(column, n) for n in names] == list(range(len(names)))
    with pytest.raises(IndexError):
        column[len(names)]


def _header(entries: list[tuple[str, str]]) -> bytes:
    text = ("{" + ",".join(f"{json.dumps(name)}:{entry}" for name, entry in entries) + "}").encode()
    return len(text).to_bytes(8, "little") + text


GOOD = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@pytest.mark.parametrize("second, problem", [
    ('{"dtype":"F32","shape":[true],"data_offsets":[4,8]}', "is not a list of non-negative integers"),
    ('{"dtype":"F32","shape":[1.0],"data_offsets":[4,8]}', "is not a list of non-negative integers"),
    ('{"dtype":"F32","shape":"[1]","data_offsets":[4,8]}', "is not a list of non-negative integers"),
    ('{"dtype":"F32","shape":[1],"data_offsets":[true,8]}', "is not a pair of non-negative integers"),
    ('{"dtype":"F32","shape":[1],"data_offsets":[4,8.0]}', "is not a pair of non-negative integers"),
    ('{"dtype":"F32","shape":[1],"data_offsets":"48"}', "is not a pair of non-negative integers"),
    ('{"dtype":"F32","shape":[1],"data_offsets":[4,8,12]}', "is not a pair of non-negative integers"),
    ('{"dtype":"F32","shape":[1],"data_offsets":[4,12]}', "needs 4 bytes but data_offsets hold 8"),
    ('{"dtype":["F32"],"shape":[1],"data_offsets":[4,8]}', "unknown dtype"),
    ('{"shape":[1],"data_offsets":[4,8]}', "unknown dtype"),
    ('[1]', "entry is not a JSON object"),
    ('{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[4,8]}', "appears twice"),
])
def test_an_entry_of_a_kind_seen_before_is_checked_as_the_first(second, problem):
    data = _header([("a", GOOD), ("b", second)]) + bytes(8)
    with pytest.raises(FormatError, match=problem):
        safetensors.read(MemorySource(data))


def test_entries_of_one_kind_share_one_shape():
    _, tensors = safetensors.read(MemorySource(_header([("a", GOOD), ("b", GOOD.replace("0,4", "4,8"))]) + bytes(8)))
    assert tensors[0].shape is tensors[1].shape and [t.name for t in tensors] == ["a", "b"]


def test_names_holding_nul_are_read_one_by_one():
    names = ["a", "b\0c", "d"]
    column = NameColumn(names)
    assert list(column) == names and column[1] == "b\0c" and not column._split
    assert list(NameColumn([])) == [] and list(NameColumn([""])) == [""]


def test_a_folder_renamed_before_its_subfolders_were_listed_moves_them_all(mount, tmp_path):
    """A rename marks every file below the folder moved, so that the repack
    keys them by their new paths: folders made when used are made for it."""
    from safetensors.numpy import load_file

    from .conftest import umount

    source = tmp_path / "m.safetensors"
    source.write_bytes(_safetensors(["a.b.c.w", "a.b.c.v", "a.d", "e"]))
    mnt = mount(source)
    os.rename(mnt / "a", mnt / "z")  # nothing below a/ listed or looked up
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    assert sorted(load_file(source)) == ["e", "z.b.c.v", "z.b.c.w", "z.d"]


def test_statfs_counts_folders_never_made_from_the_table():
    """`df` of a mount must neither make every folder nor leave the tensors out."""
    from ckptfs.fuse.operations import Operations, Ownership

    source = MemorySource(_safetensors(NAMES))
    counted = Operations(safetensors.expand(source)[0], Ownership(0, 0, 0o444, 0)).totals
    made = safetensors.expand(source)[0]
    files = [node for _, node in made.walk() if isinstance(node, TensorFile)]
    assert counted == (sum(f.content.size for f in files), 1 + len(list(made.walk())))


def test_a_commit_after_an_unlink_at_the_root_serves_the_committed_tree(mount, tmp_path):
    """The kernel keeps names of a writable mount's unedited files as long as
    a read-only mount's: a commit must make it look up every old name again,
    those an unlink at the root took out of the root's listing too."""
    import errno

    import numpy as np

    from .conftest import run_ckptfs

    source = tmp_path / "m.safetensors"
    source.write_bytes(_safetensors(["a", "enc.w", "enc.b"], shapes=[[4], [2], [2]]))
    mnt = mount(source)
    np.save(mnt / "enc" / "w.npy", np.full(2, 5, dtype=np.float32))
    before = os.stat(mnt / "enc" / "w.npy").st_ino
    os.unlink(mnt / "a.npy")
    done = run_ckptfs("commit", mnt)
    assert done.returncode == 0, done.stderr
    assert os.stat(mnt / "enc" / "w.npy").st_ino != before  # looked up again, in the committed tree
    try:
        with open(mnt / "enc" / "w.npy", "r+b", buffering=0) as f:
            f.seek(128)
            f.write(np.float32(7).tobytes())
    except OSError as e:  # the old tree's file, whose edits the commit took: ESTALE
        pytest.fail(f"writing after the commit: {errno.errorcode[e.errno]}")
    assert np.load(mnt / "enc" / "w.npy").tolist() == [7.0, 5.0]
