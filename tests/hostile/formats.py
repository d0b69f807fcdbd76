"""Hostile inputs of the formats' own: npz records that np.load reads
otherwise than a first guess would, a gzip .nemo damaged where only its CRC
can tell, GGUF metadata that renders to gigabytes, archives of a million
members."""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from . import Case


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _npz(path: Path, records: list[tuple[str, np.ndarray]]) -> Path:
    with warnings.catch_warnings():  # zipfile warns of a duplicate name
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as z:
            for name, array in records:
                z.writestr(name, _npy(array))
    return path


def _npz_of_a_duplicate_record(tmp_path: Path) -> Path:
    return _npz(tmp_path / "twice.npz", [("w.npy", np.array([1, 1])), ("w.npy", np.array([9, 9]))])


def _serves_the_last_record(mnt: Path, source: Path) -> None:
    with np.load(source) as archive:
        assert np.load(mnt / "w.npy").tolist() == archive["w"].tolist() == [9, 9]


def _npz_of_bad_names(tmp_path: Path) -> Path:
    return _npz(tmp_path / "names.npz", [("/abs.npy", np.array([2])), ("x//y.npy", np.array([3])),
                                         ("x/z.npy", np.array([4])), ("../../evil.npy", np.array([5])),
                                         ("f.npy", np.array([6])), ("f.npy/g.npy", np.array([7]))])


def _each_bad_name_breaks_only_itself(mnt: Path, source: Path) -> None:
    assert sorted(os.listdir(mnt)) == sorted([".ckptfs", "%", "%2E%2E", "f.npy", "x"])
    assert sorted(os.listdir(mnt / "x")) == ["%", "z.npy"]
    with np.load(source) as archive:
        for key, path in {"/abs": "%/abs.npy", "x//y": "x/%/y.npy", "../../evil": "%2E%2E/%2E%2E/evil.npy"}.items():
            assert np.load(mnt / path).tolist() == archive[key].tolist(), key


CASES = {
    "an npz with two records of one name": Case(_npz_of_a_duplicate_record, "served", "np.load reads that one",
                                                check=_serves_the_last_record),
    "npz records named /abs, x//y, ../../evil and under a file": Case(_npz_of_bad_names, "served", "left out",
                                                                        check=_each_bad_name_breaks_only_itself),
}
