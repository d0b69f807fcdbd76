"""torch.save zips read without running anything, compared with
torch.load(weights_only=False) in the test process, bit for bit."""

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import ml_dtypes  # noqa: F401  (bfloat16 and float8 for np.load)
import numpy as np
import pytest
import torch
import yaml

from .conftest import FIXTURES, TIMEOUT, is_mounted, run_ckptfs
from .hostile import zips

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64,
    torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.float8_e4m3fn, torch.float8_e5m2,
]


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _npy(mnt: Path, *parts: str) -> Path:
    return mnt.joinpath(*parts[:-1], parts[-1] + ".npy")


def _walk(obj, prefix=()):
    """(path parts, tensor) for every tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, prefix + tuple(str(k).split(".")))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, prefix + (str(i),))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=gen)
    shared = torch.arange(20, dtype=torch.float32)
    obj = {
        "dtypes": {str(d).split(".")[1]: torch.randint(0, 100, (3, 4), generator=gen).to(d) for d in DTYPES},
        "views": {
            "transposed": base.t(),
            "sliced": base[1:5, 2:7],
            "every_other": base[:, ::2],
            "offset_row": base[3],
            "column": base[:, 5],
            "permuted": torch.randn(2, 3, 4, generator=gen).permute(2, 0, 1),
        },
        "tied": {"a": shared, "b": shared, "head": shared[5:15].view(2, 5)},
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "param": torch.nn.Parameter(torch.ones(3, 2)),
        "nested": [{"x": torch.zeros(2)}, [torch.ones(1), 7]],
        "meta": {"step": 12, "lr": 1e-4, "name": "run", "tuple": (1, 2)},
    }
    path = tmp_path_factory.mktemp("tz") / "generated.pt"
    torch.save(obj, path)
    return path


def test_every_tensor_matches_torch_load(mount, generated):
    mnt = Path(mount(generated))
    reference = torch.load(generated, weights_only=False)
    count = 0
    for parts, tensor in _walk(reference):
        path = _npy(mnt, *parts)
        for loaded in (np.load(path), np.load(path, mmap_mode="r")):
            assert loaded.shape == tuple(tensor.shape), parts
            assert loaded.tobytes() == _bytes(tensor), parts
        assert os.getxattr(path, "user.ckptfs.dtype").decode() == str(tensor.dtype).split(".")[1]
        count += 1
    assert count >= 30


def test_views_are_gathered_in_c_order_for_any_read(mount, generated):
    mnt = Path(mount(generated))
    reference = torch.load(generated, weights_only=False)["views"]["transposed"]
    path = _npy(mnt, "views", "transposed")
    whole = path.read_bytes()
    header = whole.index(b"\n") + 1
    assert whole[header:] == _bytes(reference)
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, len(whole), 7):
            for length in (1, 5, 33):
                assert os.pread(fd, length, off) == whole[off : off + length]
    finally:
        os.close(fd)


def test_other_values_are_yaml(mount, generated):
    mnt = Path(mount(generated))
    assert yaml.safe_load((mnt / "meta.yaml").read_text()) == {"step": 12, "lr": 1e-4, "name": "run", "tuple": [1, 2]}
    assert yaml.safe_load((mnt / "nested" / "1" / "1.yaml").read_text()) == 7
    pickle_globals = (mnt / ".ckptfs" / "pickle-globals.txt").read_text()
    assert "torch._utils._rebuild_tensor_v2" in pickle_globals and "torch.FloatStorage" in pickle_globals


def test_lightning_fixture(mount):
    ckpt = FIXTURES / "lightning" / "tiny.ckpt"
    mnt = Path(mount(ckpt))
    reference = torch.load(ckpt, weights_only=False)
    for parts, tensor in _walk({"state_dict": reference["state_dict"], "optimizer_states": reference["optimizer_states"]}):
        assert np.load(_npy(mnt, *parts)).tobytes() == _bytes(tensor), parts
    hp = yaml.safe_load((mnt / "hyper_parameters.yaml").read_text())
    assert hp["cfg"]["model"]["hidden"] == 16
    assert hp["cfg"]["model"]["dims"] == [8, 16, 1]
    assert hp["cfg"]["data"]["path"] == "${oc.env:HOME}/data"  # interpolation kept as written
    assert hp["lr"] == 0.01 and hp["name"] == "run2"
    assert (mnt / "epoch.yaml").read_text() == "3\n"  # three epochs, counted from 0, ended at 3
    assert yaml.safe_load((mnt / "global_step.yaml").read_text()) == reference["global_step"]
    groups = yaml.safe_load((mnt / "optimizer_states" / "0" / "param_groups.yaml").read_text())
    assert len(groups) == 2 and groups[0]["params"] == [0, 1]
    assert "omegaconf.dictconfig.DictConfig" in (mnt / ".ckptfs" / "pickle-globals.txt").read_text()


def test_nemo_fixture_weights_expand_in_place(mount):
    nemo = FIXTURES / "nemo" / "tiny.nemo"
    mnt = Path(mount(nemo))
    with tarfile.open(nemo) as tf:
        raw = tf.extractfile("./model_weights.ckpt").read()
    reference = torch.load(io.BytesIO(raw), weights_only=False)
    assert (mnt / "model_weights.ckpt").is_dir()
    for name, tensor in reference.items():
        path = _npy(mnt / "model_weights.ckpt", *name.split("."))
        assert np.load(path).tobytes() == _bytes(tensor), name
        start, end = map(int, os.getxattr(path, "user.ckptfs.range").split(b"-"))
        assert nemo.read_bytes()[start:end] != b""  # a byte range of the .nemo itself
    assert (mnt / ".ckptfs" / "raw" / "model_weights.ckpt").read_bytes() == raw
    assert torch.load(mnt / ".ckptfs" / "raw" / "model_weights.ckpt", weights_only=False).keys() == reference.keys()
    assert len(list((mnt / "model_weights.ckpt").rglob("*.npy"))) == len(reference)


def test_code_in_the_pickle_is_never_run(mount, tmp_path):
    marker = tmp_path / "pwned"
    module_dir = tmp_path / "evil_mod"
    module_dir.mkdir()
    (module_dir / "ckptfs_evil_marker.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")

    class Reduce:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = {"weights": torch.ones(3), "payload": Reduce()}
    path = tmp_path / "evil.pt"
    torch.save(evil, path)
    # a global naming a module that writes the marker when imported
    with zipfile.ZipFile(path) as z:
        original = z.read("evil/data.pkl")
    data = original.replace(b"posix\nsystem", b"ckptfs_evil_marker\nrun")
    assert data != original
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "evil2.pt", "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename.endswith("data.pkl") else src.read(info))
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{module_dir}{os.pathsep}{env_path}"
    try:
        for source in (path, tmp_path / "evil2.pt"):
            mnt = Path(mount(source))
            assert np.load(mnt / "weights.npy").tolist() == [1.0, 1.0, 1.0]
            payload = (mnt / "payload.yaml").read_text()
            assert "!python/object:" in payload
            assert not marker.exists()
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert "ckptfs_evil_marker" not in sys.modules


def test_truncated_and_broken_zips_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "not a readable zip archive"),
        "nopickle.pt": (_zip({"archive/other": b"x"}), "without data.pkl"),
        "script.pt": (_zip({"archive/constants.pkl": b"x", "archive/x": b""}), "TorchScript"),
        "badpickle.pt": (_zip({"archive/data.pkl": b"\x80\x02\xff."}), "data.pkl"),
        "stray.pt": (_zip({"archive/data.pkl": b"\x80\x02}.", "archive/version": b"3\n", "elsewhere/x": b""}),
                     "outside the folder 'archive'"),
    }
    (tmp_path / "stray-only.pt").write_bytes(cases["stray.pt"][0])  # torch.load refuses it too
    assert "not in a subdirectory archive/: elsewhere/x" in _torch_load(tmp_path / "stray-only.pt")
    for name, (content, problem) in cases.items():
        src = tmp_path / name
        src.write_bytes(content)
        mnt = tmp_path / f"mnt-{name}"
        mnt.mkdir()
        done = run_ckptfs("mount", src, mnt)
        assert done.returncode == 1 and problem in done.stderr and str(src) in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not is_mounted(mnt)


def _zip(records: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, data)
    return out.getvalue()


def _with_pickle(tmp_path: Path, pickle_bytes: bytes) -> Path:
    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    records["bomb/data.pkl"] = pickle_bytes
    path.write_bytes(_zip(records))
    return path


def test_recursion_and_reference_bombs_give_clear_errors(tmp_path):
    import pickle

    from ckptfs.errors import FormatError
    from ckptfs.formats import open_checkpoint

    deep = _with_pickle(tmp_path, b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".")
    with pytest.raises(FormatError, match="data.pkl: containers nested deeper than 200"):
        open_checkpoint(str(deep), str(tmp_path / "cache"))

    layer = [1]
    for _ in range(40):  # 2**40 values once every shared reference is followed
        layer = [layer, layer]
    laughs = tmp_path / "laughs"
    laughs.mkdir()
    bomb = _with_pickle(laughs, pickle.dumps({"config": layer}, protocol=2))
    ckpt = open_checkpoint(str(bomb), str(tmp_path / "cache"))
    view = ckpt.root.children["config.yaml"].content
    assert view.size < 10_000  # the graph as a graph: each shared list once, then an alias
    loaded = yaml.safe_load(view.read(0, view.size))
    assert loaded[0] is loaded[1] and loaded[0][0] is loaded[0][1]


def test_numpy_values_and_rng_states(mount, tmp_path):
    state = np.random.RandomState(0).get_state()
    path = tmp_path / "np.pt"
    torch.save({"w": torch.ones(1), "rng": {"numpy": state, "torch": torch.get_rng_state()},
                "scalar": np.float64(2.5), "int": np.int32(7),
                "array": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    mnt = Path(mount(path))
    assert (mnt / "scalar.yaml").read_text() == "2.5\n"
    assert (mnt / "int.yaml").read_text() == "7\n"
    array = (mnt / "array.yaml").read_text()
    assert array.startswith("!numpy.ndarray\n") and "dtype: <f4" in array
    assert yaml.load(array.replace("!numpy.ndarray", ""), Loader=yaml.SafeLoader)["data"] == [[0, 1, 2], [3, 4, 5]]
    numpy_state = (mnt / "rng" / "numpy.yaml").read_text()
    assert "MT19937" in numpy_state and str(int(state[1][0])) in numpy_state
    assert np.load(mnt / "rng" / "torch.npy").tobytes() == _bytes(torch.get_rng_state())


class _Newobj:
    """Pickles as NEWOBJ_EX of a class that, when created, would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce_ex__(self, protocol):
        import copyreg

        return (copyreg.__newobj_ex__, (_Newobj, (str(self.marker),), {"run": True}))


