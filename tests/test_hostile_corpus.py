"""The hostile corpus: files of a few kilobytes made to hang a mount, take
gigabytes or break more than their own part, each mounted by a daemon
under a memory cap (RLIMIT_AS, set in the child) and a timeout. The
contract (docs/security.md): a file is refused with one line naming it and
nothing stays mounted, or it is served, every file of the tree readable or
its own EIO, within the budgets."""

from __future__ import annotations

import errno
import gzip
import io
import os
import resource
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from .conftest import CKPTFS, FIXTURES, force_unmount, is_mounted, require_fuse, run_ckptfs, write_safetensors
from .test_torch_zip import _with_pickle

#: what a daemon may use: far above a real mount of these files (about 120 MB,
#: 1.3 GB of address space with rapidgzip's threads), far below what they ask for
MEMORY_CAP = 2 << 30
#: seconds a mount, or reading every file of it, may take
TIME_CAP = 60
READ_BYTES = 1 << 16


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _mount_capped(source: Path, mnt: Path, *options: str) -> subprocess.CompletedProcess:
    require_fuse()
    mnt.mkdir()
    return subprocess.run([*CKPTFS, "mount", str(source), str(mnt), "-o", "ro", *options], capture_output=True,
                          text=True, timeout=TIME_CAP, preexec_fn=_cap_memory)


def _read_everything(mnt: Path) -> dict[str, str]:
    """Read the start of every file of the mount, links left unfollowed;
    returns the files that answered EIO, with their `user.ckptfs.problem`."""
    failed = {}
    for folder, _, files in os.walk(mnt):
        for name in files:
            path = Path(folder, name)
            if path.is_symlink():
                continue
            try:
                with open(path, "rb") as f:
                    f.read(READ_BYTES)
            except OSError as e:
                assert e.errno == errno.EIO, f"{path}: {e}"
                failed[str(path.relative_to(mnt))] = os.getxattr(path, "user.ckptfs.problem").decode()
    return failed


# -- the corpus: name -> (make(tmp_path) -> source, "refused" or "served", what the outcome must say)

def _pt_of_shared_lists(tmp_path: Path) -> Path:
    layer = [torch.ones(2)]
    for _ in range(30):  # 2**30 paths to the one tensor
        layer = [layer, layer]
    path = tmp_path / "shared-lists.pt"
    torch.save({"a": layer}, path)
    return path


def _pt_of_shared_dicts_in_yaml(tmp_path: Path) -> Path:
    layer: object = {"x": 1}
    for _ in range(60):  # a value that renders to 2**60 nodes if copied out
        layer = {"left": layer, "right": layer}
    path = tmp_path / "shared-dicts.pt"
    torch.save({"w": torch.ones(1), "config": layer}, path)
    return path


def _pt_of_many_views_of_one_value(tmp_path: Path) -> Path:
    big = list(range(200_000))
    path = tmp_path / "many-views.pt"
    torch.save({"w": torch.ones(1), **{f"k{i}": big for i in range(500)}}, path)  # 10^8 values to render
    return path


