"""Hostile Keras files: HDF5 datasets whose bytes lie past the end of the
file or that claim a huge shape from nothing stored, groups nested past
any need, a `.keras` whose weights are deflated, whose config is no JSON
or whose weights are no HDF5, an HDF5 file cut short. A bad dataset is
left out alone (a note); a file h5py cannot read is refused in one line.
Also what the registry test and the fuzz seeds build a `.keras` from,
without Keras (h5py and zipfile, as Keras lays them out)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from . import Case

KERNEL = np.arange(12, dtype=np.float32).reshape(4, 3)
#: a Keras config of one Dense layer, as Keras writes it (shortened)
CONFIG = {"module": "keras", "class_name": "Sequential", "registered_name": None,
          "config": {"name": "tiny", "layers": [{"module": "keras.layers", "class_name": "Dense",
                                                  "config": {"name": "d", "units": 3}, "registered_name": None}]}}


def weights_h5(**more) -> bytes:
    """A `model.weights.h5` as Keras lays it out: `layers/dense/vars/0`, `1`."""
    buffer = io.BytesIO()
    import h5py

    with h5py.File(buffer, "w") as f:
        group = f.create_group("layers/dense/vars")
        group.attrs["name"] = "d"
        group["0"], group["1"] = KERNEL, np.ones(3, np.float32)
        for name, make in more.items():
            make(f)
    return buffer.getvalue()


def keras_zip(path: Path, config: bytes | None = None, weights: bytes | None = None,
              method: int = zipfile.ZIP_STORED) -> Path:
    """A `.keras` file as `model.save` lays one out (metadata.json first)."""
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "2026-01-01@00:00:00"}))
        z.writestr("config.json", config if config is not None else json.dumps(CONFIG))
        z.writestr("model.weights.h5", weights if weights is not None else weights_h5())
    return path


def _past_the_end(tmp_path: Path) -> Path:
    """A contiguous dataset whose layout message gives an address 1 TiB in."""
    data = bytearray(weights_h5())
    import h5py

    with h5py.File(io.BytesIO(bytes(data)), "r") as f:
        offset = f["layers/dense/vars/0"].id.get_offset()
    where = bytes(data).find(struct.pack("<Q", offset))
    data[where : where + 8] = struct.pack("<Q", 1 << 40)
    path = tmp_path / "past_the_end.h5"
    path.write_bytes(bytes(data))
    return path


def _huge_shape(tmp_path: Path) -> Path:
    path = tmp_path / "huge.weights.h5"
    path.write_bytes(weights_h5(huge=lambda f: f.create_dataset("huge", (1 << 40, 1 << 20), np.float32,
                                                                  chunks=(1, 1024), compression="gzip")))
    return path


def _deep(tmp_path: Path) -> Path:
    path = tmp_path / "deep.h5"
    path.write_bytes(weights_h5(deep=lambda f: f.create_group("/".join(["g"] * 100))))
    return path


def _deflated(tmp_path: Path) -> Path:
    return keras_zip(tmp_path / "deflated.keras", method=zipfile.ZIP_DEFLATED)


def _kernel_reads(mnt: Path, source: Path) -> None:
    assert np.array_equal(np.load(mnt / "layers" / "dense" / "vars" / "0.npy"), KERNEL)


def _cut(tmp_path: Path) -> Path:
    path = tmp_path / "cut.h5"
    path.write_bytes(weights_h5()[:900])
    return path


CASES = {
    "an HDF5 dataset whose bytes lie 1 TiB past the end of the file": Case(
        _past_the_end, "served", "h5py cannot open it"),
    "an HDF5 dataset claiming 4 PiB from nothing stored": Case(_huge_shape, "served", "more than 1024 times",
                                                               check=_kernel_reads),
    "HDF5 groups nested 100 deep": Case(_deep, "served", "groups more than 64 deep", check=_kernel_reads),
    "a .keras whose weights file is deflated in the zip": Case(_deflated, "served", "compressed in the archive",
                                                               check=_kernel_reads),
    "a .keras whose config.json is no JSON": Case(
        lambda p: keras_zip(p / "bad_config.keras", config=b"{" * 100_000), "refused", "not JSON"),
    "a .keras whose model.weights.h5 is no HDF5": Case(
        lambda p: keras_zip(p / "bad_weights.keras", weights=b"\x89HDF\r\n\x1a\n" + bytes(600)), "refused",
        "not a readable HDF5 file"),
    "an HDF5 file cut short": Case(_cut, "refused", "not a readable HDF5 file"),
}


def _external(tmp_path: Path) -> Path:
    """A dataset whose values HDF5 would read from a 0600 file by path."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRETSECRETKEY!" * 4)
    secret.chmod(0o600)
    path = tmp_path / "external.h5"
    path.write_bytes(weights_h5(w=lambda f: f.create_dataset("w", (64,), "u1", external=[(str(secret), 0, 64)])))
    return path


def _no_w(mnt: Path, source: Path) -> None:
    _kernel_reads(mnt, source)
    assert not (mnt / "w.npy").exists()


CASES["an HDF5 dataset stored in another file (external storage)"] = Case(
    _external, "served", "its values are kept in other files", check=_no_w)
