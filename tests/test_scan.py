"""`ckptfs scan`: every global a checkpoint's pickles name, wherever torch
would find them, against the allowlist; checked against torch's own
`get_unsafe_globals_in_checkpoint` and against what torch.load really runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.serialization import get_unsafe_globals_in_checkpoint

from ckptfs.pickle.allowlist import SAFE, canonical
from ckptfs.pickle.inert import Global
from ckptfs.scan import scan

from .conftest import FIXTURES, TIMEOUT, run_ckptfs

REAL = [FIXTURES / "nemo" / "tiny.nemo", FIXTURES / "lightning" / "tiny.ckpt", FIXTURES / "dcp" / "fsdp2_2rank",
        FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", FIXTURES / "hf" / "bert_tiny_sharded"]


class Payload:
    """Pickles as a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _scan_cli(*args) -> tuple[int, dict]:
    done = run_ckptfs("scan", "--json", *map(str, args))
    assert done.returncode in (0, 1, 2), done.stderr
    return done.returncode, json.loads(done.stdout)


def _dangerous(report) -> set[tuple[str, str]]:
    return {(f.glob.path, f.location) for f in report.dangerous}


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_checkpoints_are_safe(path):
    code, report = _scan_cli(path)
    assert (code, report["verdict"], report["dangerous"], report["problems"]) == (0, "safe", [], [])
    if path.suffix in (".ckpt", ".pt"):  # the globals its opcodes name, every one of them on the allowlist
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        named = {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
        assert named == {g for p in report["pickles"] for g in p["globals"]}
        if path.suffix == ".pt":  # torch's own list for weights_only is stricter: no OmegaConf
            assert get_unsafe_globals_in_checkpoint(str(path)) == []


def test_the_allowlist_holds_everything_torch_loads_with_weights_only():
    from torch._weights_only_unpickler import _get_allowed_globals

    missing = [path for path in _get_allowed_globals() if tuple(path.rsplit(".", 1)) not in SAFE]
    assert missing == []


def test_a_payload_in_data_pkl_is_named_where_it_is(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(3), "hook": Payload(tmp_path / "ran")}, evil)
    code, report = _scan_cli(evil)
    assert code == 1 and report["verdict"] == "dangerous"
    assert [(d["global"], d["location"]) for d in report["dangerous"]] == [("posix.system", "evil.pt:evil/data.pkl")]
    assert set(get_unsafe_globals_in_checkpoint(str(evil))) <= {d["global"] for d in report["dangerous"]}
    assert not (tmp_path / "ran").exists()
    text = run_ckptfs("scan", str(evil))
    assert text.returncode == 1
    assert "DANGEROUS" in text.stdout and "posix.system  in evil.pt:evil/data.pkl: runs shell commands" in text.stdout


def test_a_renamed_DATA_PKL_that_torch_loads_is_scanned(tmp_path):
    """miniz, under torch.load, finds `archive/data.pkl` ignoring case: a
    scanner that looks for `data.pkl` only is bypassed (a published trick)."""
    plain, renamed = tmp_path / "plain.pt", tmp_path / "renamed.pt"
    torch.save({"w": torch.ones(3), "hook": Payload(tmp_path / "ran")}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename.replace("data.pkl", "DATA.PKL"), src.read(info))
    code, report = _scan_cli(renamed)
    assert code == 1
    assert [(d["global"], d["location"]) for d in report["dangerous"]] == [("posix.system",
                                                                             "renamed.pt:plain/DATA.PKL")]
    assert not (tmp_path / "ran").exists()
    # torch does load it, payload and all (in a child, on this file only)
    loaded = subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(renamed)!r}, weights_only=False)"],
                            capture_output=True, timeout=TIMEOUT)
    assert loaded.returncode == 0 and (tmp_path / "ran").exists()
    # and so does ckptfs, without running it
    info = run_ckptfs("info", "--json", str(renamed))
    assert info.returncode == 0 and json.loads(info.stdout)["unsafe_globals"] == ["posix.system"]


