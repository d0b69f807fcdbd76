"""`.nemo` tars, plain and gzip: the NeMo-written fixture and generated tars,
against Python's tarfile, byte for byte."""

import concurrent.futures
import errno
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import rapidgzip
import yaml

from ckptfs.formats import gzindex
from ckptfs.sources.base import FileSource
from ckptfs.sources.gzip import SPAN, Inflated, SpanSums

from .conftest import FIXTURES, is_mounted, run_ckptfs, umount, write_refused
from .hostile.formats import damaged_stretch, empty_members_tar, flip_in_place, gzip_nemo

TINY = FIXTURES / "nemo" / "tiny.nemo"


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {
            m.name.removeprefix("./"): tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()
        }


def test_nemo_fixture_members_byte_for_byte(mount):
    mnt = Path(mount(TINY))
    expected = _members(TINY)
    assert {"model_config.yaml", "model_weights.ckpt"} <= set(expected)
    listed = sorted(p.name for p in mnt.iterdir())
    assert listed == sorted([".ckptfs", *expected])
    for name, data in expected.items():
        assert (mnt / ".ckptfs" / "raw" / name).read_bytes() == data
        if name != "model_weights.ckpt":  # a checkpoint inside: expanded (test_torch_zip.py)
            assert (mnt / name).read_bytes() == data
    assert (mnt / "model_weights.ckpt").is_dir()
    with tarfile.open(TINY) as tf:
        for m in tf.getmembers():
            if m.isfile():
                raw = mnt / ".ckptfs" / "raw" / m.name.removeprefix("./")
                st = os.stat(raw)
                assert abs(st.st_mtime - m.mtime) < 1e-6 and st.st_size == m.size
                start, end = map(int, os.getxattr(raw, "user.ckptfs.range").split(b"-"))
                assert (start, end) == (m.offset_data, m.offset_data + m.size)


def test_nemo_fixture_config_and_artifact(mount):
    mnt = Path(mount(TINY))
    config = yaml.safe_load((mnt / "model_config.yaml").read_text())
    artifacts = [n for n in os.listdir(mnt) if n.endswith("_vocab.txt")]
    assert len(artifacts) == 1 and len(artifacts[0]) == 32 + len("_vocab.txt")
    assert f"nemo:{artifacts[0]}" in yaml.safe_dump(config)
    info = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())
    assert info["format"] == "nemo (tar)" and info["tensors"] == 8  # inside model_weights.ckpt


def _rich_tar(path: Path, mode: str) -> dict[str, bytes]:
    """Directories, PAX long names, a symlink, a hard link, several sizes."""
    rng = random.Random(7)
    contents = {
        "model_config.yaml": b"precision: bf16\nlr: 1.0e-4\n",
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(1000)),
        "tokenizer/" + "long_name_" * 20 + ".model": rng.randbytes(3000),
        "weights/blob.bin": rng.randbytes(3 * 1024 * 1024 + 77),
        "empty.txt": b"",
        "ünï code.txt": "ü".encode(),
    }
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        root = tarfile.TarInfo("./")
        root.type, root.mtime = tarfile.DIRTYPE, 1_600_000_000
        tf.addfile(root)
        for d in ("./tokenizer", "./weights", "./empty_dir"):
            info = tarfile.TarInfo(d)
            info.type, info.mtime = tarfile.DIRTYPE, 1_600_000_100
            tf.addfile(info)
        for name, data in contents.items():
            info = tarfile.TarInfo("./" + name)
            info.size, info.mtime = len(data), 1_600_000_200
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./latest.yaml")
        link.type, link.linkname = tarfile.SYMTYPE, "model_config.yaml"
        tf.addfile(link)
        hard = tarfile.TarInfo("./config_copy.yaml")
        hard.type, hard.linkname = tarfile.LNKTYPE, "./model_config.yaml"
        tf.addfile(hard)
    return contents


@pytest.mark.parametrize("mode", ["w:", "w:gz"])
def test_generated_tar_members_dirs_and_links(mount, tmp_path, mode):
    path = tmp_path / "model.nemo"
    contents = _rich_tar(path, mode)
    mnt = Path(mount(path))
    for name, data in contents.items():
        assert (mnt / name).read_bytes() == data, name
    assert (mnt / "empty_dir").is_dir() and not os.listdir(mnt / "empty_dir")
    assert os.stat(mnt / "tokenizer").st_mtime == 1_600_000_100
    assert os.readlink(mnt / "latest.yaml") == "model_config.yaml"
    assert (mnt / "latest.yaml").read_bytes() == contents["model_config.yaml"]
    assert (mnt / "config_copy.yaml").read_bytes() == contents["model_config.yaml"]
    expected_format = "nemo (tar.gz)" if mode == "w:gz" else "nemo (tar)"
    assert yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["format"] == expected_format


