"""safetensors files, generated with torch and safetensors, read back through
a real mount and compared with the safetensors library bit for bit."""

import json
import os
import random
import stat
import subprocess
from pathlib import Path

import ml_dtypes  # noqa: F401  (lets np.load read bfloat16 and float8 files)
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import write_safetensors

TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32,
    torch.int64, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu,
]


def _random(dtype, shape, gen):
    raw = torch.randint(0, 256, (int(np.prod(shape)) * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        return (raw[: int(np.prod(shape))] & 1).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)  # every bit pattern, NaNs included


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"dtypes.{str(d).split('.')[1]}": _random(d, (3, 5), gen) for d in TORCH_DTYPES}
    tensors["shapes.scalar"] = torch.tensor(3.5, dtype=torch.float32)
    tensors["shapes.empty"] = torch.empty((0, 4), dtype=torch.float16)
    tensors["shapes.big"] = _random(torch.float32, (300, 257), gen)
    tensors["shapes.rank5"] = _random(torch.bfloat16, (2, 3, 1, 4, 5), gen)
    path = tmp_path_factory.mktemp("st") / "every.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "ü and\nnewline"})
    return path


def _npy_path(mnt, name):
    return os.path.join(mnt, *name.split(".")) + ".npy"


def test_every_dtype_matches_safetensors_bit_for_bit(mount, every_dtype):
    mnt = mount(every_dtype)
    reference = load_file(str(every_dtype))
    for name, tensor in reference.items():
        expected = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        for loaded in (np.load(_npy_path(mnt, name)), np.load(_npy_path(mnt, name), mmap_mode="r")):
            assert loaded.shape == tuple(tensor.shape), name
            assert loaded.tobytes() == expected, name
            assert loaded.dtype.itemsize == tensor.dtype.itemsize, name
        attrs = {k: os.getxattr(_npy_path(mnt, name), f"user.ckptfs.{k}").decode() for k in ("name", "shape", "source", "range")}
        assert attrs["name"] == name
        assert json.loads(attrs["shape"]) == list(tensor.shape)
        assert attrs["source"] == str(every_dtype)
        start, end = map(int, attrs["range"].split("-"))
        with open(every_dtype, "rb") as f:
            f.seek(start)
            assert f.read(end - start) == expected


def test_dtype_names_in_npy_and_xattrs(mount, every_dtype):
    mnt = mount(every_dtype)
    bf16 = _npy_path(mnt, "dtypes.bfloat16")
    assert np.load(bf16).dtype == np.dtype("bfloat16")
    assert os.getxattr(bf16, "user.ckptfs.dtype") == b"bfloat16"
    assert np.load(_npy_path(mnt, "dtypes.float8_e4m3fn")).dtype == np.dtype("float8_e4m3fn")
    assert np.load(_npy_path(mnt, "dtypes.float8_e8m0fnu")).dtype == np.dtype("float8_e8m0fnu")
    assert np.load(_npy_path(mnt, "dtypes.complex64")).dtype == np.complex64
    assert np.load(_npy_path(mnt, "shapes.scalar")) == np.float32(3.5)
    assert np.load(_npy_path(mnt, "shapes.empty")).shape == (0, 4)


def test_data_starts_64_byte_aligned_and_stat_is_exact(mount, every_dtype):
    mnt = mount(every_dtype)
    src = os.stat(every_dtype)
    for name, tensor in load_file(str(every_dtype)).items():
        path = _npy_path(mnt, name)
        with open(path, "rb") as f:
            head = f.read(10)
            data_start = 10 + int.from_bytes(head[8:10], "little")
            content = head + f.read()
        assert data_start % 64 == 0
        nbytes = tensor.numel() * tensor.dtype.itemsize
        st = os.stat(path)
        assert st.st_size == len(content) == data_start + nbytes
        assert st.st_blocks == (st.st_size + 511) // 512
        assert st.st_mtime_ns == src.st_mtime_ns
        assert (st.st_uid, st.st_gid) == (src.st_uid, src.st_gid)
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(src.st_mode) & 0o444 | 0o200  # a writable mount


