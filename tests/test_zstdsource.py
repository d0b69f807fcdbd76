"""ZstdSource: random reads of a zstd stream against the bytes it compresses."""

import os
import random

import pytest
import zstandard

from ckptfs.errors import FormatError
from ckptfs.sources.base import Source
from ckptfs.sources.zstd import ZstdSource


class BytesSource(Source):
    def __init__(self, data: bytes):
        self.data, self.path, self.size = data, "mem", len(data)

    def pread(self, offset, length):
        return self.data[offset : offset + length]


@pytest.fixture
def small_steps(monkeypatch):
    """Tiny window and steps, so a few KiB exercise restarts and trimming."""
    monkeypatch.setattr(ZstdSource, "WINDOW", 1000)
    monkeypatch.setattr(ZstdSource, "IN_STEP", 97)
    monkeypatch.setattr(ZstdSource, "OUT_STEP", 333)


def test_random_reads_match_the_plain_bytes(small_steps):
    plain = os.urandom(3000) + bytes(20000) + os.urandom(5000)
    source = ZstdSource(BytesSource(zstandard.ZstdCompressor().compress(plain)), "x")
    rng = random.Random(1)
    for _ in range(300):
        off, n = rng.randrange(len(plain) + 10), rng.randrange(1, 3000)
        assert source.pread(off, n) == plain[off : off + n]
    assert source.size == len(plain)
    assert source.pread(0, len(plain) + 5) == plain


def test_streamed_frames_without_a_size_and_concatenated_frames(small_steps):
    import io

    plain = b"".join(i.to_bytes(4, "little") for i in range(4000))
    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as w:  # how torch writes: size not recorded
        w.write(plain[:9000])
    compressed = buf.getvalue() + zstandard.ZstdCompressor().compress(plain[9000:])
    source = ZstdSource(BytesSource(compressed), "x")
    assert source.size == len(plain)
    assert source.pread(8990, 20) == plain[8990:9010]
    assert source.pread(0, len(plain)) == plain


def test_truncated_and_garbage_streams_are_format_errors():
    compressed = zstandard.ZstdCompressor().compress(os.urandom(50000))
    with pytest.raises(FormatError, match="ends early"):
        ZstdSource(BytesSource(compressed[:-100]), "x").pread(0, 60000)
    with pytest.raises(FormatError, match="not a valid zstd stream"):
        ZstdSource(BytesSource(b"\x28\xb5\x2f\xfdgarbage-garbage"), "x").pread(0, 10)


def test_a_failed_frame_checksum_returns_no_bytes_of_that_read():
    plain = os.urandom(20000)
    compressed = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(plain))
    compressed[-2] ^= 1  # the checksum at the end of the frame
    with pytest.raises(FormatError, match="checksum"):
        ZstdSource(BytesSource(bytes(compressed)), "x").pread(0, len(plain))
    intact = bytes(zstandard.ZstdCompressor(write_checksum=True).compress(plain))
    assert ZstdSource(BytesSource(intact), "x").pread(0, len(plain)) == plain
