"""NumPy `.npz` archives (numpy.savez and savez_compressed): read through a
real mount equal to np.load, random reads of deflated records, edits
repacked into an archive np.load reads, bad archives refused in one line,
records of one name or of names no path holds shown as np.load reads them."""

from __future__ import annotations

import json
import os
import random
import warnings
import zipfile

import numpy as np
import pytest
import yaml

from ckptfs.sources.base import FileSource
from ckptfs.sources.deflate import DeflateSource

from .conftest import run_ckptfs, sha256, write_refused
from .hostile.formats import empty_records_zip

ARRAYS = {
    "weight": np.random.default_rng(0).standard_normal((257, 129)).astype(np.float32),
    "ids": np.arange(-5, 40, dtype=np.int64),
    "half": np.linspace(0, 1, 7, dtype=np.float16),
    "mask": np.array([True, False, True]),
    "scalar": np.float64(2.5),
    "layers/0/bias": np.zeros(11, np.float32),
    "names": np.array(["a", "bcd"]),  # an array that is no tensor: served as it is
}


@pytest.fixture(params=["savez", "savez_compressed"])
def archive(request, tmp_path):
    path = tmp_path / f"{request.param}.npz"
    getattr(np, request.param)(path, **ARRAYS)
    return path


def test_every_array_reads_as_np_load_reads_it(archive, mount):
    mnt = mount(archive, "-o", "ro")
    reference = np.load(archive)
    assert sorted(reference.files) == sorted(ARRAYS)
    with zipfile.ZipFile(archive) as z:
        for key in reference.files:
            served = mnt / f"{key}.npy"
            assert served.read_bytes() == z.read(f"{key}.npy")  # the record itself, byte for byte
            got = np.load(served)
            assert got.dtype == reference[key].dtype and np.array_equal(got, reference[key]), key
    mapped = np.load(mnt / "weight.npy", mmap_mode="r")
    assert np.array_equal(mapped[100:103], ARRAYS["weight"][100:103])
    del mapped
    info = json.loads(run_ckptfs("info", "--json", str(archive)).stdout)
    assert info["format"] == "numpy .npz" and info["tensors"] == len(ARRAYS) - 1  # the strings are no tensor
    assert info["parameters"] == sum(np.asarray(a).size for k, a in ARRAYS.items() if k != "names")


def test_a_deflated_record_reads_from_anywhere(tmp_path):
    data = np.random.default_rng(1).integers(0, 4, 3 << 20, dtype=np.uint8).tobytes() + bytes(5 << 20)
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.npy", data)
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    source = DeflateSource(FileSource(str(path)).slice(start, info.compress_size), len(data), "big")
    rng = random.Random(0)
    for _ in range(200):
        offset, length = rng.randrange(len(data)), rng.randrange(1, 400_000)
        assert source.pread(offset, length) == data[offset:offset + length]
    assert b"".join(source.pread(o, 131072) for o in range(0, len(data), 131072)) == data
    assert len(source._points) <= len(data) // DeflateSource.SPACING + 1
    broken = DeflateSource(FileSource(str(path)).slice(start, 1000), len(data), "big")
    with pytest.raises(Exception, match="deflate stream ends"):
        broken.pread(0, len(data))


