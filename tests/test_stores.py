"""Stores: the scheme registry, and the generic fsspec store that mounts any
protocol fsspec knows, read-only, with no code of ours per protocol.
`file://` mounts through real FUSE; `memory://` too, from a process that
filled fsspec's own MemoryFileSystem before mounting (tests/memory_store.py:
the daemon is forked from it). Each is compared byte for byte with the
local mount of the same checkpoint."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, TIMEOUT, is_mounted, run_ckptfs

SAMPLES = REPO / "samples"
HF = SAMPLES / "hf" / "bert_tiny_sharded"
NEMO = SAMPLES / "nemo" / "tiny.nemo"


def _tree(mnt: Path) -> dict[str, bytes | None]:
    """Every path below `mnt` but the .ckptfs/ view (which names its
    source): a file's bytes, None for a folder."""
    out = {}
    for here, folders, files in os.walk(mnt):
        folders[:] = [f for f in folders if not (here == str(mnt) and f == ".ckptfs")]
        for name in folders:
            out[os.path.relpath(os.path.join(here, name), mnt)] = None
        for name in files:
            out[os.path.relpath(os.path.join(here, name), mnt)] = Path(here, name).read_bytes()
    return out


def _single(tmp_path: Path) -> Path:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file({"embed.weight": rng.standard_normal((256, 256)).astype(np.float32),
               "head.bias": np.arange(7, dtype=np.int64)}, str(path))
    return path


