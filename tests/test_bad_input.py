"""Bad input at mount time: exit code non-zero, one clear line naming the file
and the problem, nothing left mounted, the source untouched."""

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from .conftest import FIXTURES, is_mounted, require_fuse, run_ckptfs, write_safetensors

F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def _good_safetensors(path: Path) -> Path:
    save_file({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(8)}, str(path))
    return path


def _truncated(tmp: Path) -> Path:
    data = _good_safetensors(tmp / "x.safetensors").read_bytes()
    (tmp / "x.safetensors").write_bytes(data[:-10])
    return tmp / "x.safetensors"


def _tar(tmp: Path, names: list[str], gz: bool = False) -> Path:
    path = tmp / ("bad.nemo")
    with tarfile.open(path, "w:gz" if gz else "w:") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 5
            tf.addfile(info, io.BytesIO(b"hello"))
    return path


def _truncated_tar(tmp: Path) -> Path:
    path = tmp / "big.nemo"
    with tarfile.open(path, "w:") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"./member{i}.bin")
            info.size = 5000
            tf.addfile(info, io.BytesIO(bytes(5000)))
    data = path.read_bytes()
    path.write_bytes(data[:7000])
    return path


def _truncated_gzip_tar(tmp: Path) -> Path:
    path = tmp / "old.nemo"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("./model_weights.ckpt")
        payload = bytes(range(256)) * 4000
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    path.write_bytes(path.read_bytes()[:3000])
    return path


def _hf_missing_shard(tmp: Path) -> Path:
    d = tmp / "hf"
    shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", d)
    (d / "model-00003-of-00004.safetensors").unlink()
    return d


CASES = {
    "missing source": (lambda t: t / "nope.safetensors", "no such file"),
    "not a checkpoint": (lambda t: _write(t / "notes.txt", b"just some text, not a checkpoint"), "not a checkpoint"),
    "empty file": (lambda t: _write(t / "empty.pt", b""), "empty file"),
    "truncated safetensors": (_truncated, "truncated"),
    "header beyond file": (
        lambda t: write_safetensors(t / "x.safetensors", {"a": F32_2x2}, bytes(16), 4096),
        "runs past the end",
    ),
    "header above limit": (
        lambda t: write_safetensors(t / "x.safetensors", {"a": F32_2x2}, bytes(16), 100_000_001),
        "above the limit of 100000000",
    ),
    "non-utf8 header": (lambda t: _write(t / "x.safetensors", (8).to_bytes(8, "little") + b"{\xff\xfe  }  "), "not UTF-8"),
    "non-json header": (lambda t: _write(t / "x.safetensors", (8).to_bytes(8, "little") + b"{nojson}"), "not valid JSON"),
    "offsets out of range": (
        lambda t: write_safetensors(t / "x.safetensors", {"a": {**F32_2x2, "data_offsets": [0, 16]}}, bytes(8)),
        "data_offsets",
    ),
    "overlapping offsets": (
        lambda t: write_safetensors(
            t / "x.safetensors",
            {"a": F32_2x2, "b": {**F32_2x2, "data_offsets": [8, 24]}},
            bytes(24),
        ),
        "overlap",
    ),
    "shape does not match bytes": (
        lambda t: write_safetensors(t / "x.safetensors", {"a": {**F32_2x2, "shape": [3, 2]}}, bytes(16)),
        "needs 24 bytes",
    ),
    "unknown dtype": (
        lambda t: write_safetensors(t / "x.safetensors", {"a": {**F32_2x2, "dtype": "F13"}}, bytes(16)),
        "unknown dtype",
    ),
    "truncated tar": (_truncated_tar, "truncated"),
    "tar member ../x": (lambda t: _tar(t, ["./model_config.yaml", "../x"]), "outside the archive"),
    "tar member /etc/x": (lambda t: _tar(t, ["/etc/x"]), "absolute path"),
    "truncated gzip tar": (_truncated_gzip_tar, "truncated"),
    "gzip without a tar": (lambda t: _write(t / "x.nemo", gzip.compress(b"not a tar" * 100)), "does not hold a tar"),
    "index names a missing shard": (_hf_missing_shard, "model-00003-of-00004.safetensors"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _digest(path: Path) -> str:
    if not path.exists():
        return "absent"
    if path.is_dir():
        return "|".join(f"{p.name}:{_digest(p)}" for p in sorted(path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_source_is_refused_with_one_line(case, tmp_path):
    require_fuse()
    make, problem = CASES[case]
    source = make(tmp_path)
    before = _digest(source)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_ckptfs("mount", source, mnt, "--cache-dir", tmp_path / "cache")
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ckptfs: ") and "Traceback" not in done.stderr
    assert problem in lines[0], lines[0]
    named = source if case != "index names a missing shard" else source / "model.safetensors.index.json"
    assert str(named) in lines[0] or source.name in lines[0], lines[0]
    assert not is_mounted(mnt)
    assert _digest(source) == before


def test_missing_mount_point(tmp_path):
    source = _good_safetensors(tmp_path / "ok.safetensors")
    done = run_ckptfs("mount", source, tmp_path / "nowhere")
    assert done.returncode != 0
    assert done.stderr.strip() == f"ckptfs: {tmp_path / 'nowhere'}: mount point does not exist"


def test_mount_point_already_a_mount(mount, tmp_path):
    source = _good_safetensors(tmp_path / "ok.safetensors")
    mnt = mount(source)
    done = run_ckptfs("mount", source, mnt)
    assert done.returncode != 0
    assert done.stderr.strip().startswith(f"ckptfs: {mnt}: already a mount point")
    assert len(done.stderr.strip().splitlines()) == 1
    assert (Path(mnt) / "a.npy").exists()  # the first mount still serves


def test_unknown_mount_option(tmp_path):
    source = _good_safetensors(tmp_path / "ok.safetensors")
    (tmp_path / "mnt").mkdir()
    done = run_ckptfs("mount", source, tmp_path / "mnt", "-o", "ro,frobnicate")
    assert done.returncode != 0
    assert done.stderr.strip() == "ckptfs: unknown mount option 'frobnicate' (see 'ckptfs mount --help')"
    assert not is_mounted(tmp_path / "mnt")


def test_json_duplicate_keys_are_refused(tmp_path):
    from ckptfs.errors import FormatError
    from ckptfs.formats import safetensors
    from ckptfs.sources.base import FileSource

    text = b'{"a":' + json.dumps(F32_2x2).encode() + b',"a":' + json.dumps(F32_2x2).encode() + b"}"
    text += b" " * (-len(text) % 8)
    path = _write(tmp_path / "dup.safetensors", len(text).to_bytes(8, "little") + text + bytes(16))
    with pytest.raises(FormatError, match="appears twice"):
        safetensors.read(FileSource(str(path)))