def test_metadata_yaml(mount, every_dtype):
    import yaml

    mnt = mount(every_dtype)
    with open(os.path.join(mnt, "__metadata__.yaml")) as f:
        assert yaml.safe_load(f) == {"format": "pt", "note": "ü and\nnewline"}


def test_metadata_a_repack_could_not_write_is_refused_at_close(mount, every_dtype):
    from .conftest import umount, write_refused
    from .test_onnx import UNWRITABLE_YAML

    mnt = mount(every_dtype)
    for data in UNWRITABLE_YAML:
        write_refused(Path(mnt) / "__metadata__.yaml", data)
    assert umount(mnt, "--discard").returncode == 0


def test_subbyte_dtypes_are_raw_bytes_with_true_dtype(mount, tmp_path):
    data = bytes(range(256)) * 2
    header = {
        "f4": {"dtype": "F4", "shape": [4, 8], "data_offsets": [0, 16]},
        "f6": {"dtype": "F6_E2M3", "shape": [4, 4], "data_offsets": [16, 28]},
        "f6b": {"dtype": "F6_E3M2", "shape": [8], "data_offsets": [28, 34]},
    }
    path = write_safetensors(tmp_path / "fp4.safetensors", header, data[:34])
    mnt = mount(path)
    for name, dtype, shape, (start, end) in [
        ("f4", "float4_e2m1fn", [4, 8], (0, 16)),
        ("f6", "float6_e2m3fn", [4, 4], (16, 28)),
        ("f6b", "float6_e3m2fn", [8], (28, 34)),
    ]:
        arr = np.load(os.path.join(mnt, name + ".npy"))
        assert arr.dtype == np.uint8 and arr.shape == (end - start,)
        assert arr.tobytes() == data[start:end]
        assert os.getxattr(os.path.join(mnt, name + ".npy"), "user.ckptfs.dtype").decode() == dtype
        assert json.loads(os.getxattr(os.path.join(mnt, name + ".npy"), "user.ckptfs.shape")) == shape


def test_random_reads_straddle_header_data_and_eof(mount, every_dtype):
    mnt = mount(every_dtype)
    path = _npy_path(mnt, "shapes.big")
    with open(path, "rb") as f:
        whole = f.read()
    rng = random.Random(1)
    fd = os.open(path, os.O_RDONLY)
    try:
        offsets = [0, 1, 63, 64, 65, 127, 128, 129, 4095, 4096, len(whole) - 1, len(whole), len(whole) + 10]
        offsets += [rng.randrange(len(whole)) for _ in range(200)]
        for off in offsets:
            for length in (1, 7, 64, 4096, 200_000):
                assert os.pread(fd, length, off) == whole[off : off + length]
    finally:
        os.close(fd)
    header_len = whole.index(b"\n") + 1
    assert whole[header_len:] == load_file(str(every_dtype))["shapes.big"].numpy().tobytes()


def test_a_directory_of_2500_entries_lists_completely(mount, tmp_path):
    tensors = {f"layer.{i}": torch.full((2,), i, dtype=torch.int32) for i in range(2500)}
    path = tmp_path / "wide.safetensors"
    save_file(tensors, str(path))
    mnt = mount(path)
    listed = os.listdir(os.path.join(mnt, "layer"))
    assert sorted(listed) == sorted(f"{i}.npy" for i in range(2500))
    listing = subprocess.run(["ls", "-f", os.path.join(mnt, "layer")], capture_output=True, text=True, timeout=30)
    assert len([n for n in listing.stdout.split("\n") if n.endswith(".npy")]) == 2500
    with os.scandir(os.path.join(mnt, "layer")) as entries:  # stable readdir offsets
        first = [e.name for e in entries]
    assert first == listed
    assert np.load(os.path.join(mnt, "layer", "1234.npy")).tolist() == [1234, 1234]


def test_escaped_names_through_the_mount(mount, tmp_path):
    tensors = {"a": torch.ones(1), "a.b": torch.zeros(1), "x..y": torch.ones(2), "p/q": torch.ones(3), "%": torch.ones(4)}
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path))
    mnt = mount(path)
    for name, rel in [("a", "a.npy"), ("a.b", "a/b.npy"), ("x..y", "x/%/y.npy"), ("p/q", "p%2Fq.npy"), ("%", "%25.npy")]:
        full = os.path.join(mnt, rel)
        assert os.getxattr(full, "user.ckptfs.name").decode() == name
        assert np.load(full).tobytes() == tensors[name].numpy().tobytes()


