"""NPY headers and the dtype table, checked against NumPy, ml_dtypes,
safetensors and docs/dtypes.md."""

import io
import re
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 and float8 with NumPy)
import numpy as np
import pytest
import safetensors
import torch

from ckptfs.tree import npy
from ckptfs.tree.dtypes import BY_SAFETENSORS, DTYPES

from .conftest import REPO


@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 4), (2, 0, 5), (1,) * 20, (123456789, 7)])
@pytest.mark.parametrize("descr", ["<f4", "|b1", "bfloat16", "float8_e4m3fn", "|u1", "<c8"])
def test_header_parses_like_numpy_and_aligns_data(shape, descr):
    head = npy.header(descr, shape)
    assert len(head) % 64 == 0
    f = io.BytesIO(head)
    version = np.lib.format.read_magic(f)
    assert version == (1, 0)
    got_shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    assert (got_shape, fortran, dtype) == (shape, False, np.dtype(descr))
    assert f.tell() == len(head)


def test_header_matches_numpy_byte_for_byte():
    for arr in (np.zeros((3, 4), np.float32), np.zeros(5, np.int64), np.zeros((), np.float16)):
        f = io.BytesIO()
        np.save(f, arr)
        expected = f.getvalue()[: -arr.nbytes or None]
        assert npy.header(arr.dtype.str, arr.shape) == expected


def test_every_npy_descr_is_the_torch_dtype_layout():
    for d in DTYPES:
        if d.npy_descr is None or d.torch is None:
            continue
        t = getattr(torch, d.torch)
        assert np.dtype(d.npy_descr).itemsize == t.itemsize, d.name
        assert np.dtype(d.npy_descr).itemsize * 8 == d.bits, d.name


def test_table_covers_every_safetensors_dtype():
    # The safetensors library names every dtype it knows in its compiled core.
    blob = Path(safetensors._safetensors_rust.__file__).read_bytes()
    for code in BY_SAFETENSORS:
        assert code.encode() in blob, code
    assert set(BY_SAFETENSORS) >= {
        "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16", "F32", "F64", "C64",
        "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2",
    }


def test_docs_table_matches_the_code():
    text = (REPO / "docs" / "dtypes.md").read_text()
    documented = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`").replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 5 and cells[0] in {d.name for d in DTYPES}:
            documented[cells[0]] = tuple(cells[1:])
    for d in DTYPES:
        assert d.name in documented, d.name
        bits, descr, st_code, torch_name = documented[d.name]
        assert bits == str(d.bits)
        assert descr == (d.npy_descr or "|u1` raw bytes")
        assert st_code == (d.safetensors or "—")
        assert torch_name == (f"torch.{d.torch}" if d.torch else "—")
    assert len(documented) == len(DTYPES)
