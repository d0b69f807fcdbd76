"""The reads a gzip .nemo's tree build makes, kept beside its seek index
(sources/gzip_reads.py): a second mount builds the same tree inflating
nothing, and a log that is damaged, forged, of another file or version is
never used (the tree is built from the stream and the log written anew)."""

from __future__ import annotations

import gzip
import io
import os
import resource
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptfs.formats import gzindex
from ckptfs.sources import gzip_reads
from ckptfs.sources.base import FileSource
from ckptfs.sources.gzip import GzipSource
from ckptfs.sources.gzip_reads import ReadLog, parse

from .conftest import CKPTFS, force_unmount
from .test_hostile_corpus import TIME_CAP, _read_everything

# ---------------------------------------------------------------- the log


def test_pieces_merge_where_they_touch_and_are_found_whole():
    log = ReadLog(1000, 7)
    log.add(100, b"a" * 10)
    log.add(120, b"b" * 10)
    log.add(110, b"c" * 10)  # fills the gap: one piece of 30
    log.add(125, b"d" * 10)  # overlaps the end and goes on
    log.add(500, b"e")
    assert len(log) == 2 and log.bytes == 36
    assert log.find(100, 35) == b"a" * 10 + b"c" * 10 + b"b" * 5 + b"d" * 10
    assert log.find(99, 2) is None and log.find(130, 10) is None and log.find(500, 1) == b"e" and log.find(0, 1) is None
    again = parse(log.to_bytes(), 1000, 7)
    assert again.find(100, 35) == log.find(100, 35) and len(again) == 2


def test_reads_going_forward_extend_their_piece_and_any_order_is_bounded(monkeypatch):
    data = os.urandom(1 << 16)
    log = ReadLog(1 << 20, 7)
    for offset in range(0, len(data), 100):  # a reader going forward in small reads
        log.add(offset, data[offset:offset + 150])
    assert len(log) == 1 and log.find(0, len(data)) == data and not log.full
    parsed = parse(log.to_bytes(), 1 << 20, 7)
    parsed.add(len(data), b"more")  # a piece a parsed log holds, extended
    assert parsed.find(len(data) - 2, 6) == data[-2:] + b"more"
    monkeypatch.setattr(gzip_reads, "WORK", 1 << 16)
    backwards = ReadLog(1 << 20, 7)
    for offset in range(len(data) - 100, 0, -100):  # each read before the piece: the piece copied anew
        backwards.add(offset, data[offset:offset + 100])
    assert backwards.full  # stopped keeping before the copying grew quadratic


def test_a_log_keeps_at_most_its_bytes(monkeypatch):
    monkeypatch.setattr(gzip_reads, "MAX_BYTES", 100)
    log = ReadLog(1000, 7)
    log.add(0, b"x" * 90)
    log.add(200, b"y" * 20)
    assert log.full and log.find(200, 1) is None


def _forged(size: int, pieces: list[tuple[int, int]], payload: bytes, fingerprint: int = 7,
            version: int = gzip_reads.VERSION, count: int | None = None) -> bytes:
    """A log as a forger would write it: a checksum that matches."""
    count = len(pieces) if count is None else count
    body = gzip_reads.MAGIC + gzip_reads.HEAD.pack(version, size, fingerprint, count)
    body += b"".join(gzip_reads.PIECE.pack(*p) for p in pieces) + payload
    return body + __import__("hashlib").sha256(body).digest()


@pytest.mark.parametrize("blob, says", [
    (b"", "not a read log"),
    (b"PK\3\4" + bytes(100), "not a read log"),
    (ReadLog(1000, 7).to_bytes()[:-1] + b"\0", "checksum"),
    (_forged(1000, [], b"", version=2), "version 2"),
    (_forged(999, [], b""), "another stream"),
    (_forged(1000, [], b"", fingerprint=8), "another stream"),
    (_forged(1000, [], b"", count=(1 << 32) - 1), "claiming"),
    (_forged(1000, [(10, 5), (12, 5)], b"x" * 10), "out of order"),
    (_forged(1000, [(10, 5), (15, 5)], b"x" * 10), "out of order"),  # touching: a writer merges them
    (_forged(1000, [(998, 5)], b"x" * 5), "past the stream's end"),
    (_forged(1000, [(10, 0)], b""), "empty"),
    (_forged(1000, [(10, 5)], b"x" * 4), "do not fill"),
    (_forged(1000, [(10, 5)], b"x" * 6), "do not fill"),
    (_forged(1000, [(10, 0xFFFFFFFF)], b"x" * 5), "past the stream's end"),
])
def test_a_damaged_or_foreign_log_is_refused(blob, says):
    with pytest.raises(ValueError, match=says):
        parse(blob, 1000, 7)


# ---------------------------------------------------------------- a gzip .nemo