class _Build:
    """Pickles as a harmless call whose BUILD state names a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (dict, (), {"__setstate__": f"touch {self.marker}"})


def _spliced(path: Path, tmp_path: Path, opcodes: bytes) -> Path:
    """`path`'s archive with the payload value (the int 12345) replaced by raw opcodes."""
    with zipfile.ZipFile(path) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    name = next(n for n in records if n.endswith("data.pkl"))
    assert records[name].count(b"M90") == 1  # BININT2 12345
    records[name] = records[name].replace(b"M90", opcodes)
    out = tmp_path / "spliced.pt"
    out.write_bytes(_zip(records))
    return out


@pytest.mark.parametrize("mechanism", ["REDUCE", "EXT1", "NEWOBJ_EX", "BUILD", "INST", "OBJ"])
def test_hostile_checkpoints_serve_tensors_and_run_nothing(mount, tmp_path, mechanism):
    import copyreg
    import pickletools

    marker = tmp_path / "pwned"
    if mechanism in ("INST", "OBJ"):  # protocol 0/1 opcodes spliced into a protocol 2 pickle
        torch.save({"weights": torch.arange(4.0), "payload": 12345}, tmp_path / "base.pt")
        command = f"S'touch {marker}'\n".encode()
        opcodes = b"(" + command + b"ios\nsystem\n" if mechanism == "INST" else b"(cos\nsystem\n" + command + b"o"
        path = _spliced(tmp_path / "base.pt", tmp_path, opcodes)
        mnt = Path(mount(path))
        assert np.load(mnt / "weights.npy").tolist() == [0.0, 1.0, 2.0, 3.0]
        assert (mnt / "payload.yaml").read_text().startswith("!python/object:os.system")
        assert not marker.exists()
        return

    class Reduce:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = {"REDUCE": Reduce(), "EXT1": Reduce(), "NEWOBJ_EX": _Newobj(marker), "BUILD": _Build(marker)}[mechanism]
    path = tmp_path / "hostile.pt"
    if mechanism == "EXT1":
        copyreg.add_extension("posix", "system", 0xF0)
    try:
        torch.save({"weights": torch.arange(4.0), "payload": payload}, path, pickle_protocol=4 if mechanism == "NEWOBJ_EX" else 2)
    finally:
        if mechanism == "EXT1":
            copyreg.remove_extension("posix", "system", 0xF0)
    with zipfile.ZipFile(path) as z:
        ops = {op.name for op, _, _ in pickletools.genops(z.read("hostile/data.pkl"))}
    assert mechanism in ops
    mnt = Path(mount(path))
    assert np.load(mnt / "weights.npy").tolist() == [0.0, 1.0, 2.0, 3.0]
    assert (mnt / "payload.yaml").read_text().startswith("!python/object:")
    assert not marker.exists()


