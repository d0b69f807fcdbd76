"""Hostile pickles in torch.save zips: graphs that explode when copied
out, nesting, memo and opcode budgets, records that inflate or lie."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import torch

from ..test_torch_zip import _with_pickle
from . import Case


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

CASES = {
    "30 levels of a list held twice": Case(_pt_of_shared_lists, "served"),
    "60 levels of a dict held twice, in YAML": Case(_pt_of_shared_dicts_in_yaml, "served"),
    "one big list shown in 500 YAML files": Case(_pt_of_many_views_of_one_value, "served", "cannot be shown"),
    "lists nested 100,000 deep": Case(_pt_of_deep_nesting, "refused", "containers nested deeper than 200"),
    "a key of 64 levels of shared tuples": Case(_pt_of_shared_tuple_key, "served"),
    "32 such keys, alike when cut": Case(_pt_of_keys_alike_when_cut, "served"),
    "bytearray(3e9) through REDUCE": Case(_pt_of_bytearray_request, "served"),
    "200,000 distinct globals": Case(_pt_of_many_globals, "served"),
    "a memo beyond -o max_pickle_memo=1000": Case(_pt_of_memo_beyond_the_option, "refused", "memo larger than 1000",
                                                  options=("-o", "max_pickle_memo=1000")),
    "data.pkl that inflates to 300 MB": Case(_pt_whose_pickle_inflates_to_gigabytes, "refused", "above the limit"),
    "a record that inflates past its declared size": Case(_pt_whose_record_lies_about_its_size, "refused"),
}
