"""Bare NumPy `.npy` files (numpy.save), the worked example of
docs/architecture.md's "Adding a format": found by their magic whatever
their name, read through a real mount bit for bit as np.load reads them,
hostile headers refused in one line."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from ckptfs.formats import FILE_FORMATS, file_formats, npy, npz, open_checkpoint, torchzip
from ckptfs.formats.base import SNIFF_BYTES

from .conftest import FIXTURES, run_ckptfs
from .test_npz import ARRAYS as NPZ_ARRAYS

#: the arrays of test_npz.py (strings among them), and the layouts np.save keeps as they are
ARRAYS = {key: value for key, value in NPZ_ARRAYS.items() if "/" not in key} | {
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
}


def test_the_registry_finds_it_by_its_magic_not_its_name(tmp_path):
    path = tmp_path / "weights.bin"  # no .npy in the name
    with path.open("wb") as f:
        np.save(f, np.ones(3, np.float32))
    head = path.read_bytes()[:SNIFF_BYTES]
    assert file_formats(head)[0] is npy.FORMAT and npy.FORMAT in FILE_FORMATS
    ckpt = open_checkpoint(str(path), str(tmp_path / "cache"))
    assert ckpt.format == "numpy .npy" and [p.path for p in ckpt.tensors] == ["weights.bin.npy"]


def test_zips_holding_npy_records_stay_what_they_were(tmp_path):
    """An .npz's records and a torch.save zip's are .npy files too: the
    archives are still found as their own formats."""
    np.savez(tmp_path / "a.npz", w=np.ones(3))
    assert file_formats((tmp_path / "a.npz").read_bytes()[:SNIFF_BYTES])[0] is npz.FORMAT
    ckpt = FIXTURES / "lightning/tiny.ckpt"
    assert file_formats(ckpt.read_bytes()[:SNIFF_BYTES])[0] is torchzip.FORMAT
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        record = z.read("w.npy")
    assert file_formats(record[:SNIFF_BYTES])[0] is npy.FORMAT  # the record alone is one


@pytest.mark.parametrize("key", ARRAYS)
def test_the_mounted_file_is_what_np_load_reads(tmp_path, mount, key):
    path = tmp_path / f"{key}.npy"
    np.save(path, ARRAYS[key])
    mnt = mount(path, "-o", "ro")
    served = mnt / f"{key}.npy"
    assert served.read_bytes() == path.read_bytes()
    got, want = np.load(served), np.load(path)
    assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    assert got.flags.f_contiguous == want.flags.f_contiguous
    info = json.loads(run_ckptfs("info", "--json", str(path)).stdout)
    is_tensor = key not in ("fortran", "big_endian", "names")
    assert info["format"] == "numpy .npy" and info["tensors"] == int(is_tensor) and info["writable"] is False
    assert info["format_description"] == npy.FORMAT.description
    assert bool(info["notes"]) == (not is_tensor)


def _header(text: str, version: int = 1) -> bytes:
    body = text.encode("latin-1")
    body += b" " * (-(len(body) + 11) % 64) + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
    return b"\x93NUMPY\x02\x00" + len(body).to_bytes(4, "little") + body


HOSTILE = {
    "huge shape": (_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }")
                   + b"\0" * 64, "bytes of data"),
    "truncated": (_header("{'descr': '<f8', 'fortran_order': False, 'shape': (100,), }") + b"\0" * 10, "cut short"),
    "header cut short": (b"\x93NUMPY\x01\x00\xff\x00{'descr'", "cut short"),
    "object dtype": (_header("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }") + b"\x80\x04N.", "objects"),
    "not a dict": (_header("[1, 2, 3]"), "lacks descr"),
    "unknown version": (b"\x93NUMPY\x07\x00" + b"\0" * 60, "version 7"),
    "structured": (_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }") + b"\0" * 4,
                   "structured"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_header_is_refused_in_one_line(tmp_path, case):
    data, says = HOSTILE[case]
    path = tmp_path / "bad.npy"
    path.write_bytes(data)
    done = run_ckptfs("info", str(path))
    assert done.returncode != 0 and done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message and says in message, message