def _pt_of_deep_nesting(tmp_path: Path) -> Path:
    return _with_pickle(tmp_path, b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")


def _shared_tuples(levels: int, keep_each: bool) -> bytes:
    """Opcodes of ("x",), then (t, t) of the one before, `levels` times;
    each stays on the stack (`keep_each`: keys for SETITEMS) or only the last."""
    ops = b"X\x01\x00\x00\x00x\x85q\x00"  # ("x",), memo 0
    for i in range(1, levels):
        ops += (b"" if keep_each else b"0") + b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return ops


def _pt_of_shared_tuple_key(tmp_path: Path) -> Path:
    return _with_pickle(tmp_path, b"\x80\x02}(" + _shared_tuples(64, keep_each=False) + b"K\x01u.")


def _pt_of_keys_alike_when_cut(tmp_path: Path) -> Path:
    """32 keys of shared tuples 64 levels deep, each shown by a cut repr:
    the same text for all of them."""
    return _with_pickle(tmp_path, b"\x80\x02}(" + _shared_tuples(64, keep_each=True) + b"u.")


def _pt_of_bytearray_request(tmp_path: Path) -> Path:
    return _with_pickle(tmp_path, b"\x80\x02}X\x01\x00\x00\x00bcbuiltins\nbytearray\n\x8a\x05\x00\x5e\xd0\xb2\x00\x85Rs.")


def _pt_of_many_globals(tmp_path: Path) -> Path:
    ops = b"".join(b"c" + f"m{i}\nn\n".encode() + b"0" for i in range(200_000))
    return _with_pickle(tmp_path, b"\x80\x02" + ops + b"}.")


def _pt_of_memo_beyond_the_option(tmp_path: Path) -> Path:
    return _with_pickle(tmp_path, b"\x80\x02(" + b"N\x94" * 2000 + b"l.")  # 2000 MEMOIZE


def _resaved(path: Path, write_pickle) -> bytes:
    """A torch.save of one tensor, zipped again with its data.pkl written
    by `write_pickle(zip, name, data)`."""
    torch.save({"w": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in records.items():
            if name.endswith("data.pkl"):
                write_pickle(z, name, data)
            else:
                z.writestr(name, data)
    return out.getvalue()


def _pt_whose_pickle_inflates_to_gigabytes(tmp_path: Path) -> Path:
    def inflating(z: zipfile.ZipFile, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED  # 300 MB of zeros, 300 KB on disk
        with z.open(info, "w", force_zip64=True) as member:
            for _ in range(300):
                member.write(bytes(1 << 20))

    path = tmp_path / "inflating.pt"
    path.write_bytes(_resaved(path, inflating))
    return path


def _pt_whose_record_lies_about_its_size(tmp_path: Path) -> Path:
    def padded(z: zipfile.ZipFile, name: str, data: bytes) -> None:
        z.writestr(name, data + bytes(50 << 20), compress_type=zipfile.ZIP_DEFLATED)

    path = tmp_path / "lying.pt"
    data = bytearray(_resaved(path, padded))
    for magic, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # declared: 100 bytes
        at = data.find(magic)
        while at >= 0:
            name_length = struct.unpack_from("<H", data, at + (26 if magic == b"PK\x03\x04" else 28))[0]
            name = data[at + (30 if magic == b"PK\x03\x04" else 46):][:name_length]
            if name.endswith(b"data.pkl"):
                struct.pack_into("<I", data, at + size_at, 100)
            at = data.find(magic, at + 4)
    path.write_bytes(bytes(data))
    return path


def _tar_of_negative_size(tmp_path: Path) -> Path:
    path = tmp_path / "negative.nemo"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("model_config.yaml")
        info.size, info.pax_headers = 3, {"size": "-512"}
        tf.addfile(info, io.BytesIO(b"a: "))
    return path


def _tar_of_huge_size(tmp_path: Path) -> Path:
    path = tmp_path / "huge.nemo"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("model_weights.ckpt")
        info.size, info.pax_headers = 3, {"size": str(1 << 60)}
        tf.addfile(info, io.BytesIO(b"abc"))
    return path


def _gzip_nemo(tmp_path: Path, damage) -> Path:
    data = bytearray(gzip.compress((FIXTURES / "nemo" / "tiny.nemo").read_bytes(), mtime=0))
    damage(data)
    path = tmp_path / "damaged.nemo"
    path.write_bytes(bytes(data))
    return path


def _gzip_of_a_flipped_byte(tmp_path: Path) -> Path:
    return _gzip_nemo(tmp_path, lambda data: data.__setitem__(len(data) // 2, data[len(data) // 2] ^ 0x55))


def _gzip_of_a_wrong_length(tmp_path: Path) -> Path:
    return _gzip_nemo(tmp_path, lambda data: struct.pack_into("<I", data, len(data) - 4, 12345))


def _safetensors_of_a_header_past_the_end(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "past.safetensors", {}, b"", header_len=1 << 40)


def _safetensors_of_a_big_metadata(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "meta.safetensors", {"__metadata__": {"k": "x" * (20 << 20)},
                                                            "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                             bytes(4))


def _safetensors_of_overlapping_offsets(tmp_path: Path) -> Path:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    return write_safetensors(tmp_path / "overlap.safetensors", header, bytes(12))


CORPUS = {
    "30 levels of a list held twice": (_pt_of_shared_lists, "served", None),
    "60 levels of a dict held twice, in YAML": (_pt_of_shared_dicts_in_yaml, "served", None),
    "one big list shown in 500 YAML files": (_pt_of_many_views_of_one_value, "served", "cannot be shown"),
    "lists nested 100,000 deep": (_pt_of_deep_nesting, "refused", "containers nested deeper than 200"),
    "a key of 64 levels of shared tuples": (_pt_of_shared_tuple_key, "served", None),
    "32 such keys, alike when cut": (_pt_of_keys_alike_when_cut, "served", None),
    "bytearray(3e9) through REDUCE": (_pt_of_bytearray_request, "served", None),
    "200,000 distinct globals": (_pt_of_many_globals, "served", None),
    "a memo beyond -o max_pickle_memo=1000": (_pt_of_memo_beyond_the_option, "refused", "memo larger than 1000"),
    "data.pkl that inflates to 300 MB": (_pt_whose_pickle_inflates_to_gigabytes, "refused", "above the limit"),
    "a record that inflates past its declared size": (_pt_whose_record_lies_about_its_size, "refused", None),
    "a tar member of negative size": (_tar_of_negative_size, "refused", "negative size"),
    "a tar member of 2^60 bytes": (_tar_of_huge_size, "refused", None),
    "a gzip .nemo with a flipped byte": (_gzip_of_a_flipped_byte, "refused", "gzip stream is truncated or corrupt"),
    "a gzip .nemo with a wrong length": (_gzip_of_a_wrong_length, "refused", "gzip stream is truncated or corrupt"),
    "a safetensors header past the end": (_safetensors_of_a_header_past_the_end, "refused", None),
    "a 20 MB __metadata__": (_safetensors_of_a_big_metadata, "served", None),
    "overlapping safetensors offsets": (_safetensors_of_overlapping_offsets, "refused", "overlap"),
}
OPTIONS = {"a memo beyond -o max_pickle_memo=1000": ("-o", "max_pickle_memo=1000")}


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_hostile_file_is_refused_in_one_line_or_served_within_budget(name, tmp_path):
    make, outcome, says = CORPUS[name]
    source = make(tmp_path)
    before = source.read_bytes()
    mnt = tmp_path / "mnt"
    try:
        done = _mount_capped(source, mnt, *OPTIONS.get(name, ()))
        if outcome == "refused":
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, done.stderr
            assert lines[0].startswith(f"ckptfs: {source}") and "internal error" not in lines[0], lines[0]
            assert says is None or says in lines[0], lines[0]
            assert not is_mounted(mnt)
        else:
            assert done.returncode == 0, done.stderr
            failed = _read_everything(mnt)
            assert not failed, failed
            if says is not None:
                assert any(says in p.read_text() for p in mnt.rglob("*.yaml") if not p.is_symlink())
            assert run_ckptfs("umount", mnt, timeout=TIME_CAP).returncode == 0
        assert source.read_bytes() == before
    finally:
        force_unmount(mnt)


def test_a_shared_graph_is_shown_as_a_graph(tmp_path, mount):
    mnt = mount(_pt_of_shared_lists(tmp_path), "-o", "ro")
    assert os.readlink(mnt / "a" / "1") == "0" and os.readlink(mnt / "a" / "0" / "0" / "1") == "0"
    leaf = mnt / "a" / Path(*["1"] * 30) / "0.npy"  # through 30 links, to the one tensor
    assert leaf.read_bytes() == (mnt / "a" / Path(*["0"] * 30) / "0.npy").read_bytes()
    folders = [f for f, _, _ in os.walk(mnt / "a")]
    assert len(folders) == 31
