"""The CRC-32 of an edited file taken as it is written (pack/crc.py), which a
repack puts in a zip record without reading the file again: equal to
zlib.crc32 of the bytes, whatever order they were written in, and unknown
(so read) where it cannot be."""

import os
import random
import zipfile
import zlib

import numpy as np
import pytest
import torch

from ckptfs.formats.torchzip import _content_crc
from ckptfs.pack import crc

from .conftest import umount


def test_combine_and_suffix_match_zlib():
    rng = random.Random(1)
    for length_a, length_b in [(0, 0), (0, 5), (5, 0), (1, 1), (1000, 3), (70_000, 131_072)] + [
            (rng.randrange(5000), rng.randrange(5000)) for _ in range(50)]:
        a, b = rng.randbytes(length_a), rng.randbytes(length_b)
        assert crc.combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
        assert crc.suffix(zlib.crc32(a + b), zlib.crc32(a), len(b)) == zlib.crc32(b)


def _written(pieces):
    running = crc.RunningCrc()
    for offset, data in pieces:
        running.wrote(offset, data)
    return running


def test_running_crc_in_any_order_of_disjoint_writes():
    rng = random.Random(2)
    data = rng.randbytes(200_000)
    cuts = sorted(rng.sample(range(1, len(data)), 30))
    pieces = [(a, data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)])]
    for _ in range(5):
        rng.shuffle(pieces)
        running = _written(pieces)
        assert (running.end, running.crc) == (len(data), zlib.crc32(data))


def test_rewrites_and_truncations_make_it_unknown_or_start_again():
    data = bytes(range(256)) * 64
    assert _written([(0, data), (10, b"x")]).end is None  # bytes taken written again
    assert _written([(100, data[100:200]), (150, b"y"), (0, data[:100])]).end is None  # overlaps a piece kept aside
    running = _written([(0, data)])
    running.truncated(100)
    assert running.end is None
    running.truncated(0)  # O_TRUNC: everything before is gone
    running.wrote(0, b"abc")
    assert (running.end, running.crc) == (3, zlib.crc32(b"abc"))
    running.truncated(10)  # longer: the bytes taken stay
    assert running.end == 3
    assert running.of_range(0, 10, 10, None) is None  # but the zeros after them are not taken
    running = _written([(0, data[:10]), (20, data[20:30])])
    running.truncated(25)  # the piece kept aside is cut
    running.wrote(10, data[10:20])
    assert running.end == 20
    lost = crc.RunningCrc(known=False)  # a data file an earlier mount wrote
    lost.wrote(0, b"abc")
    assert lost.of_range(0, 3, 3, None) is None
    many = _written([(2 * i + 1, b"z") for i in range(crc.RunningCrc.MAX_AHEAD + 1)])
    assert many.end is None


def test_a_range_to_the_end_from_the_whole():
    data = os.urandom(10_000)
    running = _written([(0, data)])
    read = lambda offset, length: data[offset:offset + length]  # noqa: E731
    assert running.of_range(128, len(data), len(data), read) == zlib.crc32(data[128:])
    assert running.of_range(0, len(data), len(data), read) == zlib.crc32(data)
    assert running.of_range(128, 5000, len(data), read) is None  # not to the end: read instead


class _Known:
    """An edited file whose CRC is known: never read for it."""

    size = 100

    def crc32(self, offset, length):
        return zlib.crc32(b"\1" * length)

    def read(self, offset, length):
        raise AssertionError("read again for its CRC")


def test_a_known_crc_is_combined_not_read():
    assert _content_crc(_Known(), 0, 100, zlib.crc32(b"head")) == zlib.crc32(b"head" + b"\1" * 100)


# ---------------------------------------------------------------- through FUSE


@pytest.fixture
def weights_pt(tmp_path):
    torch.manual_seed(0)
    state = {"big": torch.randn(512, 1024), "small": torch.randn(7)}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    return path, state


def _check(path, expected: dict) -> None:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every record's CRC matches its bytes
    for loaded in (torch.load(path, weights_only=True), torch.load(path, weights_only=True, mmap=True)):
        assert list(loaded) == list(expected)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor), name


def _npy_bytes(array) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


@pytest.mark.parametrize("how", ["in_order", "out_of_order", "truncated_then_rewritten", "rewritten_in_place",
                                 "renamed_while_written"])
def test_a_replaced_tensor_repacks_with_the_right_crc(mount, weights_pt, how):
    path, state = weights_pt
    new = torch.arange(512 * 1024, dtype=torch.float32).reshape(512, 1024)
    data = _npy_bytes(new.numpy())
    half = len(data) // 2
    mnt = mount(path)
    target = mnt / "big.npy"
    if how == "in_order":
        np.save(target, new.numpy())
    elif how == "out_of_order":  # the second half first, then the first, in pieces
        with open(target, "r+b") as f:
            os.pwrite(f.fileno(), data[half:], half)
            for start in range(0, half, 100_000):
                os.pwrite(f.fileno(), data[start:min(half, start + 100_000)], start)
    elif how == "truncated_then_rewritten":
        with open(target, "r+b") as f:
            os.pwrite(f.fileno(), data[:half], 0)
            os.ftruncate(f.fileno(), 1000)  # below what was taken: unknown, read at repack
            os.pwrite(f.fileno(), data[1000:], 1000)
            os.pwrite(f.fileno(), data[:1000], 0)
    elif how == "rewritten_in_place":  # bytes written twice, the second time different
        with open(target, "r+b") as f:
            f.write(data)
            os.pwrite(f.fileno(), b"\0" * 64, half)
            os.pwrite(f.fileno(), data[half:half + 64], half)
    else:  # written under a temporary name, renamed over the tensor, then finished
        staging = mnt / "tmpabcdefgh.npy"
        with open(staging, "wb") as f:
            f.write(data[:half])
            f.flush()
            os.rename(staging, target)
            f.write(data[half:])
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    _check(path, {"big": new, "small": state["small"]})


@pytest.fixture
def other_file_system(tmp_path):
    """A folder on tmpfs (/dev/shm), beside tmp_path on the disk: what a
    remote source's overlay in ~/.cache and an --output elsewhere can be."""
    import shutil
    import tempfile

    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm and tmp_path are one file system here: the test needs two")
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="ckptfs-test-")
    yield folder
    shutil.rmtree(folder)


def test_bytes_on_another_file_system_are_read_and_written(tmp_path, other_file_system):
    """copy_file_range cannot copy across file systems (EXDEV): an edit kept
    in an overlay there, and a source file there, are copied by reading."""
    from ckptfs.pack.output import Output
    from ckptfs.sources.base import FileSource
    from ckptfs.tree.nodes import Dir
    from ckptfs.write.editable import EditableTree
    from ckptfs.write.overlay import Overlay

    source_path = os.path.join(other_file_system, "model.bin")
    with open(source_path, "wb") as f:
        f.write(b"source bytes " * 1000)
    overlay = Overlay.create(source_path)
    try:
        tree = EditableTree(Dir(), overlay)
        content = tree.create("t.npy").content
        tree.write(content, 0, b"edited bytes" * 1000)
        out_path = tmp_path / "out.bin"
        fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            output = Output(fd)
            output.copy_content(content)
            output.copy(FileSource(source_path), 7, 5000)
        finally:
            os.close(fd)
        assert out_path.read_bytes() == b"edited bytes" * 1000 + (b"source bytes " * 1000)[7:5007]
    finally:
        overlay.remove()
