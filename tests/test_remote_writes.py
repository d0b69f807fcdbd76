"""Writable remote mounts: edits kept in a local overlay, the new checkpoint
uploaded to a new S3 key (--output) or over the source (--replace, only if
it is still the version mounted), or written to a local path. Against moto's
S3 and a ranged web server on loopback; every result is read back with the
format's own library."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load, load_file, save

from .conftest import is_mounted, run_ckptfs, umount
from .remote_servers import FileServer, S3Server

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TENSORS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.int64)}


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    server.client().create_bucket(Bucket="ckpts")
    yield server
    server.close()


@pytest.fixture
def env(s3, tmp_path, monkeypatch):
    """boto pointed at moto, and a cache (and overlays) folder of this test's own."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return s3.client()


def _put(client, key: str, data: bytes) -> str:
    client.put_object(Bucket="ckpts", Key=key, Body=data)
    return f"s3://ckpts/{key}"


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket="ckpts", Key=key)["Body"].read()


def _keys(client) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket="ckpts").get("Contents", [])}


def _nothing_left(tmp_path: Path) -> None:
    """No overlay and no lock in the overlays folder: nothing waits."""
    edits = tmp_path / "xdg" / "ckptfs" / "edits"
    assert not edits.exists() or not any(edits.rglob("*")), list(edits.rglob("*"))


def test_an_edited_s3_object_is_uploaded_to_a_new_key(s3, env, tmp_path, mount):
    source = _put(env, "edit/model.safetensors", save(TENSORS, metadata={"step": "1"}))
    s3.counts.reset()
    mnt = mount(source, "--output", "s3://ckpts/edit/edited.safetensors")
    # the version the tree was read from is the overlay's too: the source is asked about once
    assert len([line for line in s3.counts.lines if line.startswith("HEAD /ckpts/edit/model.safetensors")]) == 1
    np.save(mnt / "w.npy", np.full((3, 4), 7, dtype=np.float32))
    (mnt / "added.npy").write_bytes(_npy(np.arange(3, dtype=np.int32)))
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    edited = load(_get(env, "edit/edited.safetensors"))
    assert sorted(edited) == ["added", "b", "w"]
    assert edited["w"].tolist() == np.full((3, 4), 7).tolist() and edited["added"].tolist() == [0, 1, 2]
    assert load(_get(env, "edit/model.safetensors"))["w"].tolist() == TENSORS["w"].tolist()  # the source as it was
    _nothing_left(tmp_path)