def test_legacy_torch_save_every_pickle_is_read(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2), "hook": Payload(tmp_path / "ran")}, legacy, _use_new_zipfile_serialization=False)
    report = scan(str(legacy))
    assert _dangerous(report) == {("posix.system", "legacy.pt (pickle 4)")}
    assert len(report.pickles) == 5  # magic number, protocol, system info, the object, storage keys
    # a payload in the system-info pickle, which torch.load unpickles before the object
    clean = tmp_path / "clean.pt"
    torch.save({"w": torch.ones(2)}, clean, _use_new_zipfile_serialization=False)
    assert scan(str(clean)).verdict == "safe"
    data = clean.read_bytes()
    header = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    assert data.startswith(header)
    forged = tmp_path / "forged.pt"
    forged.write_bytes(header + pickle.dumps(Payload(tmp_path / "ran"), protocol=2) + data[len(header):])
    assert _dangerous(scan(str(forged))) == {("posix.system", "forged.pt (pickle 3)")}


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_distributed_checkpoint_items_and_chunks(tmp_path):
    out = tmp_path / "dcp"
    dcp.save({"w": torch.arange(6.0), "extra": {"hook": Payload(tmp_path / "ran")}},
             storage_writer=dcp.FileSystemWriter(str(out)), no_dist=True)
    report = scan(str(out))
    assert report.verdict == "dangerous" and not report.problems
    [(name, location)] = _dangerous(report)
    assert name == "posix.system" and location.startswith("__0_0.distcp@") and "(extra.hook)" in location
    assert any(p["location"] == ".metadata" for p in report.pickles)
    assert any("(w)" in p["location"] for p in report.pickles)  # the tensor's chunk, a torch.save zip too
    # inside a .nemo, as Megatron models keep one
    nemo = tmp_path / "megatron.nemo"
    with tarfile.open(nemo, "w:") as tar:
        tar.add(out, arcname="./model_weights")
    [(name, location)] = _dangerous(scan(str(nemo)))
    assert location.startswith("megatron.nemo:model_weights/__0_0.distcp@")
    # metadata that cannot be read: no verdict, but the other pickles still are
    (out / ".metadata").write_bytes(b"\x80\x04N.")
    report = scan(str(out))
    assert report.verdict == "error" and "items cannot be found" in report.problems[0]


