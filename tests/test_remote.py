"""Remote sources against real servers on loopback: a web server with byte
ranges and ETags (https:// is the same code over TLS), and moto's S3 behind
a proxy that counts. Every count here is the server's, not ckptfs's."""

from __future__ import annotations

import asyncio
import errno
import filecmp
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ckptfs.sources.pagecache import PAGE, DiskCache, PageCache
from ckptfs.sources.stall import PROGRESS, Stalled, Watchdog
from ckptfs.sources.stores.base import RemoteError
from ckptfs.sources.stores.watched import StalledTwice

from .conftest import is_mounted, run_ckptfs
from .remote_servers import FileServer, HubServer, NoRangesServer, S3Server

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TENSOR = 10 << 20  # bytes of each tensor of the sparse checkpoint
COUNT = 100  # 100 x 10 MiB: a 1 GiB checkpoint
LONG = 96 << 20  # a tensor read from start to end


def sparse_safetensors(path: Path) -> Path:
    """A 1 GiB safetensors, all zeros on disk but the tensor `t.7`, which holds its own index."""
    header, offset = {}, 0
    for i in range(COUNT):
        header[f"t.{i}"] = {"dtype": "F32", "shape": [TENSOR // 4], "data_offsets": [offset, offset + TENSOR]}
        offset += TENSOR
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        start = f.tell()
        f.truncate(start + offset)
        f.seek(start + 7 * TENSOR)
        f.write(np.arange(TENSOR // 4, dtype=np.float32).tobytes())
    return path


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    sparse_safetensors(root / "big.safetensors")
    shutil.copy(SAMPLES / "nemo" / "tiny.nemo", root / "tiny.nemo")
    (root / "old.nemo").write_bytes(gzip.compress((SAMPLES / "nemo" / "tiny.nemo").read_bytes(), mtime=0))
    text = json.dumps({"long": {"dtype": "U8", "shape": [LONG], "data_offsets": [0, LONG]}}).encode().ljust(64)
    with open(root / "long.safetensors", "wb") as f:  # one 96 MiB tensor, zeros
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + LONG)
    server = FileServer(root)
    yield server, root
    server.close()


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    client = server.client()
    client.create_bucket(Bucket="ckpts")
    for folder, prefix in ((SAMPLES / "dcp" / "fsdp2_2rank", "dcp/"), (SAMPLES / "hf" / "bert_tiny_sharded", "hf/")):
        for path in folder.iterdir():
            client.upload_file(str(path), "ckpts", prefix + path.name)
    client.upload_file(str(SAMPLES / "lightning" / "tiny.ckpt"), "ckpts", "lightning/tiny.ckpt")
    yield server
    server.close()


def _env(monkeypatch, server: S3Server) -> None:
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)


def test_a_1gib_mount_fetches_under_1mb_and_a_tensor_only_its_bytes(web, tmp_path, mount):
    server, root = web
    server.counts.reset()
    mnt = mount(server.url + "big.safetensors", "--cache-dir", tmp_path / "cache")
    requests, fetched = server.counts.reset()
    assert requests <= 3 and fetched < 1 << 20, server.counts.lines
    assert len(list(mnt.glob("t/*.npy"))) == COUNT
    served = np.load(mnt / "t" / "7.npy")
    assert np.array_equal(served, np.arange(TENSOR // 4, dtype=np.float32))
    requests, fetched = server.counts.reset()
    assert TENSOR <= fetched <= TENSOR + 2 * PAGE  # the tensor, and the pages its ends share with its neighbours
    assert requests <= TENSOR // (8 << 20) + 2  # in blocks of 8 MiB, the first read fetching all of them


def test_a_sequential_read_is_fetched_in_large_requests(web, tmp_path, mount):
    server, _ = web
    mnt = mount(server.url + "long.safetensors", "--cache-dir", tmp_path / "cache")
    server.counts.reset()
    with open(mnt / "long.npy", "rb") as f:
        while f.read(128 << 10):  # as cat reads
            pass
    requests, fetched = server.counts.reset()
    assert LONG - PAGE <= fetched <= LONG + PAGE  # the file once (its first page came with the header at mount)
    assert requests <= LONG // (8 << 20) + 4, server.counts.lines  # 8 MiB requests, not one per read


def test_a_second_mount_with_the_disk_cache_makes_one_request(web, tmp_path, mount):
    server, _ = web
    cache = tmp_path / "cache"
    first = mount(server.url + "big.safetensors", "--cache-dir", cache)
    np.load(first / "t" / "7.npy")
    server.counts.reset()
    second = mount(server.url + "big.safetensors", "--cache-dir", cache)
    assert server.counts.reset()[0] == 1  # the HEAD that pins the ETag; the header comes from disk
    assert np.load(second / "t" / "7.npy")[-1] == TENSOR // 4 - 1
    assert server.counts.reset() == (0, 0)


@pytest.mark.parametrize("name", ["tiny.nemo", "old.nemo"])  # a plain tar, and a gzip one (pre-1.7 NeMo)
def test_a_tar_over_https_reads_as_the_file_does(web, tmp_path, mount, name):
    server, root = web
    remote = mount(server.url + name, "--cache-dir", tmp_path / "cache")
    local = mount(root / name, "-o", "ro", "--cache-dir", tmp_path / "local-cache")
    compared = filecmp.dircmp(remote, local, ignore=[".ckptfs"])
    assert not compared.left_only and not compared.right_only
    for path in local.rglob("*"):
        if path.is_file() and ".ckptfs" not in path.parts:
            assert (remote / path.relative_to(local)).read_bytes() == path.read_bytes(), path


def test_an_object_replaced_while_mounted_fails_reads_with_eio(tmp_path, mount):
    root = tmp_path / "www"
    root.mkdir()
    sparse_safetensors(root / "big.safetensors")
    server = FileServer(root)
    try:
        mnt = mount(server.url + "big.safetensors", "--cache-dir", tmp_path / "cache", log_errors_expected=True)
        replaced = root / "big.safetensors.new"
        sparse_safetensors(replaced)
        os.replace(replaced, root / "big.safetensors")  # a new ETag
        with pytest.raises(OSError) as failed:
            (mnt / "t" / "3.npy").read_bytes()
        assert failed.value.errno == errno.EIO
        log = next(tmp_path.glob("daemon*.log")).read_text()
        assert "the object changed since it was mounted" in log
    finally:
        server.close()


def test_an_s3_prefix_mounts_as_the_folder_does(s3, tmp_path, monkeypatch, mount):
    _env(monkeypatch, s3)
    for prefix, folder in (("dcp/", SAMPLES / "dcp" / "fsdp2_2rank"), ("hf/", SAMPLES / "hf" / "bert_tiny_sharded")):
        s3.counts.reset()
        remote = mount(f"s3://ckpts/{prefix}", "--cache-dir", tmp_path / "cache")
        mounted_with = s3.counts.reset()
        local = mount(folder, "-o", "ro")
        files = [p.relative_to(local) for p in local.rglob("*") if p.is_file() and ".ckptfs" not in p.parts]
        assert files
        for path in files:
            assert (remote / path).read_bytes() == (local / path).read_bytes(), (prefix, path)
        objects = len(list(folder.iterdir()))
        assert mounted_with[0] <= objects + 1, s3.counts.lines  # the LIST, then at most one read per object
        assert mounted_with[1] <= objects * PAGE


def test_an_s3_object_reads_like_the_file(s3, tmp_path, monkeypatch):
    _env(monkeypatch, s3)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = json.loads(run_ckptfs("info", "--json", "s3://ckpts/lightning/tiny.ckpt").stdout)
    local = json.loads(run_ckptfs("info", "--json", SAMPLES / "lightning" / "tiny.ckpt").stdout)
    assert info["format"] == local["format"] and info["by_dtype"] == local["by_dtype"]
    assert info["writable"] is True  # with --output or --replace (tests/test_remote_writes.py)


@pytest.mark.parametrize("url, problem", [
    ("{web}missing.safetensors", "no such object (HTTP 404)"),
    ("{web}", "a web server lists no folders"),
    ("s3://ckpts/nothing-here/", "no objects under this prefix"),
    ("s3://ckpts/nothing.safetensors", "no such object"),
])
def test_remote_sources_that_cannot_be_read_are_refused_in_one_line(web, s3, tmp_path, monkeypatch, url, problem):
    _env(monkeypatch, s3)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    done = run_ckptfs("info", url.format(web=web[0].url))
    assert done.returncode == 1 and problem in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ---------------------------------------------------------------- the cache on its own


def test_concurrent_reads_of_one_page_fetch_it_once():
    calls, gate = [], threading.Event()

    def fetch(start: int, end: int) -> bytes:
        calls.append((start, end))
        gate.wait(5)
        return bytes(range(256)) * ((end - start) // 256)

    cache = PageCache(memory_bytes=16 * PAGE, block_bytes=4 * PAGE)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.read("k", 8 * PAGE, fetch, 100, 3 * PAGE)))
               for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and len(set(results)) == 1 and len(results[0]) == 3 * PAGE
    assert sorted(calls) == [(0, 4 * PAGE)]  # one request for the 4 pages the read covers
    cache.read("k", 8 * PAGE, fetch, 0, 8 * PAGE)
    assert sorted(calls) == [(0, 4 * PAGE), (4 * PAGE, 8 * PAGE)]


def test_a_damaged_disk_page_is_fetched_again(tmp_path):
    pages = {0: b"a" * PAGE, 1: b"b" * PAGE}
    fetched = []

    def fetch(start: int, end: int) -> bytes:
        fetched.append((start, end))
        return b"".join(pages[i] for i in range(start // PAGE, end // PAGE))

    first = PageCache(disk=DiskCache(str(tmp_path)))
    assert first.read("k", 2 * PAGE, fetch, 0, 2 * PAGE) == pages[0] + pages[1]
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    with open(folder / "data", "r+b") as f:  # page 1 damaged on disk
        f.seek(PAGE + 10)
        f.write(b"X")
    second = PageCache(disk=DiskCache(str(tmp_path)))
    assert second.read("k", 2 * PAGE, fetch, 0, 2 * PAGE) == pages[0] + pages[1]
    assert fetched == [(0, 2 * PAGE), (PAGE, 2 * PAGE)]  # only the damaged page again


def test_a_failed_page_fails_at_once_until_failed_for_has_passed(monkeypatch):
    """The kernel reads a page again as soon as its read-ahead failed: that
    read gets the same error at once, not another wait for the server."""
    import ckptfs.sources.pagecache as pagecache

    asked = []

    def fetch(start: int, end: int) -> bytes:
        asked.append((start, end))
        raise StalledTwice(f"bytes {start}-{end - 1}: no progress for 30 s, twice")

    cache = PageCache(block_bytes=4 * PAGE, failed_for=30)
    with pytest.raises(RemoteError) as first:
        cache.read("k", 8 * PAGE, fetch, 0, 2 * PAGE)
    with pytest.raises(RemoteError) as again:
        cache.read("k", 8 * PAGE, fetch, PAGE + 10, 100)
    assert again.value is first.value and asked == [(0, 2 * PAGE)]
    assert cache.read("k", 8 * PAGE, lambda start, end: b"x" * (end - start), 2 * PAGE, 10) == b"x" * 10

    now = pagecache.time.monotonic()
    monkeypatch.setattr(pagecache.time, "monotonic", lambda: now + 31)
    with pytest.raises(RemoteError):
        cache.read("k", 8 * PAGE, fetch, PAGE, 100)
    assert asked == [(0, 2 * PAGE), (PAGE, 2 * PAGE)]  # asked again once the time has passed


def test_a_page_whose_fetch_failed_at_once_is_asked_for_again():
    """A reset or a 503 costs no wait: the next read asks again, and gets the bytes."""
    answers = iter([RemoteError("connection reset"), b"x" * PAGE])

    def fetch(start: int, end: int) -> bytes:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = PageCache(block_bytes=4 * PAGE, failed_for=30)
    with pytest.raises(RemoteError, match="reset"):
        cache.read("k", PAGE, fetch, 0, 10)
    assert cache.read("k", PAGE, fetch, 0, 10) == b"x" * 10


@pytest.mark.parametrize("chunk, pause, stalls", [
    (1, 0.05, True),  # a byte at a time, never a page's worth within the timeout
    (PROGRESS, 0.05, False),  # a page every 0.05 s for 1.5 s: three times the timeout
])
def test_the_watchdog_counts_progress_by_the_page(chunk, pause, stalls):
    async def transfer():
        chunks = iter([b"x" * chunk] * (30 if chunk == PROGRESS else 1000))

        async def read_some() -> bytes:
            await asyncio.sleep(pause)
            return next(chunks, b"")

        async with Watchdog(0.5) as watch:
            return await watch.body(read_some)

    if stalls:
        with pytest.raises(Stalled, match="no progress for 0.5 s"):
            asyncio.run(transfer())
    else:
        assert asyncio.run(transfer()) == b"x" * 30 * PROGRESS


def test_a_hub_repository_mounts_at_its_commit(tmp_path, monkeypatch, mount):
    """hf:// against a stand-in for the Hub on loopback (HF_ENDPOINT): one API
    request pins the revision to its commit; files come from the commit's
    resolve URLs through the redirect the Hub answers with."""
    folder = SAMPLES / "hf" / "bert_tiny_sharded"
    hub = HubServer(folder)
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        remote = mount("hf://org/model@main", "--cache-dir", tmp_path / "cache")
        requests = [line for line in hub.counts.lines if "/api/" in line]
        assert len(requests) == 1
        local = mount(folder, "-o", "ro")
        files = [p.relative_to(local) for p in local.rglob("*") if p.is_file() and ".ckptfs" not in p.parts]
        assert files
        for path in files:
            assert (remote / path).read_bytes() == (local / path).read_bytes(), path
        info = json.loads(run_ckptfs("info", "--json", "hf://org/model").stdout)
        assert info["source"] == f"hf://org/model@{HubServer.SHA}/" and info["tensors"] > 0
        done = run_ckptfs("info", "hf://org/other")
        assert done.returncode == 1 and "HTTP 404" in done.stderr and len(done.stderr.strip().splitlines()) == 1

        # edits of a repository go to a local folder, kept meanwhile under the commit they were made on
        out = tmp_path / "edited"
        editable = mount("hf://org/model@main", "--output", out)
        config = json.loads((editable / "config.json").read_text())
        (editable / "config.json").write_text(json.dumps({**config, "ckptfs_edit": 1}))
        kept = list((tmp_path / "xdg" / "ckptfs" / "edits").glob("*/.model@*.ckptfs"))
        assert [p.name for p in kept] == [f".model@{HubServer.SHA}.ckptfs"]
        assert run_ckptfs("umount", editable).returncode == 0
        assert json.loads((out / "config.json").read_text()) == {**config, "ckptfs_edit": 1}
        for path in folder.iterdir():
            if path.name != "config.json":
                assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    finally:
        hub.close()


def test_the_disk_cache_keeps_to_its_bound(tmp_path, monkeypatch):
    import ckptfs.sources.pagecache as pagecache

    monkeypatch.setattr(pagecache, "TRIM_EVERY", 8 * PAGE)
    disk = DiskCache(str(tmp_path), limit=20 * PAGE)
    cache = PageCache(disk=disk)
    for name in "abcd":  # four objects of 16 pages: 64 pages written through a 20-page bound
        cache.read(name, 16 * PAGE, lambda start, end: b"x" * (end - start), 0, 16 * PAGE)
    used = sum(f.stat().st_blocks * 512 for f in tmp_path.rglob("*") if f.is_file())
    assert used <= 20 * PAGE + 8 * PAGE + 4096 * 4, used  # the bound, plus what came in since the last trim
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) < 4


# ---------------------------------------------------------------- a server that ignores ranges: -o fetch=whole


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """`python -m http.server` on loopback, as a user starts it (it ignores
    Range and sends no ETag), serving a safetensors in a folder named
    `modèle/😀`; its request log in a file. Yields (the URL, the file, the log)."""
    root = tmp_path_factory.mktemp("plain-www")
    folder = root / "modèle" / "😀"
    folder.mkdir(parents=True)
    tensors = {"emb": np.arange(300_000, dtype=np.float32).reshape(1000, 300),
               "head.w": np.linspace(-1, 1, 4096).astype(np.float16), "step": np.array([7], dtype=np.int64)}
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / "model.safetensors"))
    log = root.parent / f"{root.name}.log"
    with open(log, "wb") as said:
        server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                                   "--directory", str(root)], stdout=subprocess.PIPE, stderr=said)
    try:
        line = server.stdout.readline().decode()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        port = re.search(r" port (\d+) ", line)
        assert port, line
        yield f"http://127.0.0.1:{port[1]}/modèle/😀/model.safetensors", folder / "model.safetensors", log
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