def test_a_nemo_on_s3_is_replaced_only_if_it_is_the_version_mounted(env, tmp_path, mount):
    original = (SAMPLES / "nemo" / "tiny.nemo").read_bytes()
    source = _put(env, "nemo/tiny.nemo", original)
    mnt = mount(source, "--replace")
    config = mnt / "model_config.yaml"
    text = config.read_text()
    config.write_text(text + "ckptfs_edit: 1\n")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(_get(env, "nemo/tiny.nemo"))) as tar:
        names = tar.getnames()
        member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
        assert yaml.safe_load(tar.extractfile(member).read())["ckptfs_edit"] == 1
    with tarfile.open(fileobj=io.BytesIO(original)) as tar:
        assert names == tar.getnames()  # every member kept, in order
    assert _keys(env) >= {"nemo/tiny.nemo"} and not any(k.startswith("nemo/.") for k in _keys(env))

    # replaced by someone else while mounted: the upload is refused, the other version stays, the edits wait
    mnt = mount(source, "--replace", log_errors_expected=True)
    (mnt / "model_config.yaml").write_text(text + "ckptfs_edit: 2\n")
    _put(env, "nemo/tiny.nemo", original)  # the same bytes, but a new version
    theirs = env.head_object(Bucket="ckpts", Key="nemo/tiny.nemo")["LastModified"]
    done = umount(mnt)
    assert done.returncode == 1 and "changed since it was mounted" in done.stderr, done.stderr
    assert env.head_object(Bucket="ckpts", Key="nemo/tiny.nemo")["LastModified"] == theirs
    # the advice names the way out, which writes them to a new key
    assert f"ckptfs recover {source} --resume --output NEW" in done.stderr
    refused = run_ckptfs("mount", "--resume", source, tmp_path)
    assert refused.returncode == 1 and "say where the edits go: --output DEST, or --replace" in refused.stderr
    waiting = mount(source, "--output", "s3://ckpts/nemo/other.nemo")  # read-only, saying why
    assert "mode    read-only" in run_ckptfs("status", waiting).stdout
    assert "edits of an earlier mount are waiting" in (tmp_path / "daemon2.log").read_text()
    assert umount(waiting).returncode == 0
    written = run_ckptfs("recover", source, "--resume", "--output", "s3://ckpts/nemo/mine.nemo",
                         "--overlay-dir", tmp_path / "elsewhere")
    assert written.returncode == 1 and "no edits are waiting" in written.stderr  # not where they were kept
    written = run_ckptfs("recover", source, "--resume", "--output", "s3://ckpts/nemo/mine.nemo")
    assert written.returncode == 0, written.stderr
    with tarfile.open(fileobj=io.BytesIO(_get(env, "nemo/mine.nemo"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
        assert yaml.safe_load(tar.extractfile(member).read())["ckptfs_edit"] == 2
    _nothing_left(tmp_path)


def test_an_https_checkpoint_is_written_to_a_local_path(env, tmp_path, mount):
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.safetensors").write_bytes(save(TENSORS))
    server = FileServer(root)
    try:
        url = server.url + "model.safetensors"
        refused = run_ckptfs("mount", url, tmp_path, "--replace")
        assert refused.returncode == 1 and "only an s3:// object can be replaced" in refused.stderr
        out = tmp_path / "edited.safetensors"
        overlays = tmp_path / "overlays"
        mnt = mount(url, "--output", out, "--overlay-dir", overlays)
        (mnt / "b.npy").unlink()
        assert any(overlays.rglob("journal"))  # the edit is kept on local disk, in the folder asked for
        assert umount(mnt).returncode == 0
        assert sorted(load_file(out)) == ["w"] and load_file(out)["w"].tolist() == TENSORS["w"].tolist()
        assert (root / "model.safetensors").read_bytes() == save(TENSORS)
        assert not any(overlays.rglob("*"))
    finally:
        server.close()


def _upload_folder(client, folder: Path, prefix: str) -> str:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), "ckpts", prefix + path.name)
    return f"s3://ckpts/{prefix}"


def test_an_s3_hugging_face_folder_is_written_to_a_local_folder(env, tmp_path, mount):
    folder = SAMPLES / "hf" / "bert_tiny_sharded"
    source = _upload_folder(env, folder, "hf-edit/")
    refused = run_ckptfs("mount", source, tmp_path, "--output", "s3://ckpts/hf-new/")
    assert refused.returncode == 1 and "written to a local path only" in refused.stderr
    out = tmp_path / "edited"
    mnt = mount(source, "--output", out)
    config = json.loads((mnt / "config.json").read_text())
    (mnt / "config.json").write_text(json.dumps({**config, "ckptfs_edit": True}))
    name = next(n for n in _tensor_names(folder) if n.endswith("bias"))
    npy = mnt.joinpath(*name.split(".")).with_suffix(".npy")
    edited = np.load(npy) + 1
    np.save(npy, edited)
    assert umount(mnt).returncode == 0
    assert json.loads((out / "config.json").read_text())["ckptfs_edit"] is True
    ours = {n: t for shard in out.glob("*.safetensors") for n, t in load_file(shard).items()}
    theirs = {n: t for shard in folder.glob("*.safetensors") for n, t in load_file(shard).items()}
    assert sorted(ours) == sorted(theirs)
    for tensor, value in theirs.items():
        expected = edited if tensor == name else value
        assert ours[tensor].dtype == expected.dtype and ours[tensor].tobytes() == expected.tobytes(), tensor
    unchanged = [p.name for p in folder.iterdir() if p.name != "config.json" and
                 (out / p.name).read_bytes() == p.read_bytes()]
    assert len(unchanged) == len(list(folder.iterdir())) - 2  # the config and one shard differ, no more
    _nothing_left(tmp_path)


def test_an_s3_distributed_checkpoint_is_written_to_a_local_folder(env, tmp_path, mount):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = SAMPLES / "dcp" / "fsdp2_2rank"
    source = _upload_folder(env, folder, "dcp-edit/")
    out = tmp_path / "edited"
    mnt = mount(source, "--output", out)
    column_sharded = mnt / "extra" / "colsharded.npy"  # its chunks lie in both ranks' shards
    edited = np.load(column_sharded) * 2 + 1
    np.save(column_sharded, edited)
    assert umount(mnt).returncode == 0
    dcp_to_torch_save(out, tmp_path / "ours.pt")
    dcp_to_torch_save(folder, tmp_path / "theirs.pt")
    ours, theirs = (_flat(torch.load(tmp_path / f, weights_only=False)) for f in ("ours.pt", "theirs.pt"))
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        if key == "extra.colsharded":
            assert ours[key].numpy().tobytes() == edited.tobytes()
        elif hasattr(value, "dtype"):
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
        else:
            assert ours[key] == value, key


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for name, sub in tree.items() for k, v in _flat(sub, f"{prefix}{name}.").items()}