def test_legacy_format_matches_torch_load(mount, tmp_path):
    gen = torch.Generator().manual_seed(1)
    obj = {
        "w": torch.randn(4, 5, generator=gen),
        "t": torch.randn(3, 2, generator=gen).t(),
        "h": torch.ones(3, dtype=torch.float16),
        "i": torch.arange(7),
        "meta": {"epoch": 4},
    }
    path = tmp_path / "old.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] == b"\x80\x02" and not zipfile.is_zipfile(path)
    mnt = Path(mount(path))
    reference = torch.load(path, weights_only=False)
    for name in ("w", "t", "h", "i"):
        assert np.load(mnt / f"{name}.npy").tobytes() == _bytes(reference[name]), name
    assert yaml.safe_load((mnt / "meta.yaml").read_text()) == {"epoch": 4}
    assert "torch (legacy" in (mnt / ".ckptfs" / "info.yaml").read_text()


def test_truncated_legacy_file_names_the_missing_storage(tmp_path):
    from ckptfs.errors import FormatError
    from ckptfs.formats import open_checkpoint

    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match="runs past the end of the file"):
        open_checkpoint(str(path), str(tmp_path / "cache"))


def test_bogus_records_are_named_clearly(tmp_path):
    from ckptfs.errors import FormatError
    from ckptfs.formats import open_checkpoint

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(100)}, path)
    with zipfile.ZipFile(path) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    cases = {
        "big-endian": ({"w/byteorder": b"big"}, "big-endian"),
        "bogus pid": ({"w/data.pkl": b"\x80\x02X\x03\x00\x00\x00abcQ."}, "unknown persistent id"),
        "short storage": ({"w/data/0": b"\x00" * 40}, "'w' needs 400 bytes of storage '0', which holds 40"),
    }
    for case, (changes, problem) in cases.items():
        broken = tmp_path / f"{case}.pt"
        broken.write_bytes(_zip({**records, **changes}))
        with pytest.raises(FormatError, match=problem):
            open_checkpoint(str(broken), str(tmp_path / "cache"))


