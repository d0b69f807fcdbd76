"""A checkpoint a reader serves in part (a GGUF cut short, a distributed
checkpoint missing a shard, a .nemo whose weights are cut short) says what
is missing on stderr at mount, one line each, once. Where a repack could
only lose what is missing (GGUF), the mount is read-only and says what to
do instead, and that command works; elsewhere edits are written and the
damaged part stays as it was."""

from __future__ import annotations

import errno
import io
import shlex
import tarfile

import numpy as np
import pytest
import torch

from .conftest import run_ckptfs, umount, write_cut_gguf


def _gguf(path):
    """Three tensors, the file cut inside the second: two of three missing (issue 27)."""
    write_cut_gguf(path)
    return ["b: its 128 bytes at", "c: its 128 bytes at"]


def _dcp(path):
    """Two saves' metadata in one, the second's shard lost: it was named
    `__0_1.distcp`, the name a repack gives the shard of new tensors."""
    import pickle

    import torch.distributed.checkpoint as dcp

    one, two = path.with_name("one"), path.with_name("two")
    with pytest.warns(UserWarning):  # one process, no process group
        dcp.save({"a": torch.ones(3), "b": torch.zeros(2)}, checkpoint_id=str(one))
        dcp.save({"c": torch.full((2,), 7.0)}, checkpoint_id=str(two))
    metadata = dcp.FileSystemReader(str(one)).read_metadata()
    second = dcp.FileSystemReader(str(two)).read_metadata()
    for info in second.storage_data.values():
        info.relative_path = "__0_1.distcp"
    metadata.state_dict_metadata.update(second.state_dict_metadata)
    metadata.storage_data.update(second.storage_data)
    path.mkdir()
    (one / "__0_0.distcp").rename(path / "__0_0.distcp")
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    return [f"c: {path}/__0_1.distcp: shard file named by the metadata is missing"]


def _dcp_edit(mnt, source):
    """A new tensor is written beside what is there; c's metadata still names its lost shard."""
    import torch.distributed.checkpoint as dcp

    np.save(mnt / "x.npy", np.full(4, 5.0, np.float32))
    assert umount(mnt).returncode == 0
    state = {"a": torch.zeros(3), "b": torch.ones(2), "x": torch.zeros(4)}
    with pytest.warns(UserWarning):
        dcp.load(state, checkpoint_id=str(source))
        storage = dcp.FileSystemReader(str(source)).read_metadata().storage_data
    assert state["a"].tolist() == [1] * 3 and state["b"].tolist() == [0] * 2 and state["x"].tolist() == [5] * 4
    [lost] = {info.relative_path for index, info in storage.items() if index.fqn == "c"}
    assert lost == "__0_1.distcp" and not (source / lost).exists()
    assert all(info.relative_path != lost for index, info in storage.items() if index.fqn != "c")


def _nemo(path):
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, buffer)
    with tarfile.open(path, "w:") as tar:
        for name, data in (("./model_config.yaml", b"a: 1\n"), ("./model_weights.ckpt", buffer.getvalue()[:9000])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return ["model_weights.ckpt is shown as a plain file: not a readable zip archive"]


def _nemo_edit(mnt, source):
    """The config is written; the weights cut short are copied as they are."""
    with tarfile.open(source) as tar:
        weights = tar.extractfile("./model_weights.ckpt").read()
    (mnt / "model_config.yaml").write_text("a: 2\n")
    assert umount(mnt).returncode == 0
    with tarfile.open(source) as tar:
        assert tar.extractfile("./model_config.yaml").read() == b"a: 2\n"
        assert tar.extractfile("./model_weights.ckpt").read() == weights


#: case -> (writer, source name, an edit and its check; None: the mount is read-only)
CASES = {"gguf": (_gguf, "cut.gguf", None), "dcp": (_dcp, "dcp", _dcp_edit), "nemo": (_nemo, "cut.nemo", _nemo_edit)}


def _files(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.is_dir() else path.read_bytes()


@pytest.mark.parametrize("case", CASES)
def test_what_a_mount_cannot_serve_is_said_at_mount_and_edits_get_written_or_advice_that_works(case, tmp_path, mnt):
    make, name, edit = CASES[case]
    source = tmp_path / name
    said = make(source)
    before = _files(source)
    done = run_ckptfs("mount", source, mnt, "--log-file", tmp_path / "daemon.log")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    for fragment in said:
        assert len([line for line in lines if line.startswith(f"ckptfs: {source}: ") and fragment in line]) == 1, lines
    if edit is not None:
        edit(mnt, source)
        return
    [advice] = [line for line in lines if line.endswith("; mounted read-only")]
    with pytest.raises(OSError) as refused:
        (mnt / "new.txt").write_text("x")
    assert refused.value.errno == errno.EROFS
    assert umount(mnt).returncode == 0
    assert _files(source) == before
    command = advice.rpartition(": ckptfs ")[2].removesuffix("; mounted read-only").split()
    out = tmp_path / "NEW.safetensors"
    exported = run_ckptfs(*[str(out) if word == "NEW.safetensors" else word for word in command])
    assert exported.returncode == 0, exported.stderr
    for fragment in said:  # the export names what it leaves out too
        assert fragment in exported.stderr
    from safetensors.numpy import load_file

    assert sorted(load_file(out)) == ["a"], shlex.join(command)