def _tensor_names(folder: Path) -> list[str]:
    return sorted(n for shard in folder.glob("*.safetensors") for n in load_file(shard))


def test_a_remote_mount_without_a_destination_is_read_only(env, tmp_path, mount):
    source = _put(env, "ro/model.safetensors", save(TENSORS))
    mnt = mount(source)
    with pytest.raises(OSError):
        np.save(mnt / "w.npy", np.zeros((3, 4), dtype=np.float32))
    info = run_ckptfs("status", mnt, "--json")
    assert '"writable": false' in info.stdout
    assert umount(mnt).returncode == 0


@pytest.mark.parametrize("extra, problem", [
    (("--output", "s3://ckpts/taken/model.safetensors"), "exists; give a new key"),
    (("--output", "https://host/x.safetensors"), "local paths and s3:// only"),
    (("--replace", "-o", "ro"), "does not go with -o ro"),
    (("--output", "/no/such/folder/x.safetensors"), "no such directory"),
])
def test_destinations_that_cannot_be_written_are_refused_at_mount(env, tmp_path, extra, problem):
    source = _put(env, "taken/model.safetensors", save(TENSORS))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_ckptfs("mount", source, mnt, *extra)
    assert done.returncode == 1 and problem in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not is_mounted(mnt)


def test_a_local_source_takes_output_but_not_replace(tmp_path, mount):
    model = tmp_path / "model.safetensors"
    model.write_bytes(save(TENSORS))
    refused = run_ckptfs("mount", model, tmp_path, "--replace")
    assert refused.returncode == 1 and "--replace is for remote sources" in refused.stderr
    out = tmp_path / "copy.safetensors"
    mnt = mount(model, "--output", out)
    np.save(mnt / "b.npy", np.zeros(5, dtype=np.int64))
    status = run_ckptfs("status", mnt)
    assert f"output  {out} (written at unmount" in status.stdout, status.stdout
    committed = run_ckptfs("commit", mnt)
    assert committed.returncode == 1 and "when it is unmounted" in committed.stderr
    assert umount(mnt).returncode == 0
    assert load_file(out)["b"].tolist() == [0] * 5 and model.read_bytes() == save(TENSORS)
    assert not (tmp_path / ".model.safetensors.ckptfs").exists()


def test_a_local_checkpoint_can_be_written_to_s3(env, tmp_path, mount):
    model = tmp_path / "model.safetensors"
    model.write_bytes(save(TENSORS))
    mnt = mount(model, "--output", "s3://ckpts/from-local/model.safetensors")
    np.save(mnt / "w.npy", np.zeros((3, 4), dtype=np.float32))
    assert umount(mnt).returncode == 0
    assert load(_get(env, "from-local/model.safetensors"))["w"].tolist() == np.zeros((3, 4)).tolist()
    assert model.read_bytes() == save(TENSORS)


def test_an_s3_checkpoint_exports_to_s3_as_it_does_to_local_files(env, tmp_path):
    folder = SAMPLES / "dcp" / "fsdp2_2rank"
    source = _upload_folder(env, folder, "dcp-export/")
    done = run_ckptfs("export", source, "s3://ckpts/exported/model.safetensors")
    assert done.returncode == 0, done.stderr
    local = tmp_path / "model.safetensors"
    assert run_ckptfs("export", folder, local).returncode == 0
    assert _get(env, "exported/model.safetensors") == local.read_bytes()
    again = run_ckptfs("export", source, "s3://ckpts/exported/model.safetensors")
    assert again.returncode == 1 and "exists; give a new key" in again.stderr

    done = run_ckptfs("export", source, "s3://ckpts/exported-hf/", "--to", "hf", "--max-shard-size", "2KB")
    assert done.returncode == 0, done.stderr
    assert run_ckptfs("export", folder, tmp_path / "hf", "--to", "hf", "--max-shard-size", "2KB").returncode == 0
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert len(names) > 2 and sorted(k.removeprefix("exported-hf/") for k in _keys(env)
                                     if k.startswith("exported-hf/")) == names
    for name in names:
        assert _get(env, f"exported-hf/{name}") == (tmp_path / "hf" / name).read_bytes(), name
    again = run_ckptfs("export", source, "s3://ckpts/exported-hf/", "--to", "hf")
    assert again.returncode == 1 and "objects are there already" in again.stderr