def _gets(log: Path) -> int:
    return log.read_text(errors="replace").count('"GET ')


def test_a_server_that_ignores_ranges_is_refused_saying_so(http_server, tmp_path, monkeypatch):
    url, _, _ = http_server
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    done = run_ckptfs("info", url)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{url}: the server ignores range requests" in done.stderr and "-o fetch=whole" in done.stderr


def test_fetch_whole_downloads_a_plain_servers_file_once_and_reads_it_bit_exact(http_server, tmp_path, mount):
    from safetensors.numpy import load_file

    url, local, log = http_server
    expected = load_file(str(local))
    cache = tmp_path / "cache"
    before = _gets(log)
    mnt = mount(url, "-o", "fetch=whole", "--cache-dir", cache)
    assert _gets(log) == before + 1  # one GET, the whole file
    for name, array in expected.items():
        served = np.load(mnt / f"{name.replace('.', '/')}.npy")
        assert served.dtype == array.dtype and served.shape == array.shape
        assert served.tobytes() == array.tobytes(), name
    raw = (mnt / ".ckptfs" / "raw" / "model.safetensors").read_bytes()
    assert raw == local.read_bytes()
    assert _gets(log) == before + 1  # every read came from the copy
    again = mount(url, "-o", "fetch=whole", "--cache-dir", cache)
    assert np.load(again / "step.npy").tolist() == [7]
    assert _gets(log) == before + 1  # the same version (size, time) is downloaded once
    copies = [p for p in (cache / "remote").rglob("*") if p.is_file()]
    assert [p.name for p in copies] == ["whole"] and copies[0].stat().st_mode & 0o077 == 0