def test_the_daemon_imports_nothing_the_checkpoint_names(tmp_path):
    """Run the daemon in the foreground under `python -X importtime`, which
    logs every module it imports: no torch, no omegaconf, no planted module."""
    import time

    from .conftest import CKPTFS, require_fuse

    require_fuse()
    module_dir = tmp_path / "planted"
    module_dir.mkdir()
    (module_dir / "ckptfs_planted.py").write_text("x = 1\n")
    torch.save({"weights": torch.ones(2), "payload": 12345}, tmp_path / "base.pt")
    ckpt = _spliced(tmp_path / "base.pt", tmp_path, b"cckptfs_planted\nx\n)R")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=str(module_dir))
    cmd = [CKPTFS[0], "-X", "importtime", *CKPTFS[1:], "mount", "-f", str(ckpt), str(mnt)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert np.load(mnt / "weights.npy").tolist() == [1.0, 1.0]
        assert "ckptfs_planted.x" in (mnt / ".ckptfs" / "pickle-globals.txt").read_text()
        (mnt / "payload.yaml").read_text()
        assert run_ckptfs("umount", mnt).returncode == 0
        _, log = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=60)
    imported = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")}
    assert "ckptfs.fuse.operations" in imported  # the log is the daemon's own
    assert not {m for m in imported if m.split(".")[0] in ("torch", "omegaconf", "ckptfs_planted")}


