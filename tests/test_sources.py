"""Byte sources: scattered reads (`readv`) against plain reads."""

import os

import pytest

from ckptfs.errors import SourceChangedError
from ckptfs.sources.base import IOV_MAX, FileSource


def _buffers(sizes):
    store = [bytearray(n) for n in sizes]
    return store, [memoryview(b) for b in store]


def test_readv_of_a_file_and_of_a_slice_match_pread(tmp_path):
    path = tmp_path / "data"
    data = os.urandom(3 * IOV_MAX * 7 + 100)
    path.write_bytes(data)
    source = FileSource(str(path))
    sizes = [7, 0, 5] * IOV_MAX  # more buffers than one preadv takes, and empty ones
    store, views = _buffers(sizes)
    source.readv(11, views)
    assert b"".join(store) == data[11 : 11 + sum(sizes)]
    part = source.slice(50, 2000)
    store, views = _buffers([100, 1, 899])
    part.readv(3, views)
    assert b"".join(store) == data[53:1053]
    with pytest.raises(ValueError):
        part.readv(1999, _buffers([2])[1])


def test_readv_of_a_truncated_file_is_a_source_changed_error(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x" * 100)
    source = FileSource(str(path))
    os.truncate(path, 50)
    with pytest.raises(SourceChangedError):
        source.readv(40, _buffers([5, 20])[1])