@pytest.mark.parametrize("mode", ["w:", "w:gz"])
def test_random_reads_across_member_and_block_boundaries(mount, tmp_path, mode):
    path = tmp_path / "model.nemo"
    contents = _rich_tar(path, mode)
    mnt = Path(mount(path))
    rng = random.Random(3)
    for name in ("weights/blob.bin", "tokenizer/vocab.txt"):
        data = contents[name]
        fd = os.open(mnt / name, os.O_RDONLY)
        try:
            edges = [0, 1, 511, 512, 513, 4095, 4096, 131071, 131072, (1 << 20) - 1, 1 << 20, len(data) - 1, len(data)]
            for off in [e for e in edges if e <= len(data) + 1] + [rng.randrange(len(data)) for _ in range(100)]:
                for length in (1, 511, 513, 70_000, 1 << 20):
                    assert os.pread(fd, length, off) == data[off : off + length], (name, off, length)
            assert os.pread(fd, 100, len(data) + 5) == b""
        finally:
            os.close(fd)


def test_gzip_seek_index_is_kept_and_reused(mount, tmp_path):
    path = tmp_path / "old.nemo"
    contents = _rich_tar(path, "w:gz")
    mount(path)
    index_dir = mount.cache_dir / "gzindex"
    cached = sorted(index_dir.iterdir())
    assert [p.suffix for p in cached] == [".gzidx", ".json", ".reads"]
    # Mark the cached member list: a second mount that shows the mark did not re-read the archive.
    doc = json.loads(cached[1].read_text())
    doc["notes"] = ["served from the cached index"]
    cached[1].write_text(json.dumps(doc))
    mnt = Path(mount(path))
    assert "served from the cached index" in (mnt / ".ckptfs" / "info.yaml").read_text()
    assert (mnt / "weights" / "blob.bin").read_bytes() == contents["weights/blob.bin"]
    # A changed source (new mtime) is not served from the old index.
    os.utime(path, ns=(1, 1))
    mnt = Path(mount(path))
    assert "served from the cached index" not in (mnt / ".ckptfs" / "info.yaml").read_text()