def _gzip_nemo(path: Path) -> dict[str, torch.Tensor]:
    """A gzip .nemo whose torch zip spreads its records over several MiB spans."""
    torch.manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(64 << 10) for i in range(24)}  # 256 KiB each
    weights = io.BytesIO()
    torch.save(state, weights)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w:") as tf:
        for name, data in (("./model_config.yaml", b"lr: 1\n"), ("./model_weights.ckpt", weights.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(plain.getvalue(), compresslevel=1, mtime=0))
    return state


def _open(path: Path, cache: Path):
    return gzindex.open_gzip_tar(FileSource(str(path)), os.stat(path), str(cache))


def _reads_file(cache: Path) -> Path:
    (found,) = (cache / "gzindex").glob("*.reads")
    return found


def test_a_second_open_builds_the_tree_inflating_nothing(tmp_path, monkeypatch):
    path, cache = tmp_path / "old.nemo", tmp_path / "cache"
    _gzip_nemo(path)
    first = _open(path, cache)
    kept = _reads_file(cache)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    written = kept.read_bytes()

    def no_inflating(self, number):
        raise AssertionError(f"span {number} inflated")

    monkeypatch.setattr(GzipSource, "_inflate", no_inflating)
    second = _open(path, cache)
    paths = [t.path for t in first.tensors]
    assert [t.path for t in second.tensors] == paths and len(paths) == 24
    assert kept.read_bytes() == written  # all of it served from the log: not written again
    tensor = second.root.children["model_weights.ckpt"].children["layer3"].children["weight.npy"]
    with pytest.raises(AssertionError, match="inflated"):  # once built, every read inflates and checks its span
        tensor.content.read(tensor.content.size - 8, 8)


def test_a_log_of_another_file_or_damaged_is_ignored_and_written_anew(tmp_path, monkeypatch):
    path, cache = tmp_path / "old.nemo", tmp_path / "cache"
    _gzip_nemo(path)
    _open(path, cache)
    kept = _reads_file(cache)
    good = kept.read_bytes()
    for bad in (good[:-40], good[:200] + bytes([good[200] ^ 1]) + good[201:], b"junk"):
        kept.write_bytes(bad)
        _open(path, cache)
        assert kept.read_bytes() == good


def _cap_memory() -> None:
    """The hostile corpus's cap, widened: rapidgzip's threads reserve close
    to its 2 GiB of address space on this machine, and crash at it (the
    code before the log too: docs/benchmarks.md, "Issue 31: gzip")."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _mount_twice(tmp_path: Path, plant) -> tuple[dict, dict, dict]:
    """Mount a gzip .nemo, plant a log, mount again under the hostile
    corpus's time cap and a memory cap: what each mount shows, and the EIO files of the second."""
    path, cache = tmp_path / "old.nemo", tmp_path / "cache"
    _gzip_nemo(path)
    shown = []
    for round_ in range(2):
        if round_:
            plant(_reads_file(cache), path)
        mnt = tmp_path / f"mnt{round_}"
        try:
            mnt.mkdir()
            done = subprocess.run([*CKPTFS, "mount", str(path), str(mnt), "-o", "ro", "--cache-dir", str(cache)],
                                  capture_output=True, text=True, timeout=TIME_CAP, preexec_fn=_cap_memory)
            assert done.returncode == 0, done.stderr
            failed = _read_everything(mnt)
            files = {str(p.relative_to(mnt)): p.read_bytes() for p in mnt.rglob("*.npy")}
            shown.append((files, failed))
        finally:
            force_unmount(mnt)
    return shown[0][0], shown[1][0], shown[1][1]


def _huge_claims(kept: Path, source: Path) -> None:
    """A log that claims a piece per byte of a gigabyte stream, its checksum forged."""
    blob = kept.read_bytes()
    head = len(gzip_reads.MAGIC)
    _, size, fingerprint, _ = gzip_reads.HEAD.unpack_from(blob, head)
    kept.write_bytes(_forged(size, [], b"", fingerprint=fingerprint, count=1 << 30))


def _from_another_file(kept: Path, source: Path) -> None:
    """The log of another .nemo of the same stream size, its checksum forged
    to match, and a mount's worth of junk in its pieces."""
    blob = kept.read_bytes()
    _, size, _, count = gzip_reads.HEAD.unpack_from(blob, len(gzip_reads.MAGIC))
    kept.write_bytes(_forged(size, [(0, 512)], os.urandom(512), fingerprint=12345))


@pytest.mark.parametrize("plant", [_huge_claims, _from_another_file])
def test_a_hostile_log_is_never_used(tmp_path, plant):
    first, second, failed = _mount_twice(tmp_path, plant)
    assert not failed and second == first and len(first) == 24
    assert struct.unpack_from("<I", (tmp_path / "cache" / "gzindex").glob("*.reads").__next__().read_bytes(),
                              len(gzip_reads.MAGIC))[0] == gzip_reads.VERSION


def test_the_mount_shows_the_same_tree_from_the_log(tmp_path):
    first, second, failed = _mount_twice(tmp_path, lambda kept, source: None)
    assert not failed and second == first
    state = torch.load(io.BytesIO(_weights(tmp_path / "old.nemo")), weights_only=True)
    assert np.array_equal(np.load(io.BytesIO(second["model_weights.ckpt/layer5/weight.npy"])), state["layer5.weight"].numpy())


def _weights(path: Path) -> bytes:
    with tarfile.open(path) as tf:
        return tf.extractfile("./model_weights.ckpt").read()
