"""Hostile TensorFlow tensor bundles, laid out by tests/tf_bundle_writer.py:
an index whose footer points past its end, whose block claims four billion
restart points or is stored in snappy, more entries than max_members;
entries whose shard is past the bundle's, whose bytes run past their
shard, whose size is not their shape's, whose shape holds 2**80 elements,
whose key climbs out with `../`; a data shard that is a link leading out
of the folder, a bundle claiming two billion shards. The table as a whole
is refused in one line; each entry breaks only itself (left out, a note
naming it)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ckptfs.formats.protowire import VARINT, encode_tag, encode_varint

from ..tf_bundle_writer import Entry, block, entries_for, footer, header, table_of_blocks, write
from . import Case

GOOD = np.arange(4, dtype=np.float32)


def _bundle(tmp_path: Path, extra: dict[str, Entry], num_shards: int | None = None) -> Path:
    """A bundle of one good tensor, `good`, and the entries `extra` (pointing anywhere)."""
    entries, shards = entries_for({"good": GOOD})
    return write(tmp_path / "b", {**entries, **extra}, shards, num_shards)


def _index(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "b.index"
    path.write_bytes(data)
    (tmp_path / "b.data-00000-of-00001").write_bytes(GOOD.tobytes())
    return path


def _handle_past_the_end(tmp_path: Path) -> Path:
    data = table_of_blocks([block([(b"", header(1))])], [b""])
    return _index(tmp_path, data[:-48] + footer((0, 1 << 40), (1 << 50, 16)))


def _huge_restart_count(tmp_path: Path) -> Path:
    bad = block([(b"", header(1))])[:-4] + struct.pack("<I", 0xFFFFFFFF)
    return _index(tmp_path, table_of_blocks([bad], [b""]))


def _snappy(tmp_path: Path) -> Path:
    return _index(tmp_path, table_of_blocks([block([(b"", header(1))])], [b""], kind=1))


def _unsorted(tmp_path: Path) -> Path:
    items = [(b"", header(1)), (b"b", Entry(1, (1,), 0, 0, 4).encode()), (b"a", Entry(1, (1,), 0, 0, 4).encode())]
    return _index(tmp_path, table_of_blocks([block(items)], [b"b"]))


def _big_endian(tmp_path: Path) -> Path:
    big = header(1) + encode_tag(2, VARINT) + encode_varint(1)  # endianness BIG
    return _index(tmp_path, table_of_blocks([block([(b"", big)])], [b""]))


def _many_entries(tmp_path: Path) -> Path:
    return write(tmp_path / "b", {f"t{n:03d}": Entry(1, (1,), 0, 0, 4) for n in range(100)}, [GOOD.tobytes()])


def _shard_link_outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret"
    secret.write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    (tmp_path / "in").mkdir()
    index = write(tmp_path / "in" / "b", {"w": Entry(4, (64,), 0, 0, 64)}, [], num_shards=1)
    os.symlink(secret, tmp_path / "in" / "b.data-00000-of-00001")
    return index


def _climbing_key(mnt: Path, source: Path) -> None:
    names = [os.getxattr(p, "user.ckptfs.name").decode() for p in mnt.rglob("*.npy")]
    assert sorted(names) == ["../../evil", "good"]
    assert all(mnt in p.resolve().parents for p in mnt.rglob("*"))
    assert not (source.parent.parent / "evil.npy").exists()


def _good_is_served(mnt: Path, source: Path) -> None:
    assert np.load(mnt / "good.npy").tobytes() == GOOD.tobytes()


CASES = {
    "tf index whose footer points past its end": Case(_handle_past_the_end, "refused", "past the end of the table"),
    "tf index block of 4 billion restart points": Case(_huge_restart_count, "refused", "restart points"),
    "tf index block in snappy": Case(_snappy, "refused", "snappy"),
    "tf bundle written big-endian": Case(_big_endian, "refused", "big-endian"),
    "tf index of unsorted keys": Case(_unsorted, "refused", "not sorted"),
    "tf index of more entries than max_members": Case(_many_entries, "refused", "max_members",
                                                      options=("-o", "max_members=50")),
    "tf entry whose shard is past the bundle's": Case(
        lambda p: _bundle(p, {"far": Entry(1, (4,), 7, 0, 16)}), "served", "is past the bundle",
        check=_good_is_served),
    "tf entry whose bytes run past its shard": Case(
        lambda p: _bundle(p, {"long": Entry(1, (1 << 20,), 0, 8, 4 << 20)}), "served", "lie past the end of",
        check=_good_is_served),
    "tf entry whose size is not its shape's": Case(
        lambda p: _bundle(p, {"short": Entry(1, (4, 4), 0, 0, 16)}), "served", "its entry gives 16 bytes", check=_good_is_served),
    "tf entry of 2**80 elements": Case(
        lambda p: _bundle(p, {"vast": Entry(1, (1 << 40, 1 << 40), 0, 0, 16)}), "served", "more than 2**63",
        check=_good_is_served),
    "tf entry whose key climbs out": Case(
        lambda p: _bundle(p, {"../../evil": entries_for({"x": GOOD})[0]["x"]}), "served", check=_climbing_key),
    "tf data shard that is a link leading out": Case(_shard_link_outside, "served", "is missing (or a link"),
    "tf bundle of two billion shards": Case(
        lambda p: write(p / "b", {"w": entries_for({"w": GOOD})[0]["w"]}, [], num_shards=(1 << 31) - 1), "served",
        "b.data-00000-of-2147483647 is missing"),
    "tf string tensor of 2**40 strings in 16 bytes": Case(
        lambda p: _bundle(p, {"words": Entry(7, (1 << 40,), 0, 0, 16)}), "served", "words is left out",
        check=_good_is_served),
}