# ---------------------------------------------------------------- a zip read as torch reads it


def _torch_load(path: Path, weights_only: bool = True) -> str:
    """What torch.load gives for `path`, in a throwaway child process: the
    repr of what it loaded, or 'error: ' and its last line."""
    code = f"import torch; print(torch.load({str(path)!r}, weights_only={weights_only}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    return done.stdout.strip() if done.returncode == 0 else "error: " + done.stderr.strip().splitlines()[-1]


def _zipfile_storage(path: Path) -> list[float]:
    with zipfile.ZipFile(path) as z:
        return np.frombuffer(z.read("archive/data/0"), np.float32).tolist()


def _refused_in_one_line(done: subprocess.CompletedProcess, source: Path) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"ckptfs: {source}: ") and "internal error" not in lines[0], lines[0]
    return lines[0]


def test_two_archives_concatenated_are_refused_where_torch_reads_the_first(tmp_path, mnt):
    """Item 3 of issue 26: zipfile (which ckptfs used) read the second
    archive, torch.load the first; mount, info, diff, export and scan all
    saw the benign one."""
    pair = zips.pair_of_weights(tmp_path)
    assert _torch_load(pair) == "{'w': tensor([9., 9.])}"
    assert _zipfile_storage(pair) == [1.0, 1.0]
    saved_pair = tmp_path / "saved-pair.pt"  # torch.save's own archives, zip64 end records and all
    saved_pair.write_bytes(b"".join(zips.torch_bytes({"w": torch.tensor([v, v])}) for v in (9.0, 1.0)))
    assert _torch_load(saved_pair) == "{'w': tensor([9., 9.])}"
    assert _zipfile_storage(saved_pair) == [1.0, 1.0]
    command = zips.pair_running_a_command(tmp_path)
    assert _zipfile_storage(command) == [1.0, 1.0]
    assert _torch_load(command, weights_only=False) == "0" and (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    for source in (pair, saved_pair, command):
        line = _refused_in_one_line(run_ckptfs("mount", source, mnt), source)
        assert zips.SAYS in line and "concatenated" in line, line
        assert not is_mounted(mnt)
        _refused_in_one_line(run_ckptfs("info", source), source)
        _refused_in_one_line(run_ckptfs("diff", source, plain), source)
        _refused_in_one_line(run_ckptfs("export", source, tmp_path / f"{source.stem}.safetensors"), source)
        assert not (tmp_path / f"{source.stem}.safetensors").exists()
        done = run_ckptfs("scan", "--json", source)
        report = json.loads(done.stdout)
        assert done.returncode == 1 and report["verdict"] == "dangerous", done.stdout
        assert any("concatenated" in d["reason"] and d["location"] == source.name for d in report["dangerous"])
    assert "os.system" in run_ckptfs("scan", command).stdout  # the pickle torch loads is the one scanned
    assert not (tmp_path / "ran").exists()


#: each way torch.load and other readers part: the builder, what torch.load
#: (weights_only unless it runs a command) gives, and what zipfile makes of it
DISAGREEMENTS = {
    "local name": (zips.local_name_of_another_record, "{'w': tensor([1., 1.])}", "File name in directory"),
    "local sizes": (zips.local_sizes_that_differ, "{'w': tensor([1., 1.])}", [1.0, 1.0]),
    "CRC": (zips.pickle_of_a_wrong_crc, "{'w': tensor([1., 1.])}", "Bad CRC-32"),
    "named twice": (zips.storage_named_twice, "{'w': tensor([9., 9.])}", [1.0, 1.0]),
    "named twice, other case": (zips.storage_named_twice_in_other_case, "{'w': tensor([9., 9.])}", [1.0, 1.0]),
    "folder": (zips.storage_marked_as_folder, None, [1.0, 1.0]),
    "hidden bytes": (zips.archive_after_hidden_bytes, "{'w': tensor([1., 1.])}", [1.0, 1.0]),
    "trailing signature": (zips.end_signature_in_trailing_bytes, "{'w': tensor([1., 1.])}", "not a zip file"),
    "long directory": (zips.directory_longer_than_its_count, "{'w': tensor([1., 1.])}", [1.0, 1.0]),
    "zip64 locator": (zips.zip64_locator_elsewhere, "{'w': tensor([1., 1.])}", [1.0, 1.0]),
    "overlap": (zips.record_over_the_next, "{'w': tensor([1., 1.])}", [1.0, 1.0]),
    "NUL": (zips.name_cut_by_a_nul, "0", [1.0, 1.0]),
}


@pytest.mark.parametrize("case", list(DISAGREEMENTS))
def test_each_way_the_readers_part_is_refused_and_scanned_as_dangerous(tmp_path, case):
    from ckptfs.errors import FormatError
    from ckptfs.formats import open_checkpoint
    from ckptfs.scan import scan

    build, loaded, zipfile_reads = DISAGREEMENTS[case]
    path = build(tmp_path)
    runs = loaded == "0"
    got = _torch_load(path, weights_only=not runs)
    assert not got.startswith("error") and (loaded is None or got == loaded), got
    assert (tmp_path / "ran").exists() == runs
    (tmp_path / "ran").unlink(missing_ok=True)
    if isinstance(zipfile_reads, str):
        with pytest.raises(zipfile.BadZipFile, match=zipfile_reads), zipfile.ZipFile(path) as z:
            z.read(zips.PKL)
    else:
        assert _zipfile_storage(path) == zipfile_reads
    with pytest.raises(FormatError, match=zips.SAYS):
        open_checkpoint(str(path), str(tmp_path / "cache"))
    report = scan(str(path))
    assert report.verdict == "dangerous", report.to_json()
    assert any(zips.SAYS in f.verdict.reason for f in report.dangerous), report.to_json()
    assert not (tmp_path / "ran").exists()


def _zipfile_view(source) -> list[tuple]:
    from ckptfs.sources.base import SeekableReader

    with zipfile.ZipFile(SeekableReader(source)) as z:
        return [(i.filename, i.header_offset, i.compress_type, i.compress_size, i.file_size, i.CRC) for i in z.infolist()]


def _real_zips(tmp_path: Path, generated: Path):
    """(label, Source) of every kind of zip torch.load and np.load read."""
    from ckptfs.formats.torchzip import TorchZip
    from ckptfs.formats.zipout import Record, ZipBlob
    from ckptfs.pack.output import Output
    from ckptfs.sources.base import FileSource

    yield "generated", FileSource(str(generated))
    yield "lightning", FileSource(str(FIXTURES / "lightning" / "tiny.ckpt"))
    nemo = FileSource(str(FIXTURES / "nemo" / "tiny.nemo"))
    with tarfile.open(nemo.path) as tf:
        member = tf.getmember("./model_weights.ckpt")
    yield "nemo's model_weights.ckpt", nemo.slice(member.offset_data, member.size)
    empty = tmp_path / "empty-storage.pt"
    torch.save({"e": torch.empty(0), "w": torch.ones(3, dtype=torch.float16)}, empty)
    yield "an empty storage", FileSource(str(empty))
    written = tmp_path / "python.pt"
    written.write_bytes(zips.zip_of(zips.weights(2.0)))
    yield "written by zipfile", FileSource(str(written))
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, a=np.arange(5), b=np.ones((2, 3)))
        yield save.__name__, FileSource(str(path))
    archive = TorchZip(FileSource(str(generated)), "generated")
    blob = ZipBlob([Record(n, archive.record_data(e).length, piece=archive.record_data(e), crc=e.CRC)
                    for n, e in archive.records.items()], zip64_at=64)
    forced = tmp_path / "zip64.pt"
    fd = os.open(forced, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        blob.write(Output(fd))
    finally:
        os.close(fd)
    yield "zip64 everywhere (ckptfs's writer)", FileSource(str(forced))


def test_ordinary_zips_are_read_as_zipfile_reads_them(tmp_path, generated):
    """For an archive both readers read alike, the records of the torch
    reader are zipfile's: names, offsets, methods, sizes, CRCs, and where
    the data starts."""
    from ckptfs.formats.torchzip import record_extent
    from ckptfs.formats.torchzip_records import read_records

    for label, source in _real_zips(tmp_path, generated):
        records = read_records(source, label)
        assert records.disagreements == [], label
        got = [(e.filename, e.header_offset, e.compress_type, e.compress_size, e.file_size, e.CRC)
               for e in records.entries]
        assert got == _zipfile_view(source), label
        for entry in records.entries:
            assert entry.data_offset == record_extent(source, entry, label).offset, (label, entry.filename)


def test_real_torch_zips_still_open(tmp_path, generated):
    from ckptfs.formats import open_checkpoint

    for path in (generated, FIXTURES / "lightning" / "tiny.ckpt", FIXTURES / "nemo" / "tiny.nemo"):
        ckpt = open_checkpoint(str(path), str(tmp_path / "cache"))
        assert ckpt.tensors and not any("plain file" in note for note in ckpt.notes), (path, ckpt.notes)


def test_ten_thousand_records_read_each_local_header_once_and_no_tensor_data(tmp_path):
    from ckptfs.formats.torchzip import TorchZip
    from ckptfs.sources.base import FileSource, Source

    class _CountingSource(Source):
        """Records every read of the source it wraps."""

        def __init__(self, source: Source):
            self.source, self.path, self.size, self.reads = source, source.path, source.size, []

        def pread(self, offset: int, length: int) -> bytes:
            self.reads.append((offset, length))
            return self.source.pread(offset, length)

    path = tmp_path / "many.pt"
    torch.save({f"t{i}": torch.full((4,), float(i)) for i in range(10_000)}, path)
    source = _CountingSource(FileSource(str(path)))
    archive = TorchZip(source, str(path))
    archive.tree()
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    headers = {i.header_offset for i in infos}
    assert len(infos) > 10_000
    read_at = [offset for offset, _ in source.reads]
    assert sorted(o for o in read_at if o in headers) == sorted(headers)  # each local header, once
    storages = [(archive.records[i.filename].data_offset, i.compress_size) for i in infos if "/data/" in i.filename]
    for offset, length in source.reads:
        assert not any(offset < start + size and start < offset + length for start, size in storages), (offset, length)
    assert len(source.reads) < len(infos) + 10


def test_a_zip_torch_load_cannot_read_is_scanned_as_zipfile_reads_it(tmp_path):
    """miniz refuses an end record whose two entry counts differ; zipfile
    reads on, and so would np.load and pickle tools built on it."""
    from ckptfs.errors import FormatError
    from ckptfs.formats.torchzip_records import read_records
    from ckptfs.scan import scan
    from ckptfs.sources.base import FileSource

    data = bytearray(zips.zip_of({"hook.pkl": zips.command_pickle(tmp_path / "ran")}))
    struct.pack_into("<H", data, data.rfind(b"PK\x05\x06") + 8, 2)  # entries on this disk: 2 of 1
    path = tmp_path / "odd.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="several disks"):
        read_records(FileSource(str(path)), path.name)
    assert zipfile.ZipFile(path).read("hook.pkl").startswith(b"\x80\x02cos\nsystem")
    report = scan(str(path))
    assert [(f.glob.path, f.location) for f in report.dangerous] == [("os.system", "odd.zip:hook.pkl")]
    assert any("read as Python's zipfile reads it" in note for note in report.notes), report.notes