def test_a_failed_folder_export_removes_the_shards_it_uploaded(env, monkeypatch):
    from ckptfs.formats import open_checkpoint
    from ckptfs.pack import upload
    from ckptfs.sources.stores import base as stores
    from ckptfs.write import export

    monkeypatch.setattr(stores, "_STORES", {})
    real, sent = upload.upload, []

    def failing_at_the_index(url, *args, **kwargs):
        sent.append(url)
        if url.endswith(export.INDEX):
            raise OSError("connection lost")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(upload, "upload", failing_at_the_index)
    items = export.select(open_checkpoint(str(SAMPLES / "dcp" / "fsdp2_2rank"), "/nonexistent")).items
    with pytest.raises(OSError):
        export.write("hf", items, "s3://ckpts/failing/", max_bytes=2000)
    assert len(sent) > 2 and sent[-1].endswith(export.INDEX)  # the shards went up first
    assert not [k for k in _keys(env) if k.startswith("failing/")]


def test_a_large_upload_goes_in_parts_and_a_failed_one_leaves_nothing(env, monkeypatch):
    from ckptfs.pack import upload
    from ckptfs.sources.stores import base as stores

    monkeypatch.setattr(upload, "PART", 5 << 20)  # S3's least part
    monkeypatch.setattr(stores, "_STORES", {})
    data = np.random.default_rng(0).integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()

    def writer(output):
        for start in range(0, len(data), 3 << 20):
            output.write(data[start:start + (3 << 20)])

    assert upload.upload("s3://ckpts/parts/big.bin", writer, len(data)) == "s3://ckpts/parts/big.bin"
    assert _get(env, "parts/big.bin") == data
    assert env.head_object(Bucket="ckpts", Key="parts/big.bin")["ETag"].endswith('-3"')  # three parts

    # over the same key, in parts, only if it still holds the version that was read (If-Match as it completes)
    version = env.head_object(Bucket="ckpts", Key="parts/big.bin")["ETag"]
    replacing = {"url": "s3://ckpts/parts/big.bin", "size": len(data), "version": version}
    assert upload.upload("s3://ckpts/parts/big.bin", lambda output: output.write(data[::-1]), len(data),
                         replacing=replacing) == "s3://ckpts/parts/big.bin"
    assert _get(env, "parts/big.bin") == data[::-1]

    def failing(output):
        output.write(data[: 6 << 20])
        raise OSError("disk gone")

    with pytest.raises(OSError):
        upload.upload("s3://ckpts/parts/failed.bin", failing, len(data))
    assert "parts/failed.bin" not in _keys(env)
    assert not env.list_multipart_uploads(Bucket="ckpts").get("Uploads")  # aborted, not left to cost


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_a_botocore_without_conditional_writes_is_refused_before_anything_is_sent(env, monkeypatch):
    import botocore.session

    from ckptfs.errors import CkptfsError
    from ckptfs.pack import upload
    from ckptfs.sources.stores import base as stores

    monkeypatch.setattr(stores, "_STORES", {})
    model = botocore.session.get_session().get_service_model("s3")

    class Older:  # the S3 model of a botocore from before August 2024
        def operation_model(self, name):
            real = model.operation_model(name)
            shape = type("Shape", (), {"members": {k: v for k, v in real.input_shape.members.items()
                                                    if not k.startswith("If")}})
            return type("Operation", (), {"input_shape": shape})

    monkeypatch.setattr(botocore.session.Session, "get_service_model", lambda self, name: Older())
    with pytest.raises(CkptfsError, match="cannot make S3's conditional writes"):
        upload.upload("s3://ckpts/old/model.bin", lambda output: output.write(b"x"), 1)
    assert "old/model.bin" not in _keys(env)
