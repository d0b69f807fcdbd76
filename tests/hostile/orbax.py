"""Hostile Orbax checkpoints, made by hand in Orbax's zarr layout (raw
chunks, no compressor): leaves whose names climb out of the folder or name
an absolute path, an array folder that is a link out, zarr metadata that
claims astronomical shapes, too many dimensions or an object dtype;
`_METADATA` nested past any parser's stack or listing too many leaves; an
OCDBT database of junk. A bad array breaks only its own file (EIO, its
problem in `user.ckptfs.problem`); a bad `_METADATA` is refused in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import Case

#: the one good array: four float32 values
VALUES = np.arange(4, dtype=np.float32)
ZARRAY = {"chunks": [4], "compressor": None, "dtype": "<f4", "fill_value": None, "filters": None, "order": "C",
          "shape": [4], "zarr_format": 2}


def _leaf(*keys: str) -> dict:
    return {"key_metadata": [{"key": k, "key_type": 2} for k in keys],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False}}


def orbax_folder(path: Path, keys: list[tuple[str, ...]], arrays: dict[str, dict]) -> Path:
    """A checkpoint of the leaves `keys`, and a zarr folder for each of
    `arrays` (folder -> its .zarray, holding VALUES' bytes in chunk `0`);
    `w` is always one of them, good."""
    path.mkdir(parents=True)
    tree = {str(k): _leaf(*k) for k in [("w",), *keys]}
    (path / "_METADATA").write_text(json.dumps({"tree_metadata": tree, "use_ocdbt": False, "use_zarr3": False}))
    for folder, zarray in {"w": ZARRAY, **arrays}.items():
        (path / folder).mkdir()
        (path / folder / ".zarray").write_text(json.dumps(zarray))
        (path / folder / "0").write_bytes(VALUES.tobytes())
    return path


def _climbing_names(tmp: Path) -> Path:
    """Leaves named `../outside`, `/abs` and `..`, beside a real array
    folder `outside/` next to the checkpoint, which must not be read."""
    orbax_folder(tmp / "outside-parent", [], {})
    os.rename(tmp / "outside-parent" / "w", tmp / "outside")
    return orbax_folder(tmp / "ckpt", [("../outside",), ("/abs",), ("..",)], {})


def _linked_folder(tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / ".zarray").write_text(json.dumps(ZARRAY))
    (tmp / "elsewhere" / "0").write_bytes(VALUES.tobytes())
    ckpt = orbax_folder(tmp / "ckpt", [("linked",)], {})
    os.symlink("../elsewhere", ckpt / "linked")
    return ckpt


def _linked_parent(tmp: Path) -> Path:
    """A leaf `a/b` whose folder `a` is a link to `c` inside the checkpoint,
    and `c/b`'s chunk a link to a file outside it: nothing outside is read."""
    (tmp / "outside.bin").write_bytes(np.full(4, 7, np.float32).tobytes())
    ckpt = orbax_folder(tmp / "ckpt", [("a", "b")], {})
    (ckpt / "c" / "b").mkdir(parents=True)
    (ckpt / "c" / "b" / ".zarray").write_text(json.dumps(ZARRAY))
    os.symlink("../../../outside.bin", ckpt / "c" / "b" / "0")
    os.symlink("c", ckpt / "a")
    return ckpt


def _deep_values(tmp: Path) -> Path:
    """A `_sharding` value nested 5,000 deep (past the JSON parser's stack)
    and a `_CHECKPOINT_METADATA` nested 500 deep (past YAML's): the one is
    shown as its text, the other's YAML says it cannot be shown; the
    arrays read."""
    path = orbax_folder(tmp / "ckpt", [], {})
    (path / "_sharding").write_text(json.dumps({"dw==": "[" * 5_000 + "]" * 5_000}))
    (path / "_CHECKPOINT_METADATA").write_text('{"custom": ' + "[" * 500 + "]" * 500 + "}")
    return path


def _fifo_chunk(tmp: Path) -> Path:
    """An array whose chunk is a FIFO nobody writes to: tensorstore would
    wait on it forever."""
    ckpt = orbax_folder(tmp / "ckpt", [("piped",)], {})
    (ckpt / "piped").mkdir()
    (ckpt / "piped" / ".zarray").write_text(json.dumps(ZARRAY))
    os.mkfifo(ckpt / "piped" / "0")
    return ckpt


def _claims(tmp: Path) -> Path:
    arrays = {"huge": {**ZARRAY, "shape": [2 ** 47, 2 ** 6], "chunks": [4, 4]},
              "deep": {**ZARRAY, "shape": [1] * 40, "chunks": [1] * 40},
              "objects": {**ZARRAY, "dtype": "|O"},
              "chunky": {**ZARRAY, "shape": [2 ** 40], "chunks": [2 ** 40]},
              "negative": {**ZARRAY, "shape": [-4]}}
    return orbax_folder(tmp / "ckpt", [(name,) for name in arrays], arrays)


def _deep_metadata(tmp: Path) -> Path:
    path = orbax_folder(tmp / "ckpt", [], {})
    (path / "_METADATA").write_text('{"tree_metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return path


def _many_leaves(tmp: Path) -> Path:
    path = orbax_folder(tmp / "ckpt", [], {})
    tree = {f"l{i}": _leaf(f"l{i}") for i in range(250_000)}
    (path / "_METADATA").write_text(json.dumps({"tree_metadata": tree}))
    return path


def _junk_ocdbt(tmp: Path) -> Path:
    path = orbax_folder(tmp / "ckpt", [], {})
    (path / "manifest.ocdbt").write_bytes(b"\x0aOCDBT junk" * 100)
    (path / "d").mkdir()
    (path / "d" / ("0" * 32)).write_bytes(b"junk" * 100)
    return path


CASES = {
    "Orbax leaves named ../outside, /abs and ..": Case(
        _climbing_names, "served", "its name cannot be a folder of the checkpoint",
        broken=("%2E.%2Foutside.npy", "%2Fabs.npy", "%2E..npy")),
    "an Orbax array folder that is a link out": Case(_linked_folder, "served", "leads outside",
                                                     broken=("linked.npy",)),
    "an Orbax array reached through a linked folder, its chunk a link out": Case(
        _linked_parent, "served", "reached through", broken=("a/b.npy",)),
    "an Orbax array whose chunk is a FIFO": Case(_fifo_chunk, "served", "not regular files", broken=("piped.npy",)),
    "Orbax _sharding and _CHECKPOINT_METADATA values nested 5,000 and 500 deep": Case(
        _deep_values, "served", "cannot be shown"),
    "Orbax arrays of 2^53 elements, 40 dimensions, objects, a 4 TiB chunk, a negative size": Case(
        _claims, "served", "larger than", broken=("huge.npy", "deep.npy", "objects.npy", "chunky.npy", "negative.npy")),
    "an Orbax _METADATA nested 100,000 deep": Case(_deep_metadata, "refused", "_METADATA is not JSON"),
    "an Orbax _METADATA of 250,000 leaves": Case(_many_leaves, "refused", "more than 200000"),
    "an Orbax OCDBT database of junk": Case(_junk_ocdbt, "served", "manifest", broken=("w.npy",)),
}
