"""Permissions never widen: what a user cannot read in the source, nobody
reads through the mount. Checked with a real second user (nobody), whose
reads go through the kernel's permission checks on a mount made with
`-o allow_other`; links that leave a directory source are never followed."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from .conftest import FIXTURES, TIMED_APART, force_unmount, is_mounted, require_fuse, run_ckptfs, umount

NOBODY = 65534


@pytest.fixture
def shared():
    """A folder every user may enter (pytest's tmp_path is root's alone),
    holding the sources and the mount point; unmounted and removed after."""
    require_fuse()
    top = Path(tempfile.mkdtemp(prefix="ckptfs-perm-", dir="/tmp"))
    top.chmod(0o755)
    (top / "mnt").mkdir()
    yield top
    force_unmount(top / "mnt")
    shutil.rmtree(top, ignore_errors=True)


def _as_nobody(*paths: Path) -> dict[str, str]:
    """What user nobody gets reading each path: "ok", or the errno's name."""
    code = (
        "import errno, json, os, sys\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        with open(p, 'rb') as f: f.read(16)\n"
        "        out[p] = 'ok'\n"
        "    except OSError as e:\n"
        "        out[p] = errno.errorcode[e.errno]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _mount_shared(source: Path, mnt: Path, *options: str) -> None:
    done = run_ckptfs("mount", source, mnt, "-o", ",".join(("allow_other",) + options))
    assert done.returncode == 0, done.stderr
    assert is_mounted(mnt)


def test_each_file_of_a_directory_keeps_its_own_owner_and_mode(shared):
    model = Path(shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", shared / "bert"))
    model.chmod(0o755)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    private_shard = "model-00002-of-00004.safetensors"
    (model / private_shard).chmod(0o600)
    (model / "config.json").chmod(0o600)
    private = next(name for name, shard in sorted(index["weight_map"].items()) if shard == private_shard)
    public = next(name for name, shard in sorted(index["weight_map"].items()) if shard != private_shard)
    mnt = shared / "mnt"
    _mount_shared(model, mnt, "ro")
    try:
        def npy(name):
            return mnt / (name.replace(".", "/") + ".npy")

        paths = [npy(private), npy(public), mnt / "config.json", mnt / private_shard / (private.replace(".", "/") + ".npy"),
                 mnt / ".ckptfs" / "raw" / private_shard, mnt / ".ckptfs" / "raw" / "model.safetensors.index.json"]
        got = _as_nobody(*paths)
        assert [got[str(p)] for p in paths] == ["EACCES", "ok", "EACCES", "EACCES", "EACCES", "ok"], got
        assert os.stat(npy(private)).st_mode & 0o777 == 0o400 and os.stat(npy(public)).st_mode & 0o777 == 0o444
        assert np.load(npy(private)).size > 0  # its owner (root) still reads it
    finally:
        assert umount(mnt).returncode == 0


def test_a_distributed_checkpoint_is_readable_by_whom_all_its_shards_are(shared):
    ckpt = Path(shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", shared / "ckpt"))
    ckpt.chmod(0o755)
    (ckpt / "__1_0.distcp").chmod(0o600)  # one rank's shard is private: every tensor has chunks there
    mnt = shared / "mnt"
    _mount_shared(ckpt, mnt, "ro")
    try:
        weight = next(p for p in (mnt / "model").rglob("*.npy"))
        got = _as_nobody(weight, mnt / ".ckptfs" / "raw" / "__0_0.distcp", mnt / ".ckptfs" / "raw" / "__1_0.distcp")
        assert list(got.values()) == ["EACCES", "ok", "EACCES"], got
    finally:
        assert umount(mnt).returncode == 0


def _onnx_with_external_data(folder: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save_model

    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    save_model(helper.make_model(graph), folder / "model.onnx", save_as_external_data=True, location="model.data",
               size_threshold=0)
    return folder / "model.onnx"


def _tf_bundle(folder: Path) -> Path:
    from .tf_bundle_writer import write_arrays

    return write_arrays(folder / "ckpt", {"w": np.arange(64, dtype=np.float32).reshape(8, 8)})


@pytest.mark.parametrize("make, private, tensor", [
    (_onnx_with_external_data, "model.data", "w.npy"),
    (_tf_bundle, "ckpt.data-00000-of-00001", "w.npy"),
], ids=["onnx-external-data", "tf-bundle-shard"])
def test_a_tensor_in_a_private_file_beside_the_one_mounted_stays_private(shared, make, private, tensor):
    folder = shared / "model"
    folder.mkdir(mode=0o755)
    source = make(folder)
    source.chmod(0o644)
    (folder / private).chmod(0o600)
    mnt = shared / "mnt"
    _mount_shared(source, mnt, "ro")
    try:
        got = _as_nobody(mnt / tensor, mnt / ".ckptfs" / "raw" / private, mnt / ".ckptfs" / "raw" / source.name)
        assert list(got.values()) == ["EACCES", "EACCES", "ok"], got
        assert os.stat(mnt / tensor).st_mode & 0o444 == 0o400
        assert np.load(mnt / tensor).shape == (8, 8)  # its owner (root) still reads it
    finally:
        assert umount(mnt).returncode == 0


def test_a_zarr_array_is_readable_by_whom_all_its_chunks_are(shared):
    ckpt = shared / "ckpt"
    (ckpt / "w").mkdir(parents=True)
    (ckpt / "b").mkdir()
    ckpt.chmod(0o755)
    (ckpt / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr", "sharded_backend_version": 1}))
    for key, chunk_rows in (("w", 2), ("b", 4)):
        meta = {"zarr_format": 2, "shape": [4, 2], "chunks": [chunk_rows, 2], "dtype": "<f4", "order": "C",
                "compressor": None, "filters": None, "fill_value": None}
        (ckpt / key / ".zarray").write_text(json.dumps(meta))
        for row in range(4 // chunk_rows):
            (ckpt / key / f"{row}.0").write_bytes(np.full((chunk_rows, 2), row, np.float32).tobytes())
    (ckpt / "w" / "1.0").chmod(0o600)  # the second half of w's rows
    mnt = shared / "mnt"
    _mount_shared(ckpt, mnt, "ro")
    try:
        got = _as_nobody(mnt / "w.npy", mnt / "b.npy")
        assert list(got.values()) == ["EACCES", "ok"], got
        assert np.load(mnt / "w.npy").tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]
    finally:
        assert umount(mnt).returncode == 0


@TIMED_APART
def test_an_orbax_array_is_readable_by_whom_all_the_files_of_its_checkpoint_are(shared, written):
    """tensorstore reads an OCDBT array from data files under d/ that no
    tensor names: a private one keeps every array private."""
    ckpt = Path(shutil.copytree(written("tests.orbax_writer") / "ocdbt", shared / "ckpt"))
    for folder in [ckpt, *(p for p in ckpt.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    for data in (ckpt / "d").rglob("*"):
        data.chmod(0o600 if data.is_file() else 0o755)
    mnt = shared / "mnt"
    _mount_shared(ckpt, mnt, "ro")
    try:
        arrays = sorted(mnt.rglob("*.npy"))
        got = _as_nobody(*arrays, mnt / "_METADATA.yaml")
        assert set(list(got.values())[:-1]) == {"EACCES"} and list(got.values())[-1] == "ok", got
        assert np.load(arrays[0]).size >= 1  # its owner (root) still reads it
    finally:
        assert umount(mnt).returncode == 0


def test_links_out_of_a_directory_are_shown_not_followed(shared):
    model = shared / "model"
    model.mkdir()
    save_file({"w": np.ones(2, dtype=np.float32)}, str(model / "model.safetensors"))
    secret = shared / "secret.txt"
    secret.write_text("nobody's business")
    secret.chmod(0o600)
    os.symlink(secret, model / "notes.txt")  # leads outside the checkpoint
    mnt = shared / "mnt"
    done = run_ckptfs("mount", model, mnt, "-o", "allow_other")
    assert done.returncode == 0 and "links that lead outside it (notes.txt)" in done.stderr
    try:
        assert os.path.islink(mnt / "notes.txt") and os.readlink(mnt / "notes.txt") == str(secret)
        assert os.path.islink(mnt / ".ckptfs" / "raw" / "notes.txt")
        assert "notes.txt" not in (mnt / ".ckptfs" / "tensors.tsv").read_text()
        assert list(_as_nobody(mnt / "notes.txt").values()) == ["EACCES"]  # the link leads to the file itself
        assert b"links that lead outside it" in os.getxattr(mnt, "user.ckptfs.read_only")
    finally:
        assert umount(mnt).returncode == 0


def test_a_state_directory_that_is_not_the_users_own_is_refused(shared):
    """Another user may create /tmp/ckptfs-UID first (or a link there) to read
    or redirect what ckptfs writes: it is refused, not used."""
    shared_tmp = shared / "tmp"
    shared_tmp.mkdir()
    shared_tmp.chmod(0o1777)
    planted = shared_tmp / f"ckptfs-{NOBODY}"
    planted.mkdir()  # made by root, for user nobody to fall into
    code = (
        "import os\n"
        "from ckptfs.errors import CkptfsError\n"
        "from ckptfs.mount import mounts\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    print(mounts.state_dir())\n"
        "except CkptfsError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(shared_tmp)

    def state_dir_of_nobody() -> str:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                             cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert state_dir_of_nobody().startswith(f"refused: {planted}: not a directory of this user's")
    planted.rmdir()
    planted.symlink_to(shared)  # a link to somewhere else: refused too
    assert state_dir_of_nobody().startswith(f"refused: {planted}: not a directory of this user's")
    planted.unlink()
    assert state_dir_of_nobody() == str(planted)  # made afresh, private
    st = os.lstat(planted)
    assert st.st_uid == NOBODY and st.st_mode & 0o777 == 0o700


def test_a_link_out_of_a_distributed_checkpoint_in_a_folder_makes_the_folder_read_only(shared):
    folder = shared / "nemo2"
    weights = Path(shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", folder / "weights"))
    (folder / "context").mkdir()
    secret = shared / "secret.txt"
    secret.write_text("nobody's business")
    os.symlink(secret, weights / "notes.txt")
    mnt = shared / "mnt"
    done = run_ckptfs("mount", folder, mnt)
    assert done.returncode == 0 and "mounted read-only" in done.stderr, done.stderr
    try:
        assert os.path.islink(mnt / "weights" / "notes.txt")
        reason = os.getxattr(mnt, "user.ckptfs.read_only").decode()
        assert reason.startswith(f"{folder}: weights: holds links that lead outside it (notes.txt)")
        assert next((mnt / "weights" / "model").rglob("*.npy")).stat().st_size > 0  # the rest is served
    finally:
        assert umount(mnt).returncode == 0


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


@pytest.mark.parametrize("to", ["safetensors", "torch", "hf"])
@pytest.mark.parametrize("source_mode", [0o600, 0o640, 0o644])
def test_an_export_is_never_more_readable_than_its_source(tmp_path, to, source_mode):
    source = tmp_path / "model.safetensors"
    save_file({"w": np.ones(4, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}, source)
    source.chmod(source_mode)
    os.chown(source, 0, 4242)  # a group the exporting user (root, group root) is not: its read bit does not carry
    out = tmp_path / "out"
    done = run_ckptfs("export", source, out, "--to", to, "--max-shard-size", "16")
    assert done.returncode == 0, done.stderr
    expected = 0o600 | (source_mode & 0o004)
    files = sorted(out.iterdir()) if to == "hf" else [out]
    assert len(files) == (3 if to == "hf" else 1)  # two shards and the index
    assert {_mode(f) for f in files} == {expected}
    if to == "hf":
        assert _mode(out) == expected | 0o100 | (expected & 0o044) >> 2
    os.chown(source, 0, 0)  # now the exporter's own group: its read bit carries
    again = tmp_path / "again"
    assert run_ckptfs("export", source, again).returncode == 0
    assert _mode(again) == 0o600 | (source_mode & 0o044)


def test_files_new_in_a_repacked_folder_are_readable_as_the_folder_is(tmp_path, mount):
    folder = tmp_path / "bert"
    shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", folder)
    folder.chmod(0o750)
    os.chown(folder, NOBODY, 4242)
    mnt = mount(folder)
    (mnt / "extra").mkdir()
    (mnt / "extra" / "notes.txt").write_text("new")
    (mnt / "config.json").write_text((mnt / "config.json").read_text())
    assert umount(mnt).returncode == 0
    new_file, new_folder = folder / "extra" / "notes.txt", folder / "extra"
    assert (os.stat(new_file).st_uid, os.stat(new_file).st_gid, _mode(new_file)) == (NOBODY, 4242, 0o640)
    assert (os.stat(new_folder).st_uid, _mode(new_folder)) == (NOBODY, 0o750)
    assert (os.stat(folder).st_uid, os.stat(folder).st_gid, _mode(folder)) == (NOBODY, 4242, 0o750)


def test_an_overlay_is_its_users_alone(tmp_path, mount):
    source = tmp_path / "model.nemo"
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", source)
    source.chmod(0o644)
    mnt = mount(source)
    (mnt / "model_config.yaml").write_text((mnt / "model_config.yaml").read_text() + "# edited\n")
    overlay = tmp_path / ".model.nemo.ckptfs"
    assert _mode(overlay) == 0o700 and _mode(overlay / "data") == 0o700
    assert {_mode(p) for p in overlay.rglob("*") if p.is_file()} == {0o600}
    assert _mode(tmp_path / ".model.nemo.ckptfs.lock") == 0o600
    assert umount(mnt).returncode == 0


def test_a_link_inside_a_repacked_folder_leaves_the_file_it_leads_to_as_it_was(tmp_path, mount):
    folder = tmp_path / "run"  # a folder holding a distributed checkpoint, as NeMo 2 saves one
    shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", folder / "weights")
    (folder / "context").mkdir()
    (folder / "context" / "a.yaml").write_text("a: 1\n")
    (folder / "context" / "a.yaml").chmod(0o640)
    (folder / "context" / "b.yaml").symlink_to("a.yaml")  # inside the folder: followed
    mnt = mount(folder)
    (mnt / "context" / "c.yaml").write_text("c: 1\n")
    assert umount(mnt).returncode == 0
    a = folder / "context" / "a.yaml"
    assert (_mode(a), a.read_text(), (folder / "context" / "b.yaml").read_text()) == (0o640, "a: 1\n", "a: 1\n")
