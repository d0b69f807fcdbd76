"""Hostile inputs of the formats' own: npz records that np.load reads
otherwise than a first guess would, a gzip .nemo damaged where only its CRC
can tell, GGUF metadata that renders to gigabytes, archives of a million
members."""

from __future__ import annotations

import errno
import gzip
import io
import os
import random
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ckptfs.formats import gzindex, open_checkpoint
from ckptfs.sources.cachedir import default_cache_dir

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


def gzip_nemo(path: Path, seed: int = 0) -> bytes:
    """A gzip .nemo of a config and 4 MiB of random bytes (which gzip keeps
    in stored blocks, so 64 bytes flipped there change what it inflates to
    and not how much: only the CRC can tell). Returns the tar's bytes."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w:") as tf:
        for name, data in (("./model_config.yaml", b"lr: 1\n"), ("./weights.bin", random.Random(seed).randbytes(4 << 20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(plain.getvalue(), mtime=0))
    return plain.getvalue()


def flip_in_place(path: Path, count: int = 64) -> None:
    """`count` bytes in the middle of the file flipped where they are, the
    file's times put back: its device, inode, size and mtime stay."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        damaged = bytes(b ^ 0xFF for b in f.read(count))
        f.seek(st.st_size // 2)
        f.write(damaged)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def damaged_stretch(path: Path, plain: bytes) -> tuple[int, int]:
    """Where the damaged file inflates to other bytes than `plain`
    (inflated without a CRC check): [first, last]."""
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(path.read_bytes()[10:])  # past gzip's 10-byte header
    assert len(inflated) == len(plain), "the damage must keep the length"
    differ = [i for i in range(len(plain)) if inflated[i] != plain[i]]
    return differ[0], differ[-1]


def _gzip_nemo_damaged_inside(tmp_path: Path) -> Path:
    path = tmp_path / "damaged.nemo"
    gzip_nemo(path)
    flip_in_place(path)
    return path


def _gzip_nemo_damaged_after_indexing(tmp_path: Path) -> Path:
    """Indexed by a first mount's reading (in the cache a mount uses by
    default), then damaged in place: the cached index still matches it."""
    path = tmp_path / "rotted.nemo"
    plain = gzip_nemo(path)
    open_checkpoint(str(path), default_cache_dir())
    flip_in_place(path)
    (tmp_path / "rotted.tar").write_bytes(plain)
    return path


def _never_serves_other_bytes(mnt: Path, source: Path) -> None:
    plain = (source.parent / "rotted.tar").read_bytes()
    first, last = damaged_stretch(source, plain)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        start = tf.getmember("./weights.bin").offset_data
    fd = os.open(mnt / "weights.bin", os.O_RDONLY)
    try:
        for offset in (first - start - 1000, first - start, (first + last) // 2 - start - (64 << 10)):
            try:
                got = os.pread(fd, 128 << 10, offset)
            except OSError as e:
                assert e.errno == errno.EIO and offset >= first - start - 4096, (offset, e)
            else:  # a short read of what lies before the damaged span, never a byte of it
                assert start + offset + len(got) <= first, f"{len(got)} bytes read at {offset}, past the damage"
                assert got == plain[start + offset:start + offset + len(got)]
        assert os.pread(fd, 4096, 0) == plain[start:start + 4096]  # a span far from the damage still reads
    finally:
        os.close(fd)
        stem = os.path.join(default_cache_dir(), "gzindex", gzindex._cache_key(os.stat(source)))
        for suffix in (".json", ".gzidx"):
            Path(stem + suffix).unlink(missing_ok=True)


def _gguf_of_bool_arrays(tmp_path: Path) -> Path:
    """90 arrays of a million booleans: a 90 MB header, under max_header_bytes,
    that would render to gigabytes of YAML."""
    path = tmp_path / "bools.gguf"
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 90))
        for i in range(90):
            key = f"bools.{i}".encode()
            f.write(struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 7, 1_000_000) + b"\1\0" * 500_000)
    return path


def empty_members_tar(path: Path, count: int) -> Path:
    """A ustar archive of `count` empty files (a 512-byte header each), made
    from one header with its name and checksum changed: tarfile would take
    a minute for a million."""
    template = bytearray(tarfile.TarInfo("x" * 8).tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8
    base = sum(template) - sum(b"x" * 8)
    with open(path, "wb") as f:
        block = bytearray()
        for i in range(count):
            name = b"m%07d" % i
            template[0:8] = name
            template[148:156] = b"%06o\0 " % (base + sum(name))
            block += template
            if len(block) >= 1 << 22:
                f.write(block)
                block.clear()
        f.write(block + bytes(1024))
    return path


def empty_records_zip(path: Path, count: int) -> Path:
    """A zip of `count` empty stored `.npy` records, written directly."""
    local, central = bytearray(), bytearray()
    for i in range(count):
        name = b"r%07d.npy" % i
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0, 0,
                               0, 0, 0, len(local)) + name
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0) + name
    count16 = min(count, 0xFFFF)
    path.write_bytes(local + central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count16, count16,
                                                   len(central), len(local), 0))
    return path


def _gguf_of_a_million_tensors(tmp_path: Path) -> Path:
    """A million F32 tensors of 8 values (40 MB of tensor infos): each would
    be a folder of two files."""
    path = tmp_path / "tensors.gguf"
    infos = b"".join(struct.pack("<Q", 8) + b"t%07d" % i + struct.pack("<IQIQ", 1, 8, 0, 32 * i)
                     for i in range(1_000_000))
    head = b"GGUF" + struct.pack("<IQQ", 3, 1_000_000, 0) + infos
    path.write_bytes(head + bytes(-len(head) % 32 + 32_000_000))
    return path


def _gguf_of_millions_of_keys(tmp_path: Path) -> Path:
    """4.5 million u8 keys in a 94 MB header: each would be a line of metadata.yaml."""
    path = tmp_path / "keys.gguf"
    keys = b"".join(struct.pack("<Q", 8) + b"k%07d" % i + b"\0\0\0\0\1" for i in range(4_500_000))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 4_500_000) + keys)
    return path


CASES = {
    "an npz with two records of one name": Case(_npz_of_a_duplicate_record, "served", "np.load reads that one",
                                                check=_serves_the_last_record),
    "npz records named /abs, x//y, ../../evil and under a file": Case(_npz_of_bad_names, "served", "left out",
                                                                        check=_each_bad_name_breaks_only_itself),
    "a gzip .nemo with 64 bytes flipped that only its CRC tells": Case(_gzip_nemo_damaged_inside, "refused",
                                                                       "gzip stream is truncated or corrupt"),
    "a gzip .nemo damaged after a first mount indexed it": Case(_gzip_nemo_damaged_after_indexing, "served",
                                                                check=_never_serves_other_bytes),
    "GGUF metadata of 90 arrays of a million booleans": Case(_gguf_of_bool_arrays, "served",
                                                             "past the max_yaml_values this file shows"),
    "a GGUF of a million tensors": Case(_gguf_of_a_million_tensors, "refused", "more than max_members"),
    "a GGUF of 4.5 million keys": Case(_gguf_of_millions_of_keys, "refused", "more than max_yaml_values"),
    "a .nemo of a million empty members": Case(lambda tmp: empty_members_tar(tmp / "many.nemo", 1_000_000),
                                               "refused", "more than 200000 members"),
    "an .npz of a million empty records": Case(lambda tmp: empty_records_zip(tmp / "many.npz", 1_000_000),
                                               "refused", "more than 200000 records"),
}
