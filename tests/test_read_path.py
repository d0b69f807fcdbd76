"""The read path: a read across pieces answered in one buffer
(`Content.reply`), bit-exact at every offset through a real mount."""

import io
import os
import tarfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

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