def test_diff_of_two_mounts(mount, tmp_path):
    a, b = tmp_path / "a.nemo", tmp_path / "b.nemo"
    _rich_tar(a, "w:")
    _rich_tar(b, "w:")
    with tarfile.open(b, "a") as tf:  # a later member of the same name wins, as in tar
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"lr: 2\n"))
    same1, same2, other = mount(a), mount(a), mount(b)
    same = subprocess.run(["diff", "-r", same1, same2], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and same.stdout == ""
    differ = subprocess.run(["diff", "-rq", same1, other], capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1
    changed = [line for line in differ.stdout.splitlines() if "differ" in line]
    assert any("model_config.yaml" in line for line in changed), differ.stdout
    assert not any("blob.bin" in line or "vocab.txt" in line for line in changed)


def test_many_concurrent_readers(mount, tmp_path):
    path = tmp_path / "model.nemo"
    contents = _rich_tar(path, "w:gz")
    mnt = Path(mount(path))
    data = contents["weights/blob.bin"]

    def reader(seed: int) -> int:
        rng = random.Random(seed)
        with open(mnt / "weights" / "blob.bin", "rb", buffering=0) as f:
            for _ in range(30):
                off, length = rng.randrange(len(data)), rng.randrange(1, 300_000)
                f.seek(off)
                assert f.read(length) == data[off : off + length]
        return seed

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(reader, range(32))) == list(range(32))
    assert (mnt / "model_config.yaml").read_bytes() == contents["model_config.yaml"]


def test_member_named_like_the_metadata_view_is_escaped(mount, tmp_path):
    path = tmp_path / "x.nemo"
    with tarfile.open(path, "w:") as tf:
        info = tarfile.TarInfo("./.ckptfs")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    mnt = Path(mount(path))
    assert (mnt / "%2Eckptfs").read_bytes() == b"abc"
    assert (mnt / ".ckptfs" / "info.yaml").exists()


def test_gzip_members_without_gzip_module_match_plain(tmp_path):
    """The gzip reader serves the same bytes as the plain one for the same tar."""
    from ckptfs.formats import open_checkpoint

    plain = tmp_path / "p.nemo"
    _rich_tar(plain, "w:")
    packed = tmp_path / "g.nemo"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = open_checkpoint(str(plain), str(tmp_path / "cache"))
    b = open_checkpoint(str(packed), str(tmp_path / "cache"))
    files_a = {p: n.content.read(0, n.content.size) for p, n in a.root.walk() if hasattr(n, "content")}
    files_b = {p: n.content.read(0, n.content.size) for p, n in b.root.walk() if hasattr(n, "content")}
    assert files_a == files_b and len(files_a) >= 7


def test_a_gzip_stream_only_its_crc_shows_damaged_is_refused_at_its_first_mount(tmp_path):
    path = tmp_path / "damaged.nemo"
    plain = gzip_nemo(path)
    flip_in_place(path)
    damaged_stretch(path, plain)  # inflates to as many bytes as before: only the CRC tells
    done = run_ckptfs("info", path)
    assert done.returncode == 1 and done.stderr.startswith(f"ckptfs: {path}: gzip stream is truncated or corrupt")
    assert "CRC" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_gzip_file_damaged_after_it_was_indexed_answers_eio_for_the_damaged_span(mount, tmp_path):
    path = tmp_path / "old.nemo"
    plain = gzip_nemo(path)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        start = tf.getmember("./weights.bin").offset_data
    mnt = mount(path)  # indexes it
    assert run_ckptfs("umount", mnt).returncode == 0
    flip_in_place(path)  # device, inode, size and mtime as indexed
    first, last = damaged_stretch(path, plain)
    mnt = mount(path, log_errors_expected=True)
    fd = os.open(mnt / "weights.bin", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as raised:
            os.pread(fd, 128 << 10, first - start)
        assert raised.value.errno == errno.EIO
        after = ((SPAN * (first // SPAN + 1) - start) // 4096 + 1) * 4096  # a page of the next span
        assert os.pread(fd, 1 << 16, after) == plain[start + after:start + after + (1 << 16)]
        assert os.pread(fd, 1 << 16, 0) == plain[start:start + (1 << 16)]
    finally:
        os.close(fd)
    log = next(tmp_path.glob("daemon1.log")).read_text()
    assert f"bytes {first // SPAN * SPAN}-{first // SPAN * SPAN + SPAN} of the gzip stream: " in log


def test_the_gzip_index_is_read_in_one_pass_that_never_seeks_back_far(tmp_path):
    """tarfile reads the stream as it is inflated, once: a seek forward
    inflates what it skips; the span checksums cover every byte."""
    path = tmp_path / "model.nemo"
    contents = _rich_tar(path, "w:gz")
    plain = gzip.decompress(path.read_bytes())
    source, members, _ = gzindex.open_tar_stream(FileSource(str(path)), os.stat(path), str(tmp_path / "cache"))
    assert source.size == len(plain) and {m.name for m in members} >= set(contents)
    sums = SpanSums()
    sums.add(plain)
    assert source._sums == sums.finish().sums and len(sums.sums) == -(-len(plain) // SPAN)
    with rapidgzip.open(str(path)) as reader:
        stream = Inflated(reader, SpanSums(), 1 << 20)
        assert stream.read(1 << 20) == plain[:1 << 20]
        stream.seek(-1000, os.SEEK_CUR)  # back a little: what was inflated last is kept
        assert stream.read(2000) == plain[(1 << 20) - 1000:(1 << 20) + 1000]
        with pytest.raises(OSError, match="cannot go back"):
            stream.seek(0)
            stream.read(1)
        with pytest.raises(OSError, match="no tar header is that long"):
            stream.read(2 << 20)


def test_an_archive_of_more_members_than_max_members_is_refused_in_one_line(tmp_path, mount):
    path = empty_members_tar(tmp_path / "many.nemo", 1001)
    mnt = tmp_path / "refused"
    mnt.mkdir()
    done = run_ckptfs("mount", path, mnt, "-o", "ro,max_members=1000")
    assert done.returncode == 1 and done.stderr == f"ckptfs: {path}: more than 1000 members (-o max_members raises the limit)\n"
    assert not is_mounted(mnt)
    served = mount(path, "-o", "ro,max_members=1001")
    assert len(os.listdir(served)) == 1002 and (served / "m0001000").read_bytes() == b""
    packed = tmp_path / "many.gz.nemo"  # a gzip one is counted as it is inflated
    packed.write_bytes(gzip.compress(path.read_bytes()))
    done = run_ckptfs("mount", packed, mnt, "-o", "ro,max_members=1000")
    assert done.returncode == 1 and "more than 1000 members" in done.stderr and not is_mounted(mnt)


def test_a_file_made_in_the_mount_never_becomes_a_member_that_climbs_out(mount, tmp_path):
    """A file made as `%2E%2E/evil.txt` stands for `../evil.txt`, a member
    that unpacking (NeMo's tarfile.extractall) would put outside its folder:
    refused when closed and by the repack, the edits kept; once it is gone
    the rest is written."""
    nemo = tmp_path / "model.nemo"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", nemo)
    mnt = mount(nemo, log_errors_expected=True)
    (mnt / "%2E%2E").mkdir()
    write_refused(mnt / "%2E%2E" / "evil.txt", b"out")
    (mnt / "notes.txt").write_text("kept")
    done = umount(mnt)
    assert done.returncode == 1 and "member of the archive cannot be named '..': the name '..'" in done.stderr, done.stderr
    mnt = mount(nemo, "--resume")
    shutil.rmtree(mnt / "%2E%2E")
    assert umount(mnt).returncode == 0
    with tarfile.open(nemo) as tf:
        names = tf.getnames()
    assert "./notes.txt" in names and not any(".." in n.split("/") for n in names), names