def test_nested_and_compressed_containers(tmp_path):
    evil = io.BytesIO()
    torch.save({"hook": Payload(tmp_path / "ran")}, evil)
    for mode, name in (("w:", "old.nemo"), ("w:gz", "older.nemo")):
        path = tmp_path / name
        with tarfile.open(path, mode) as tar:
            for member, data in (("./model_config.yaml", b"a: 1\n"), ("./model_weights.ckpt", evil.getvalue()),
                                 ("./tokenizer/extra.pkl", pickle.dumps(Payload("x"), protocol=0))):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        found = _dangerous(scan(str(path), cache_dir=str(tmp_path / "cache")))
        assert found == {("posix.system", f"{name}:model_weights.ckpt:archive/data.pkl"),
                         ("posix.system", f"{name}:tokenizer/extra.pkl")}
    # a deflated pickle record in a zip, and a zip stored inside a zip
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("a/notes.pickle", pickle.dumps(Payload("x"), protocol=4), compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("a/inner.pt", evil.getvalue(), compress_type=zipfile.ZIP_STORED)
        z.writestr("a/old.pt", pickle.dumps(Payload("x"), protocol=0), compress_type=zipfile.ZIP_STORED)
    assert _dangerous(scan(str(outer))) == {("posix.system", "outer.zip:a/notes.pickle"),
                                            ("posix.system", "outer.zip:a/inner.pt:archive/data.pkl"),
                                            ("posix.system", "outer.zip:a/old.pt")}


def test_attribute_chains_and_python2_names():
    """Protocol 4 resolves a dotted name through getattr: `builtins` with
    `print.__class__` is not `builtins.print`; Python 2 names are mapped."""
    from ckptfs.pickle.allowlist import classify

    chain = classify(Global("builtins", "dict.__class__"))
    assert not chain.safe and "attribute chain" in chain.reason
    assert not classify(Global("torch", "_utils._rebuild_tensor_v2")).safe  # exact pairs only
    assert classify(Global("torch._utils", "_rebuild_tensor_v2")).safe
    assert canonical(Global("__builtin__", "long")) == ("builtins", "int")
    assert classify(Global("__builtin__", "set")).safe
    assert not classify(Global("__builtin__", "eval")).safe
    assert "runs Python code" in classify(Global("__builtin__", "eval")).reason
    assert not classify(Global("mypackage.models", "Net")).safe


def test_stack_global_strings_are_followed_through_the_memo(tmp_path):
    # STACK_GLOBAL's strings memoized first and fetched back: the names are found all the same
    body = (b"\x8c\x02os\x94\x8c\x06system\x94" + b"0" * 2 + b"h\x00h\x01\x93" + b"\x8c\x04true\x85R.")
    path = tmp_path / "memo.pkl"
    path.write_bytes(b"\x80\x04" + body)
    assert {g for g, _ in _dangerous(scan(str(path)))} == {"os.system"}


def test_a_pickle_the_interpreter_cannot_follow_is_read_by_its_opcodes(tmp_path):
    # os.system, then an APPEND to it: pickle.load imports os.system before it fails
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"\x80\x02cos\nsystem\nK\x01a.")
    report = scan(str(broken))
    assert _dangerous(report) == {("os.system", "broken.pkl")}
    assert report.pickles[0]["problem"] and report.pickles[0]["whole"]
    # strings that reach STACK_GLOBAL through DUP and POP: not followed, so reported unnamed
    unnamed = tmp_path / "unnamed.pkl"
    unnamed.write_bytes(b"\x80\x04\x8c\x02os\x8c\x06system20\x93K\x01a.")
    [found] = scan(str(unnamed)).dangerous
    assert found.glob.module == "?" and "could not be followed" in found.verdict.reason
    # a file named like a pickle that is none: nothing to report
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01\x02 binary data")
    assert scan(str(tmp_path / "notes.bin")).verdict == "safe"


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (0x280 - len(header))  # 640 bytes: the file starts 80 02, as a protocol 2 pickle does
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    report = scan(str(path))
    assert (report.verdict, report.pickles) == ("safe", [])