def _memory_mount(mount, tmp_path: Path, fills: list[tuple[Path, str]], url: str, *extra: str,
                  errors: bool = False) -> subprocess.CompletedProcess:
    """`ckptfs mount URL` run by a process that first put `fills` (local
    file or folder, memory:// URL) into its memory:// filesystem; the mount
    joins the test's others, unmounted and its log checked at the end."""
    n = len(mount.made)
    mnt, log = tmp_path / f"mnt{n}", tmp_path / f"daemon{n}.log"
    mnt.mkdir()
    pairs = [str(a) for fill in fills for a in fill]
    done = subprocess.run([sys.executable, "-m", "tests.memory_store", *pairs, "--", "mount", url, str(mnt),
                           "--log-file", str(log), "--cache-dir", str(mount.cache_dir), *extra],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    if done.returncode == 0:
        assert is_mounted(mnt)
        mount.made.append((mnt, log, errors))
    done.mnt = mnt
    return done


# -- the registry

def _toy_store():
    """A store in one class, objects in a dict: what a new native store is."""
    from ckptfs.sources.stores.base import RemoteObject, Store

    class ToyStore(Store):
        kind = "a toy store"
        objects: dict[str, bytes] = {}

        def stat(self, url):
            return RemoteObject(url, len(self.objects[url]), "v1", 0.0)

        def folder(self, url):
            return url, {k[len(url):]: self.stat(k) for k in self.objects if k.startswith(url)}

        def get(self, obj, start, end):
            return self.objects[obj.url][start:end]

    return ToyStore


def test_a_store_registered_with_one_line_is_found_for_its_scheme(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from ckptfs import open as open_checkpoint
    from ckptfs.sources.location import location
    from ckptfs.sources.stores import base

    monkeypatch.setattr(base, "_REGISTERED", dict(base._REGISTERED))
    monkeypatch.setattr(base, "_STORES", {})
    ToyStore = _toy_store()
    base.register("toy", ToyStore)  # the one line

    single = _single(tmp_path)
    ToyStore.objects = {"toy://b/model.safetensors": single.read_bytes()}
    assert isinstance(base.store_for("toy://b/model.safetensors"), ToyStore)
    assert location("toy://b/").kind is ToyStore and location("toy://b/").folder
    assert "toy://" in base.native_schemes()
    opened = open_checkpoint("toy://b/model.safetensors", cache_dir=str(tmp_path / "cache"))
    for name, array in load_file(str(single)).items():
        assert np.array_equal(opened.tensor(name), array), name


def test_an_unknown_scheme_is_refused_naming_the_installed_protocols():
    done = run_ckptfs("info", "nosuch://bucket/model.safetensors")
    assert done.returncode == 1
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "no store for nosuch://" in line, line
    assert "s3://" in line and "memory://" in line and "file://" in line, line


# -- the generic store: file:// through a real mount, byte for byte as the local mount

@pytest.mark.parametrize("sample", ["single", "hf", "nemo"])
def test_a_file_url_mounts_byte_for_byte_as_the_local_path(tmp_path, mount, sample):
    source = {"single": lambda: _single(tmp_path), "hf": lambda: HF, "nemo": lambda: NEMO}[sample]()
    url = f"file://{source}" + ("/" if source.is_dir() else "")
    local = mount(source, "-o", "ro")
    remote = mount(url)
    expected = _tree(local)
    assert len(expected) > 3 and _tree(remote) == expected
    assert os.getxattr(remote, "user.ckptfs.read_only")  # no --output: read-only, and it says so


def test_a_file_url_of_a_folder_without_its_slash_says_to_add_one(tmp_path):
    done = run_ckptfs("info", f"file://{HF}")
    assert done.returncode == 1 and "end it with / to mount it as a directory" in done.stderr, done.stderr


def test_an_fsspec_object_changed_while_mounted_fails_reads_with_the_pinned_error(tmp_path, mount):
    source = _single(tmp_path)
    mnt = mount(f"file://{source}", log_errors_expected=True)
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    replaced = tmp_path / "new.safetensors"
    replaced.write_bytes(bytes(data))
    os.utime(replaced, (time.time() + 10, time.time() + 10))
    os.replace(replaced, source)
    with pytest.raises(OSError) as failed:
        (mnt / "embed" / "weight.npy").read_bytes()  # past the first page, which the header's read fetched
    assert failed.value.errno == errno.EIO
    log = next(tmp_path.glob("daemon*.log")).read_text()
    assert f"file://{source}: the object changed since it was mounted (its version is no longer mtime " in log, log


def test_an_fsspec_url_mounts_read_only_but_writes_to_a_local_output(tmp_path, mount):
    from safetensors.numpy import load_file

    source = _single(tmp_path)
    url = f"file://{source}"
    refused = run_ckptfs("mount", url, tmp_path, "--replace")
    assert refused.returncode == 1 and "only an s3:// object can be replaced" in refused.stderr, refused.stderr
    refused = run_ckptfs("mount", url, tmp_path, "--output", "memory://elsewhere/model.safetensors")
    assert refused.returncode == 1 and "writes checkpoints to local paths and s3:// only" in refused.stderr
    out = tmp_path / "edited.safetensors"
    mnt = mount(url, "--output", out)
    bias = np.load(mnt / "head" / "bias.npy")
    np.save(mnt / "head" / "bias.npy", bias + 1)
    done = run_ckptfs("umount", mnt, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(load_file(str(out))["head.bias"], bias + 1)
    assert np.array_equal(load_file(str(source))["head.bias"], bias)  # the source as it was


# -- memory://: fsspec's own MemoryFileSystem, in the mounting process

def test_memory_urls_mount_byte_for_byte_as_the_local_paths(tmp_path, mount):
    single = _single(tmp_path)
    fills = [(single, "memory://ckpts/model.safetensors"), (HF, "memory://ckpts/hf/"),
             (NEMO, "memory://ckpts/tiny.nemo")]
    for source, url in ((single, "memory://ckpts/model.safetensors"), (HF, "memory://ckpts/hf/"),
                        (NEMO, "memory://ckpts/tiny.nemo")):
        done = _memory_mount(mount, tmp_path, fills, url)
        assert done.returncode == 0, done.stderr
        local = mount(source, "-o", "ro")
        expected = _tree(local)
        assert len(expected) > 3 and _tree(done.mnt) == expected, url


def test_a_memory_url_reads_through_the_api_as_the_library_does(tmp_path):
    import fsspec
    from safetensors.numpy import load_file

    from ckptfs import open as open_checkpoint

    single = _single(tmp_path)
    fsspec.filesystem("memory").pipe("memory://api/model.safetensors", single.read_bytes())
    try:
        opened = open_checkpoint("memory://api/model.safetensors", cache_dir=str(tmp_path / "cache"))
        for name, array in load_file(str(single)).items():
            assert np.array_equal(opened.tensor(name), array), name
    finally:
        fsspec.filesystem("memory").rm("memory://api", recursive=True)


def test_memory_names_that_climb_out_are_kept_escaped_inside_the_mount(tmp_path, mount):
    planted = tmp_path / "climbed.txt"
    planted.write_bytes(b"climbed")
    fills = [(_single(tmp_path), "memory://m/model.safetensors"), (planted, "memory://m/../../climbed.txt")]
    done = _memory_mount(mount, tmp_path, fills, "memory://m/")
    assert done.returncode == 0, done.stderr
    from ckptfs.tree import names

    assert done.mnt.joinpath(*names.file_parts("%2E%2E/%2E%2E/climbed.txt")).read_bytes() == b"climbed"
    assert not (tmp_path.parent / "climbed.txt").exists()
    assert "'../../climbed.txt' as '%2E%2E/%2E%2E/climbed.txt'" in (tmp_path / "daemon0.log").read_text()


def test_a_plain_file_reader_and_a_fetched_file_reader_keep_the_read_ahead_they_had():
    from ckptfs.sources.readahead import FETCHED, LOCAL

    local, MiB = LOCAL.reader(), 1 << 20
    asked = [local.advance(at, 128 << 10, 1 << 30) for at in range(0, 2 * MiB, 128 << 10)]
    assert asked.index((MiB, 8 * MiB)) == 7 and asked.count(None) == len(asked) - 1  # 1 MiB in a row, then 8 MiB ahead
    assert local.advance(100 * MiB, 4096, 1 << 30) is None  # a jump starts again

    fetched = FETCHED.reader()
    assert fetched.advance(0, MiB, 1 << 30) == (0, 32 * MiB)
    asked = {at: fetched.advance(at, MiB, 1 << 30) for at in range(MiB, 17 * MiB, MiB)}
    assert [a for a in asked.values() if a] == [(32 * MiB, 64 * MiB)]  # within half a window: the next, doubled
    assert fetched.advance(500 * MiB, MiB, 1 << 30) is None
    assert fetched.advance(501 * MiB, MiB, 1 << 30) == (502 * MiB, 8 * MiB)  # 4 reads' worth, doubled


def test_ckptfs_ls_of_a_file_url_lists_as_the_local_path():
    local = run_ckptfs("ls", "-l", "-R", HF)
    remote = run_ckptfs("ls", "-l", "-R", f"file://{HF}/")
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    def listed(out: str) -> list[str]:  # but the two files of the view that name the source
        return [line for line in out.splitlines() if not line.endswith((".ckptfs/info.yaml", ".ckptfs/tensors.tsv"))]

    assert len(listed(local.stdout)) > 10 and listed(remote.stdout) == listed(local.stdout)