def test_edits_of_a_file_fetched_whole_go_to_output(http_server, tmp_path, mnt):
    """A writable mount of `…/modèle/😀/model.safetensors` (-o fetch=whole,
    --output): its overlay is kept under the URL's name in --overlay-dir,
    and the edited file is written where --output says."""
    from safetensors.numpy import load_file

    url, local, _ = http_server
    out, overlays = tmp_path / "édité.safetensors", tmp_path / "edits é"
    done = run_ckptfs("mount", url, mnt, "-o", "fetch=whole", "--cache-dir", tmp_path / "cache", "--output", out,
                      "--overlay-dir", overlays)
    assert done.returncode == 0, done.stderr
    np.save(mnt / "head" / "w.npy", np.zeros(4096, dtype=np.float16))
    assert [p.name for p in overlays.glob("*/.*")] == [".model.safetensors.ckptfs", ".model.safetensors.ckptfs.lock"]
    gone = run_ckptfs("umount", mnt, "--timeout", "60")
    assert gone.returncode == 0, gone.stderr
    written, source = load_file(str(out)), load_file(str(local))
    assert not written["head.w"].any() and written["emb"].tobytes() == source["emb"].tobytes()
    assert list(overlays.iterdir()) == []


@pytest.mark.parametrize("grow, lie, problem", [
    (10, "length", "the reply is of 4106 bytes (Content-Length), the object was 4096 when mounted"),
    (10, "close", "the reply holds more than 4096 bytes, the object was 4096 when mounted"),
])
def test_fetch_whole_refuses_a_reply_of_another_size_and_keeps_nothing(tmp_path, mnt, grow, lie, problem):
    root = tmp_path / "www"
    root.mkdir()
    (root / "m.safetensors").write_bytes(_padded_safetensors(4096))
    server = NoRangesServer(root, grow=grow, lie=lie)
    try:
        done = run_ckptfs("mount", server.url + "m.safetensors", mnt, "-o", "fetch=whole",
                          "--cache-dir", tmp_path / "cache")
    finally:
        server.close()
    assert done.returncode == 1 and problem in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not is_mounted(mnt)
    assert [p.name for p in (tmp_path / "cache" / "remote").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("source, options, problem", [
    ("{url}", "fetch=whole,cache_disk=4096", "8,192 bytes, more than the disk cache's bound (4,096 bytes"),
    ("{url}", "fetch=whole,cache_disk=0", "-o fetch=whole keeps the file in the disk cache"),
    ("{local}", "fetch=whole", "-o fetch=whole is for a file on a web server"),
    ("{url}", "fetch=all", "give fetch=ranges (the default) or fetch=whole"),
])
def test_fetch_whole_that_cannot_be_is_refused_in_one_line(tmp_path, mnt, source, options, problem):
    root = tmp_path / "www"
    root.mkdir()
    (root / "m.safetensors").write_bytes(_padded_safetensors(8192))
    server = NoRangesServer(root)
    try:
        done = run_ckptfs("mount", source.format(url=server.url + "m.safetensors", local=root / "m.safetensors"),
                          mnt, "-o", options, "--cache-dir", tmp_path / "cache")
    finally:
        server.close()
    assert done.returncode == 1 and problem in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert server.counts.lines == [] or all(not line.startswith("GET") for line in server.counts.lines)
    assert not is_mounted(mnt)


def _padded_safetensors(size: int) -> bytes:
    """A safetensors of exactly `size` bytes: one U8 tensor after an 8-byte-aligned header."""
    header = json.dumps({"x": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}).encode()
    header = header.ljust(size - 8)
    return struct.pack("<Q", len(header)) + header