def test_allow_limits_and_trouble(tmp_path):
    custom = tmp_path / "custom.pt"
    torch.save({"w": torch.ones(2), "opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)}, custom)
    code, report = _scan_cli(custom)
    assert code == 1 and {d["global"] for d in report["dangerous"]} >= {"torch.optim.sgd.SGD"}
    unsafe = set(get_unsafe_globals_in_checkpoint(str(custom)))  # torch's list also has dict and defaultdict
    assert {g for g in unsafe if tuple(g.rsplit(".", 1)) not in SAFE} <= {d["global"] for d in report["dangerous"]}
    allowed = [a for g in sorted(unsafe) for a in ("--allow", g.rsplit(".", 1)[0] + ".*")]
    assert _scan_cli(custom, *allowed)[0] == 0
    # a limit below the pickle's size: no verdict
    code, report = _scan_cli(FIXTURES / "lightning" / "tiny.ckpt", "-o", "max_pickle_bytes=100")
    assert code == 2 and "not scanned to its end" in report["problems"][0]
    done = run_ckptfs("scan", str(custom), "-o", "ro")
    assert done.returncode == 2 and "unknown option 'ro'" in done.stderr
    # unreadable: one line, exit 2
    missing = run_ckptfs("scan", str(tmp_path / "nothing.pt"))
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr.strip() == f"ckptfs: {tmp_path / 'nothing.pt'}: No such file or directory"
    torn = tmp_path / "torn.pt"
    torn.write_bytes(custom.read_bytes()[:-200])
    done = run_ckptfs("scan", str(torn))
    assert done.returncode == 2 and "cannot scan: torn.pt: not a readable zip archive" in done.stdout


def test_a_large_file_is_read_only_as_far_as_its_pickles_go(tmp_path):
    """A big file named like a pickle but holding none costs a first read,
    not the 256 MiB bound; a pickle longer than the first read is read on."""
    raw = tmp_path / "vectors.bin"
    with open(raw, "wb") as f:
        f.write(b"\x00" * 4096)
        f.truncate(1 << 30)  # sparse: 1 GiB that no pickle parser could want
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert scan(str(raw)).verdict == "safe"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: well under the bound
    big = tmp_path / "big.pkl"
    big.write_bytes(pickle.dumps([bytes(3 << 20), Payload("x")], protocol=2))
    assert _dangerous(scan(str(big))) == {("posix.system", "big.pkl")}


def test_an_object_array_in_an_npz_is_a_pickle_np_load_would_load(tmp_path):
    """np.load(allow_pickle=True) unpickles an object array's data."""
    import numpy as np

    path = tmp_path / "arrays.npz"
    np.savez(path, plain=np.arange(3), objects=np.array([Payload(tmp_path / "ran"), 1], dtype=object))
    assert _dangerous(scan(str(path))) == {("posix.system", "arrays.npz:objects.npy (its objects)")}
    np.savez_compressed(tmp_path / "packed.npz", objects=np.array([Payload(tmp_path / "ran")], dtype=object))
    assert _dangerous(scan(str(tmp_path / "packed.npz"))) == {("posix.system", "packed.npz:objects.npy (its objects)")}
    np.savez(tmp_path / "clean.npz", plain=np.arange(3))
    assert scan(str(tmp_path / "clean.npz")).verdict == "safe"
    assert not (tmp_path / "ran").exists()


def test_deepspeed_classes_on_the_allowlist_unpickle_as_plain_data():
    """The reasoning beside each DeepSpeed entry of the allowlist, checked
    against the installed DeepSpeed: unpickling runs none of its code."""
    import dataclasses
    import enum

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from ckptfs.pickle.allowlist import GROUPS

    hooks = {"__new__", "__setstate__", "__reduce__", "__reduce_ex__", "__getattr__", "__getattribute__"}
    for cls in (fragment_address, LossScaler, DynamicLossScaler):
        assert f"{cls.__module__}.{cls.__qualname__}" in GROUPS["DeepSpeed training state"]
        assert not [k for klass in cls.__mro__[:-1] for k in vars(klass) if k in hooks], cls
    assert dataclasses.is_dataclass(fragment_address)
    assert issubclass(ZeroStageEnum, enum.Enum) and "_missing_" not in vars(ZeroStageEnum)
    assert ZeroStageEnum.__new__ is enum.Enum.__new__ or "__new__" not in vars(ZeroStageEnum)
    scaler = DynamicLossScaler(2.0**16, 1000, 1.0, 2, False)
    saved = io.BytesIO()
    torch.save({"loss_scaler": scaler, "zero_stage": ZeroStageEnum(2), "map": {"w": fragment_address(4, 0)}}, saved)
    saved.seek(0)
    path = io.BytesIO(saved.getvalue())
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    from ckptfs.pickle.allowlist import classify
    from ckptfs.pickle.audit import audit

    assert all(classify(g).safe for g in audit(data).globals)


def test_a_pickle_that_breaks_off_is_no_verdict(tmp_path):
    """What pickle.load would do past where the pickle stops reading is not
    known: never "safe"."""
    torn = tmp_path / "torn.pkl"
    torn.write_bytes(b"\x80\x02]q\x00(K\x01")
    report = scan(str(torn))
    assert report.verdict == "error" and "breaks off at byte" in report.problems[0]
    # bytes without PROTO that break off naming no global are no pickle: pickle.load imports nothing
    (tmp_path / "vocab.dat").write_bytes(b"(K\x01\x00\x00 raw bytes")
    assert (scan(str(tmp_path / "vocab.dat")).verdict, scan(str(tmp_path / "vocab.dat")).pickles) == ("safe", [])
    # a text file is read as a pickle only if it starts with PROTO, and noted
    (tmp_path / "hparams.yaml").write_text("cfg:\n  lr: 0.1\n")
    report = scan(str(tmp_path / "hparams.yaml"))
    assert report.verdict == "safe" and "named as text" in report.notes[0]


def test_what_a_tar_leads_to_outside_itself_is_a_problem(tmp_path):
    evil = io.BytesIO()
    torch.save({"hook": Payload(tmp_path / "ran")}, evil)
    path = tmp_path / "links.nemo"
    with tarfile.open(path, "w") as tar:
        for name, kind, target in (("./real.ckpt", tarfile.REGTYPE, ""), ("./model_weights.ckpt", tarfile.SYMTYPE,
                                   "real.ckpt"), ("./out.ckpt", tarfile.SYMTYPE, "/etc/passwd"),
                                   ("./pipe", tarfile.FIFOTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            data = evil.getvalue() if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = scan(str(path))
    assert _dangerous(report) == {("posix.system", "links.nemo:real.ckpt:archive/data.pkl"),
                                  ("posix.system", "links.nemo:model_weights.ckpt:archive/data.pkl")}
    assert sorted(p.split(":")[1].split(" ")[0] for p in report.problems) == ["./pipe", "out.ckpt"]
    # in a folder: a FIFO is not read, and says so
    os.mkfifo(tmp_path / "weights.bin")
    (tmp_path / "folder").mkdir()
    os.rename(tmp_path / "weights.bin", tmp_path / "folder" / "weights.bin")
    report = scan(str(tmp_path / "folder"))
    assert report.verdict == "error" and report.problems[0].startswith("weights.bin: not a regular file")


def test_torch_tar_format_is_followed_past_large_storages(tmp_path):
    """torch.load's tar format: a pickle after the raw bytes of a storage
    larger than what is read for pickles is found by the sizes torch reads."""
    n = 600_000  # 2.4 MB of float32
    for views, verdict in (([], "safe"), (Payload(tmp_path / "ran"), "dangerous")):
        storages = (pickle.dumps(1, protocol=2) + pickle.dumps(("0", "cpu", torch.FloatStorage), protocol=2)
                    + struct.pack("<q", n) + bytes(4 * n) + pickle.dumps(views, protocol=2))
        path = tmp_path / f"{verdict}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in (("storages", storages), ("tensors", pickle.dumps(0, protocol=2)),
                               ("pickle", pickle.dumps({"a": 1}, protocol=2))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        report = scan(str(path))
        assert (report.verdict, report.problems) == (verdict, [])
        assert len(report.pickles) == 5  # count, storage, views; tensors' count; the object
    assert _dangerous(report) == {("posix.system", f"dangerous.tar:storages (pickle 3 at byte {59 + 4 * n})")}
    assert torch.load(tmp_path / "safe.tar", weights_only=False) == {"a": 1}  # torch reads it so


def test_a_tar_is_also_read_from_its_first_byte_as_a_pickle_without_false_alarms(tmp_path):
    """pickle.load and np.load(allow_pickle=True) read a tar from its first
    byte: a first member named `config.yaml` reads as a GLOBAL of a module
    whose name holds NUL, which no import finds (nothing runs); the same
    bytes with the module named plainly are dangerous."""
    def tar_of(name: str) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            info = tarfile.TarInfo(name)
            body = b"a: 1\nb: 2\n"
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        return out.getvalue()

    plain = tmp_path / "plain.tar"
    plain.write_bytes(tar_of("config.yaml"))
    assert scan(str(plain)).verdict == "safe"
    with pytest.raises(Exception):  # what pickle.load makes of it: no module answers
        pickle.loads(plain.read_bytes())
    hidden = tmp_path / "hidden.tar"
    data = bytearray(tar_of("x"))
    data[:12] = b"cos\nsystem\n."  # a GLOBAL in the name field: pickle.load imports os.system
    data[148:156] = b" " * 8  # the header's checksum, made again: still a tar to tarfile
    data[148:156] = b"%06o\0 " % sum(data[:512])
    hidden.write_bytes(bytes(data))
    with tarfile.open(hidden) as tf:
        assert tf.getnames() == ["cos\nsystem\n."]
    report = scan(str(hidden))
    assert report.verdict == "dangerous" and [f.glob.path for f in report.dangerous] == ["os.system"]
