"""NumPy `.npz` archives (numpy.savez and savez_compressed): read through a
real mount equal to np.load, random reads of deflated records, edits
repacked into an archive np.load reads, bad archives refused in one line,
records of one name or of names no path holds shown as np.load reads them."""

from __future__ import annotations

import json
import os
import random
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import yaml

from ckptfs.formats.zipout import Deflated, Record, ZipStream
from ckptfs.pack.output import COPY_BLOCK, Output
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
    kept = zipfile.ZIP_DEFLATED if "compressed" in archive.name else zipfile.ZIP_STORED
    assert methods["weight.npy"] == kept  # copied as it was
    assert methods["ids.npy"] == kept  # written anew as it was written
    assert methods["layers/0/extra.npy"] == kept  # new: as the archive's writer writes every record


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


def _compressible(seed: int, shape: tuple) -> np.ndarray:
    """Values of few kinds, half of them zero: deflate packs them several times over."""
    array = np.random.default_rng(seed).integers(0, 6, shape).astype(np.float32)
    array[..., : shape[-1] // 2] = 0
    return array


def _record_bytes(path, info: zipfile.ZipInfo) -> bytes:
    """A record's bytes as the archive holds them (compressed ones compressed)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_length + extra_length)
        return f.read(info.compress_size)


def test_an_edited_savez_compressed_archive_stays_compressed(tmp_path, mount):
    arrays = {"emb": _compressible(0, (600, 512)), "head": _compressible(1, (256, 300)),
              "bias": np.zeros(4096, np.float32), "steps": np.arange(20000, dtype=np.int64)}
    archive = tmp_path / "model.npz"
    np.savez_compressed(archive, **arrays)
    with zipfile.ZipFile(archive) as z:
        before = {i.filename: _record_bytes(archive, i) for i in z.infolist()}
    mnt = mount(archive)
    edited = _compressible(2, (256, 300))
    np.save(mnt / "head.npy", edited)  # the same shape, other values
    np.save(mnt / "steps.npy", np.arange(30000, dtype=np.int32))  # another shape and dtype
    np.save(mnt / "new.npy", _compressible(3, (100, 400)))
    os.remove(mnt / "bias.npy")
    done = run_ckptfs("umount", mnt)
    assert done.returncode == 0, done.stderr

    expected = {"emb": arrays["emb"], "head": edited, "steps": np.arange(30000, dtype=np.int32),
                "new": _compressible(3, (100, 400))}
    with np.load(archive) as result:
        assert result.files == list(expected)
        for key, array in expected.items():
            assert result[key].dtype == array.dtype and result[key].tobytes() == array.tobytes(), key
    reference = tmp_path / "reference.npz"
    np.savez_compressed(reference, **expected)  # what numpy writes for the same arrays
    with zipfile.ZipFile(archive) as z, zipfile.ZipFile(reference) as r:
        assert z.testzip() is None  # every CRC-32 right
        infos, wanted = z.infolist(), r.infolist()
        assert [i.compress_type for i in infos] == [zipfile.ZIP_DEFLATED] * 4
        assert _record_bytes(archive, infos[0]) == before["emb.npy"]  # unchanged: its bytes copied
        # edited and new records deflated as zipfile deflates them for numpy, to the byte
        assert [(i.filename, i.compress_size, i.file_size) for i in infos] == \
               [(i.filename, i.compress_size, i.file_size) for i in wanted]
    assert abs(archive.stat().st_size - reference.stat().st_size) <= 64 * len(expected)
    assert archive.stat().st_size < sum(a.nbytes for a in expected.values()) // 3


def test_each_record_keeps_its_own_compression_and_new_ones_take_the_archives(tmp_path, mount):
    archive = tmp_path / "mixed.npz"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.npy", _npy(_compressible(4, (50, 60))), zipfile.ZIP_STORED)
        z.writestr("b.npy", _npy(_compressible(5, (50, 60))), zipfile.ZIP_DEFLATED, compresslevel=1)
        z.writestr("c.npy", _npy(_compressible(6, (50, 60))), zipfile.ZIP_DEFLATED, compresslevel=9)
    with zipfile.ZipFile(archive) as z:
        untouched = _record_bytes(archive, z.getinfo("c.npy"))
    mnt = mount(archive)
    np.save(mnt / "a.npy", np.full((3, 3), 7.0))
    np.save(mnt / "b.npy", np.full((3, 3), 8.0))
    np.save(mnt / "d.npy", np.full((3, 3), 9.0))
    assert run_ckptfs("umount", mnt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        assert {i.filename: i.compress_type for i in z.infolist()} == {
            "a.npy": zipfile.ZIP_STORED, "b.npy": zipfile.ZIP_DEFLATED, "c.npy": zipfile.ZIP_DEFLATED,
            "d.npy": zipfile.ZIP_DEFLATED}  # two of three were deflated: so is the new one
        assert _record_bytes(archive, z.getinfo("c.npy")) == untouched  # level 9 kept: never recompressed
    with np.load(archive) as result:
        assert result["a"].tolist() == [[7.0] * 3] * 3 and result["b"].tolist() == [[8.0] * 3] * 3
        assert result["d"].tolist() == [[9.0] * 3] * 3
        assert np.array_equal(result["c"], _compressible(6, (50, 60)))


class _BytesPiece:
    """Bytes read as a file of the tree is read."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


@pytest.mark.parametrize("zip64_at", [0xFFFFFFFF, 64], ids=["zip32", "zip64"])
def test_deflated_records_are_written_as_zipfile_reads_them(tmp_path, zip64_at):
    weights, steps = _npy(_compressible(7, (250, 200))), _npy(np.arange(9))
    records = [Deflated("w.npy", len(weights), _BytesPiece(weights)), Record("s.npy", len(steps), data=steps),
               Deflated("empty", 0, _BytesPiece(b""))]
    path = tmp_path / "written.npz"
    with open(path, "wb") as f:
        ZipStream(records, zip64_at=zip64_at).write(Output(f.fileno()))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # CRC-32s and sizes as zipfile checks them
        assert [(i.filename, i.compress_type) for i in z.infolist()] == [
            ("w.npy", zipfile.ZIP_DEFLATED), ("s.npy", zipfile.ZIP_STORED), ("empty", zipfile.ZIP_DEFLATED)]
        assert z.getinfo("w.npy").compress_size < len(weights) // 3
    with np.load(path) as result:
        assert np.array_equal(result["w"], _compressible(7, (250, 200))) and result["s"].tolist() == list(range(9))
        assert result["empty"] == b""


class _Generated:
    """`size` bytes made as they are read, a tenth of each block random:
    a piece no memory holds whole. Keeps the CRC-32 of what it served."""

    def __init__(self, size: int):
        self.size, self.crc = size, 0

    def read(self, offset: int, length: int) -> bytes:
        block = random.Random(offset).randbytes(length // 10).ljust(length, b"\0")
        self.crc = zlib.crc32(block, self.crc)
        return block


class _Counted:
    """An output that keeps only the count of what it is given."""

    length = 0

    def write(self, data: bytes) -> None:
        self.length += len(data)


def test_a_record_is_deflated_in_blocks_never_held_whole():
    import tracemalloc

    piece, sink = _Generated(96 << 20), _Counted()
    tracemalloc.start()
    try:
        crc, length = Deflated("big.npy", piece.size, piece).write(sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert crc == piece.crc and length == sink.length and 0 < length < piece.size // 5
    assert peak < 3 * COPY_BLOCK  # a block read and its deflated bytes: far below the record's 96 MiB
