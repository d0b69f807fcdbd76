"""The read path: a read across pieces answered in one buffer
(`Content.reply`), bit-exact at every offset through a real mount; and what
a writable mount lets the kernel cache (`Operations.cache_seconds`)."""

import io
import os
import tarfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from ckptfs.fuse.operations import CACHE_SECONDS, EDIT_CACHE_SECONDS
from ckptfs.sources.base import BytesSource
from ckptfs.tree.nodes import Content, Extent


class _NoReadv:
    """A piece with `read` alone (as some computed pieces are)."""

    def __init__(self, data: bytes):
        self.data, self.length = data, len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def test_a_reply_is_the_read_at_every_offset_and_length():
    source = BytesSource(bytes(range(256)) * 4, "s")
    content = Content([b"HEAD", Extent(source, 3, 100), b"", _NoReadv(b"computed"), Extent(source, 900, 20), b"T"])
    whole = content.read(0, content.size)
    assert len(whole) == content.size == 4 + 100 + 8 + 20 + 1
    for offset in range(content.size + 2):
        for length in (0, 1, 3, 5, 97, 104, 113, content.size):
            assert bytes(content.reply(offset, length)) == whole[offset : offset + length], (offset, length)
    assert Content([]).reply(0, 10) == b""


def _served_and_source(mnt, name: str) -> tuple[bytes, int]:
    """A mounted tensor file's bytes read whole, and where its data begins."""
    data = (mnt / name).read_bytes()
    return data, 10 + int.from_bytes(data[8:10], "little")


@pytest.mark.parametrize("kind", ["safetensors", "nemo"])
def test_reads_at_every_offset_across_the_header_are_the_source_bytes(mount, tmp_path, kind):
    rng = np.random.default_rng(0)
    tensors = {"a.w": rng.standard_normal((3, 37), dtype=np.float32), "a.b": np.arange(5, dtype=np.int16),
               "big": rng.standard_normal(70_000, dtype=np.float32)}
    if kind == "safetensors":
        source = tmp_path / "m.safetensors"
        save_file(tensors, str(source))
        prefix = ""
    else:
        weights = io.BytesIO()
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, weights)
        source = tmp_path / "m.nemo"
        with tarfile.open(source, "w:") as tf:
            for member, data in (("./model_config.yaml", b"a: 1\n"), ("./model_weights.ckpt", weights.getvalue())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        prefix = "model_weights.ckpt/"
    for options in (("-o", "ro"), ()):
        mnt = mount(source, *options)
        for name, array in tensors.items():
            path = prefix + name.replace(".", "/") + ".npy"
            whole, start = _served_and_source(mnt, path)
            assert whole[start:] == array.tobytes()
            loaded = np.load(mnt / path)
            assert loaded.dtype == array.dtype and np.array_equal(loaded, array)
            fd = os.open(mnt / path, os.O_RDONLY)
            try:
                for offset in range(0, start + 40):
                    for length in (1, 9, max(1, start - offset + 1), 4096, 1 << 20):
                        assert os.pread(fd, length, offset) == whole[offset : offset + length], (path, offset, length)
                for offset in (len(whole) - 4097, len(whole) - 1, len(whole)):
                    assert os.pread(fd, 1 << 20, max(0, offset)) == whole[max(0, offset) :]
            finally:
                os.close(fd)
    if kind == "safetensors":
        assert {k: v.tobytes() for k, v in load_file(str(source)).items()} == {k: v.tobytes() for k, v in tensors.items()}


def test_a_writable_mount_caches_what_no_edit_changed_and_shows_edits_at_once(mount, tmp_path):
    source = tmp_path / "m.safetensors"
    save_file({"w": np.arange(1000, dtype=np.float32), "b": np.ones(3, dtype=np.float32)}, str(source))
    mnt = mount(source)
    before = (mnt / "w.npy").read_bytes()
    assert os.stat(mnt / "w.npy").st_size == len(before)
    replaced = np.arange(2000, dtype=np.float32) * 2
    np.save(mnt / "w.npy", replaced)  # opened with O_TRUNC, written, a larger size
    assert os.stat(mnt / "w.npy").st_size == (mnt / "w.npy").stat().st_size
    assert np.array_equal(np.load(mnt / "w.npy"), replaced)  # its pages are the written ones, at once
    with open(mnt / "w.npy", "r+b") as f:  # a write in place, through another open
        f.seek(-4, os.SEEK_END)
        f.write(np.float32(-1).tobytes())
    again = np.load(mnt / "w.npy")
    assert again[-1] == -1 and np.array_equal(again[:-1], replaced[:-1])
    assert np.array_equal(np.load(mnt / "b.npy"), np.ones(3, dtype=np.float32))


def test_cache_seconds_are_long_except_for_what_edits_change(tmp_path):
    from ckptfs.fuse.operations import Operations, Ownership
    from ckptfs.tree.nodes import Dir, File

    root = Dir()
    kept, moved, view = root.add("kept", File(Content([b"x"]))), root.add("moved", File(Content([b"y"]), moved=True)), Dir()
    root.add(".view", view)
    view.add("info", File(Content([b"z"])))
    source = tmp_path / "s"
    source.write_bytes(b"")
    read_only = Operations(root, Ownership.of(os.stat(source)))
    writable = Operations(root, Ownership.of(os.stat(source)), editable=object())
    for ops in (read_only, writable):
        ops._listing(1)
    inode = {name: writable._child(1, name.encode()) for name in ("kept", "moved", ".view")}
    writable.read_only.add(inode[".view"])
    assert {name: read_only.cache_seconds(number, read_only.nodes[number]) for name, number in inode.items()} == {
        "kept": CACHE_SECONDS, "moved": CACHE_SECONDS, ".view": CACHE_SECONDS}
    assert {name: writable.cache_seconds(number, writable.nodes[number]) for name, number in inode.items()} == {
        "kept": CACHE_SECONDS, "moved": EDIT_CACHE_SECONDS, ".view": EDIT_CACHE_SECONDS}
    writable.following.add(inode["kept"])
    assert writable.cache_seconds(inode["kept"], kept) == EDIT_CACHE_SECONDS
    assert moved.edited and not kept.edited