def test_edits_repack_into_an_archive_np_load_reads(archive, mount):
    mnt = mount(archive)
    np.save(mnt / "ids.npy", np.arange(3) * 7)
    os.remove(mnt / "names.npy")
    np.save(mnt / "layers" / "0" / "extra.npy", np.ones((2, 2), np.int16))
    done = run_ckptfs("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    result = np.load(archive)
    assert sorted(result.files) == sorted([k for k in ARRAYS if k != "names"] + ["layers/0/extra"])
    assert result["ids"].tolist() == [0, 7, 14]
    assert result["layers/0/extra"].tolist() == [[1, 1], [1, 1]]
    for key in ("weight", "half", "mask", "scalar", "layers/0/bias"):
        assert np.array_equal(result[key], ARRAYS[key]), key
    with zipfile.ZipFile(archive) as z:
        methods = {i.filename: i.compress_type for i in z.infolist()}
        assert z.testzip() is None  # every CRC right
    compressed = "compressed" in archive.name
    assert methods["weight.npy"] == (zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)  # kept as it was
    assert methods["ids.npy"] == zipfile.ZIP_STORED  # written anew: stored


def test_a_file_that_is_no_npy_is_refused_when_closed(archive, mount):
    before = sha256(archive)
    mnt = mount(archive, log_errors_expected=True)
    write_refused(mnt / "ids.npy", b"not an array")
    assert "not an NPY file" in os.getxattr(mnt / "ids.npy", "user.ckptfs.problem").decode()
    os.remove(mnt / "ids.npy")  # dropping the bad edit lets the rest be written
    assert run_ckptfs("umount", str(mnt)).returncode == 0
    assert sha256(archive) != before and "ids" not in np.load(archive).files


def test_bad_archives(tmp_path, mount):
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(4), b=np.ones(3))
    torn = tmp_path / "torn.npz"
    torn.write_bytes(good.read_bytes()[:-30])
    done = run_ckptfs("info", str(torn))
    assert done.returncode == 1 and done.stderr.startswith(f"ckptfs: {torn}: not a readable zip archive")
    # one record deflated with a corrupt stream: its file fails, the rest reads
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a.npy", _npy(np.arange(1000)), zipfile.ZIP_DEFLATED)
        z.writestr("b.npy", _npy(np.ones(3)))
    raw = bytearray(bad.read_bytes())
    with zipfile.ZipFile(bad) as z:
        info = z.getinfo("a.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 40: start + 60] = b"\xff" * 20
    bad.write_bytes(bytes(raw))
    mnt = mount(bad, "-o", "ro", log_errors_expected=True)
    assert np.array_equal(np.load(mnt / "b.npy"), np.ones(3))
    with pytest.raises(OSError):
        (mnt / "a.npy").read_bytes()


def _npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_export_and_scan_of_an_npz(archive, tmp_path):
    from safetensors.numpy import load_file

    done = run_ckptfs("export", str(archive), str(tmp_path / "out.safetensors"))
    assert done.returncode == 0, done.stderr
    exported = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(exported) == sorted(k for k in ARRAYS if k != "names")
    for key, array in exported.items():
        assert np.array_equal(array, ARRAYS[key]) and array.dtype == np.asarray(ARRAYS[key]).dtype
    scanned = run_ckptfs("scan", str(archive))
    assert scanned.returncode == 0 and "safe: no pickles" in scanned.stdout


def _odd_archive(path, records: list[tuple[str, np.ndarray]]):
    with warnings.catch_warnings():  # zipfile warns of a duplicate name: that is the point
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as z:
            for name, array in records:
                z.writestr(name, _npy(array))
    return path


def _loaded(path) -> dict:
    with np.load(path) as archive:
        return {key: (lambda v: v if isinstance(v, bytes) else v.tolist())(archive[key]) for key in archive.files}


def test_of_two_records_of_one_name_the_mount_shows_what_np_load_reads(tmp_path, mount):
    archive = _odd_archive(tmp_path / "twice.npz", [("w.npy", np.array([1, 1])), ("b.npy", np.arange(3)),
                                                    ("w.npy", np.array([9, 9]))])
    assert _loaded(archive)["w"] == [9, 9]
    mnt = mount(archive)
    assert np.load(mnt / "w.npy").tolist() == [9, 9]
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert any("'w.npy'" in note and "np.load reads" in note for note in info["notes"]), info["notes"]
    np.save(mnt / "b.npy", np.arange(4))  # an edit elsewhere: w is copied, once, the one shown
    assert run_ckptfs("umount", mnt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        assert [i.filename for i in z.infolist()] == ["b.npy", "w.npy"]
    assert _loaded(archive) == {"w": [9, 9], "b": [0, 1, 2, 3]}

    _odd_archive(archive, [("w.npy", np.array([1, 1])), ("w.npy", np.array([9, 9]))])
    mnt = mount(archive)
    np.save(mnt / "w.npy", np.array([5, 5]))  # the edited one replaces the one shown, and only it is written
    assert run_ckptfs("umount", mnt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        assert [i.filename for i in z.infolist()] == ["w.npy"]
    assert _loaded(archive) == {"w": [5, 5]}


def test_a_record_no_path_can_hold_breaks_only_itself(tmp_path, mount):
    records = [("/abs.npy", np.array([2])), ("x//y.npy", np.array([3])), ("x/z.npy", np.array([4])),
               ("../../evil.npy", np.array([5])), ("f.npy", np.array([6])), ("f.npy/g.npy", np.array([7])),
               ("ok.npy", np.array([8]))]
    archive = _odd_archive(tmp_path / "names.npz", records)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("folder/", b"bytes a folder record holds")  # np.load returns them for key 'folder/'
    expected = _loaded(archive)
    mnt = mount(archive)
    assert sorted(os.listdir(mnt)) == sorted([".ckptfs", "%", "x", "%2E%2E", "f.npy", "ok.npy"])
    assert sorted(os.listdir(mnt / "x")) == ["%", "z.npy"]
    served = {"/abs": "%/abs.npy", "x//y": "x/%/y.npy", "x/z": "x/z.npy", "../../evil": "%2E%2E/%2E%2E/evil.npy",
              "f": "f.npy", "ok": "ok.npy"}
    for key, path in served.items():
        assert np.load(mnt / path).tolist() == expected[key], key
        assert os.getxattr(mnt / path, "user.ckptfs.name").decode() == key  # the tensor's name is np.load's key
    notes = "\n".join(yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"])
    assert "'f.npy/g.npy' left out" in notes and "'folder/' left out" in notes
    tsv = (mnt / ".ckptfs" / "tensors.tsv").read_text()
    assert "\n%2E%2E/%2E%2E/evil.npy\t../../evil\t" in tsv  # the path escaped, the name as np.load gives it
    assert not any(line.startswith(("../", "/")) for line in tsv.splitlines())
    np.save(mnt / "ok.npy", np.array([80]))
    np.save(mnt / "x" / "%" / "y.npy", np.array([30]))  # an edit of a record whose name holds an empty part
    assert run_ckptfs("umount", mnt).returncode == 0
    after = _loaded(archive)
    assert after == {**expected, "ok": [80], "x//y": [30]}  # the records left out are kept as they were
    with zipfile.ZipFile(archive) as z:
        assert z.read("folder/") == b"bytes a folder record holds" and z.testzip() is None


def test_an_archive_of_more_records_than_max_members_is_refused_before_zipfile_reads_them(tmp_path, mount):
    path = empty_records_zip(tmp_path / "many.npz", 1001)
    mnt = tmp_path / "refused"
    mnt.mkdir()
    done = run_ckptfs("mount", path, mnt, "-o", "ro,max_members=1000")
    assert done.returncode == 1 and done.stderr == f"ckptfs: {path}: more than 1000 records (-o max_members raises the limit)\n"
    served = mount(path, "-o", "ro,max_members=1001")
    assert len(os.listdir(served)) == 1002  # the empty records: plain files, the bytes np.load returns
    done = run_ckptfs("mount", path, mnt, "-o", "ro,max_header_bytes=1000")
    assert done.returncode == 1 and "a central directory of 58058 bytes, more than max_header_bytes" in done.stderr


def test_a_record_that_is_no_array_is_the_file_np_load_returns(tmp_path, mount):
    archive = tmp_path / "mixed.npz"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("text.npy", b"not an array")  # np.load returns these bytes
        z.writestr("broken.npy", b"\x93NUMPY\x01\x00\x04\x00{}\n")  # np.load raises
        z.writestr("a.npy", _npy(np.arange(3)))
    with np.load(archive) as loaded:
        assert loaded["text"] == b"not an array"
    mnt = mount(archive, "-o", "ro")
    assert (mnt / "text.npy").read_bytes() == b"not an array"
    assert (mnt / "broken.npy").read_bytes() == b"\x93NUMPY\x01\x00\x04\x00{}\n"
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert any(n.startswith("'broken.npy' is shown as the plain file it is") for n in notes), notes
    assert (mnt / ".ckptfs" / "tensors.tsv").read_text().count("\n") == 2  # a.npy alone, under its header line