def test_metadata_view(mount, every_dtype):
    import yaml

    mnt = mount(every_dtype)
    reference = load_file(str(every_dtype))
    info = yaml.safe_load(Path(mnt, ".ckptfs", "info.yaml").read_text())
    assert info["format"] == "safetensors"
    assert "source" not in info  # in an attribute, so that diff -r compares checkpoints, not paths
    assert os.getxattr(Path(mnt, ".ckptfs"), "user.ckptfs.source").decode() == str(every_dtype)
    assert info["tensors"] == len(reference)
    assert info["parameters"] == sum(t.numel() for t in reference.values())
    assert info["by_dtype"]["bfloat16"] == {"tensors": 2, "parameters": 15 + 120, "bytes": 270}
    with open(os.path.join(mnt, ".ckptfs", "tensors.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert rows[0] == ["path", "name", "dtype", "shape", "parameters", "bytes", "file", "offset"]
    by_name = {r[1]: r for r in rows[1:]}
    assert set(by_name) == set(reference)
    big = by_name["shapes.big"]
    assert big[0] == "shapes/big.npy" and big[2] == "float32" and json.loads(big[3]) == [300, 257]
    assert int(big[4]) == 300 * 257 and int(big[5]) == 300 * 257 * 4
    assert big[6] == "."  # the source itself
    with open(every_dtype, "rb") as f:
        f.seek(int(big[7]))
        assert f.read(int(big[5])) == reference["shapes.big"].numpy().tobytes()
    raw = os.path.join(mnt, ".ckptfs", "raw", every_dtype.name)
    assert Path(raw).read_bytes() == every_dtype.read_bytes()


def test_writes_are_refused_read_only(mount, every_dtype):
    mnt = mount(every_dtype, "-o", "ro")
    assert os.getxattr(mnt, "user.ckptfs.read_only") == b"mounted with -o ro"
    target = _npy_path(mnt, "shapes.big")
    for attempt in (
        lambda: open(target, "r+b"),
        lambda: open(os.path.join(mnt, "new.txt"), "w"),
        lambda: os.mkdir(os.path.join(mnt, "d")),
        lambda: os.unlink(target),
        lambda: open(os.path.join(mnt, ".ckptfs", "info.yaml"), "a"),
    ):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno in (30, 13)  # EROFS (kernel may say EACCES first for mode bits)
    assert os.stat(target).st_mode & 0o222 == 0


def test_du_adds_up(mount, every_dtype):
    mnt = mount(every_dtype)
    sizes = [p.stat().st_size for p in Path(mnt).rglob("*.npy")]
    apparent = subprocess.run(["du", "-sb", mnt], capture_output=True, text=True, timeout=30).stdout.split()[0]
    blocks = subprocess.run(["du", "-s", "--block-size=512", mnt], capture_output=True, text=True, timeout=30)
    everything = [p.stat() for p in Path(mnt).rglob("*")]
    assert int(apparent) == sum(st.st_size for st in everything)  # directories count 0 bytes
    assert int(blocks.stdout.split()[0]) == sum((st.st_size + 511) // 512 for st in everything)
    assert sum(sizes) > 0


def test_diff_of_two_mounts_names_the_differing_tensors(mount, tmp_path):
    base = {"enc.w": torch.arange(12, dtype=torch.float32), "enc.b": torch.ones(3), "head.w": torch.zeros(2, 2)}
    changed = dict(base, **{"enc.b": torch.tensor([1.0, 2.0, 1.0])})
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(base, str(a))
    save_file(changed, str(b))
    one, two, other = mount(a), mount(a), mount(b)
    same = subprocess.run(["diff", "-r", one, two], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and same.stdout == ""
    differ = subprocess.run(["diff", "-rq", "--exclude=.ckptfs", one, other], capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1
    assert differ.stdout.strip() == f"Files {one}/enc/b.npy and {other}/enc/b.npy differ"
