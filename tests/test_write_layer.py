"""The write layer without a mount: the journal and its replay, the lock,
change detection, `-o` options, and writers driven on trees in memory. These
run in milliseconds; the real-mount tests (test_write*.py) stay."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ckptfs.errors import CkptfsError, EditRefused, EditsWaiting, RepackError
from ckptfs.formats import open_checkpoint
from ckptfs.mount import options
from ckptfs.pack.changes import changes, files_of, is_edited
from ckptfs.pack.newdir import NewDirectory
from ckptfs.pack.output import Output
from ckptfs.tree.nodes import Content, Dir, File
from ckptfs.write.editable import EditableTree
from ckptfs.write.overlay import Overlay, lock_path
from ckptfs.write.owned import NotOwned

from .conftest import FIXTURES


def _tree() -> Dir:
    root = Dir()
    root.add("a.txt", File(Content([b"alpha"])))
    sub = root.subdir(["sub"])
    sub.add("b.bin", File(Content([b"\0" * 70000])))  # more than one overlay block
    return root


def _snapshot(root: Dir) -> dict:
    return {path: (node, node.content if isinstance(node, File) else None) for path, node in files_of(root).items()}


def _contents(root: Dir) -> dict:
    return {p: (n.content.read(0, n.content.size) if isinstance(n, File) else None) for p, n in files_of(root).items()}


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(b"the source")
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_replaying_the_journal_rebuilds_the_edited_tree(tmp_path, source):
    overlay = Overlay.create(str(source))
    edited = EditableTree(_tree(), overlay)
    b = edited.edit("sub/b.bin").content
    edited.write(b, 65536 + 10, b"patched")  # the second block only
    edited.create("new.txt")
    edited.write(edited.node("new.txt").content, 0, b"new file")
    edited.mkdir("folder")
    edited.rename("a.txt", "folder/a.txt")
    a = edited.edit("folder/a.txt").content
    edited.truncate(a, 3)
    edited.create("gone.txt")
    edited.remove("gone.txt")
    expected = _contents(edited.root)
    assert expected["sub/b.bin"][65546:65553] == b"patched" and expected["folder/a.txt"] == b"alp"
    assert b.dirty == {1}  # one block copied up, not the file
    overlay.release()

    again, records = Overlay.reopen(str(source))
    replayed = EditableTree(_tree(), again, journal=False)
    replayed.replay(records)
    assert _contents(replayed.root) == expected
    again.remove()
    assert not Path(again.path).exists() and not os.path.exists(lock_path(str(source)))


def test_a_second_writer_is_locked_out_and_waiting_edits_are_said(tmp_path, source):
    first = Overlay.create(str(source))
    # beside the source, where every host and container that shares its file system sees it
    assert lock_path(str(source)) == str(source.parent / ".model.bin.ckptfs.lock") and os.path.exists(lock_path(str(source)))
    with pytest.raises(CkptfsError, match="already mounted writable"):
        Overlay.create(str(source))
    EditableTree(_tree(), first).mkdir("x")  # the first change makes the overlay and its journal
    first.release()
    with pytest.raises(EditsWaiting, match="edits of an earlier mount are waiting"):
        Overlay.create(str(source))
    again, records = Overlay.reopen(str(source))
    assert [r["op"] for r in records] == ["mkdir"]
    again.remove()
    Overlay.create(str(source)).remove()  # free again


def test_an_overlay_or_lock_that_others_could_change_is_refused_not_used(tmp_path, source):
    """What stands where the overlay or its lock goes is used only if this
    user made it, closed to others, with one name (write/owned.py)."""
    first = Overlay.create(str(source))
    EditableTree(_tree(), first).mkdir("x")
    first.release()
    overlay = Path(first.path)
    overlay.chmod(0o755)  # as an older ckptfs made them, or as someone loosened it
    for attempt in (lambda: Overlay.reopen(str(source)), lambda: Overlay.create(str(source)),
                    lambda: Overlay.discard_waiting(str(source))):
        with pytest.raises(NotOwned, match=f"{overlay}: mode 0755 opens it to other users"):
            attempt()
    overlay.chmod(0o700)
    (overlay / "journal").chmod(0o644)
    with pytest.raises(NotOwned, match="journal: mode 0644 opens it"):
        Overlay.reopen(str(source))
    (overlay / "journal").chmod(0o600)
    Overlay.discard_waiting(str(source))
    other = tmp_path / "someone-elses"
    other.write_bytes(b"")
    other.chmod(0o600)
    os.link(other, lock_path(str(source)))  # the lock a second name of another file
    with pytest.raises(NotOwned, match="a file with 2 names"):
        Overlay.create(str(source))
    os.unlink(lock_path(str(source)))
    Overlay.create(str(source)).remove()  # free again
    assert other.read_bytes() == b"" and not overlay.exists()


def test_changes_are_bytes_and_kinds_not_writes(tmp_path, source):
    overlay = Overlay.create(str(source))
    edited = EditableTree(_tree(), overlay)
    before = _snapshot(edited.root)
    a = edited.edit("a.txt").content
    edited.write(a, 0, b"alpha")  # the same bytes: written, but no change
    assert is_edited(edited.node("a.txt")) and changes(before, files_of(edited.root)) == []
    edited.write(a, 0, b"ALPHA")
    edited.remove("sub/b.bin")
    edited.remove("sub")
    edited.create("sub")  # a file where a folder was
    assert sorted(changes(before, files_of(edited.root))) == ["a.txt", "sub", "sub/b.bin"]
    overlay.remove()


def test_mount_options():
    opts = options.parse(["ro,nonempty,noatime", "ignore=+*.bak,defaults,x-systemd.automount"], options.MountOptions())
    assert opts.read_only and opts.nonempty and opts.fuse == {"noatime"}
    assert opts.ignore[-1] == "*.bak" and ".*.swp" in opts.ignore
    assert options.parse(["ignore="], options.MountOptions()).ignore == ()
    with pytest.raises(CkptfsError, match="unknown mount option 'bogus'"):
        options.parse(["bogus"], options.MountOptions())


def _edit_in_memory(checkpoint, tmp_path, edits) -> tuple[dict, dict]:
    """(edited files, before) of `checkpoint` after `edits(tree)`, as the
    edit session would hand them to the format's writer."""
    overlay = Overlay.create(checkpoint.source_path)
    tree = EditableTree(checkpoint.root, overlay)
    before = _snapshot(checkpoint.root)
    edits(tree)
    return files_of(checkpoint.root), before


def _replace(tree: EditableTree, path: str, data: bytes) -> None:
    content = tree.edit(path).content
    tree.truncate(content, 0)
    tree.write(content, 0, data)


def _write(writer, files, before, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer.write(files, before, Output(fd))
    finally:
        os.close(fd)


def test_the_safetensors_writer_on_a_tree_in_memory(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32), "b": np.ones(2, dtype=np.int64)}, str(src))
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))

    def edits(tree):
        _replace(tree, "w.npy", _npy(np.full((2, 2), 3, dtype=np.float16)))
        tree.remove("b.npy")
        tree.create("new.npy")
        tree.write(tree.node("new.npy").content, 0, _npy(np.arange(3, dtype=np.int8)))

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    out = tmp_path / "out.safetensors"
    _write(ckpt.writer, files, before, out)
    written = load_file(str(out))
    assert sorted(written) == ["new", "w"] and written["w"].dtype == np.float16 and written["new"].tolist() == [0, 1, 2]
    bad = files["new.npy"]
    ckpt.writer.check("new.npy", bad)  # valid
    with pytest.raises(EditRefused, match="cannot be stored in safetensors"):
        _replace_and_check(ckpt, bad, _npy(np.ones(2, dtype=np.complex128)))


def _replace_and_check(ckpt, node: File, data: bytes) -> None:
    os.ftruncate(node.content.fd, 0)
    os.pwrite(node.content.fd, data, 0)
    ckpt.writer.check("new.npy", node)


def test_the_tar_writer_on_a_tree_in_memory(tmp_path):
    src = tmp_path / "tiny.nemo"
    src.write_bytes((FIXTURES / "nemo" / "tiny.nemo").read_bytes())
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))

    def edits(tree):
        _replace(tree, "model_config.yaml", b"d_in: 16\n")
        tree.create("notes.txt")
        tree.write(tree.node("notes.txt").content, 0, b"hello\n")

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    out = tmp_path / "out.nemo"
    _write(ckpt.writer, files, before, out)
    with tarfile.open(out) as written, tarfile.open(src) as original:
        members = {m.name: m for m in written.getmembers()}
        assert written.extractfile(members["./model_config.yaml"]).read() == b"d_in: 16\n"
        assert written.extractfile(members["./notes.txt"]).read() == b"hello\n"
        assert written.extractfile("./model_weights.ckpt").read() == original.extractfile("./model_weights.ckpt").read()


def test_a_writer_refuses_what_its_format_cannot_hold(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": np.ones(2, dtype=np.float32)}, str(src))
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))

    def edits(tree):
        tree.create("notes.txt")

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    with pytest.raises(RepackError, match="notes.txt: a safetensors file holds only tensors"):
        _write(ckpt.writer, files, before, tmp_path / "out.safetensors")


def test_the_torch_save_writer_on_a_tree_in_memory(tmp_path):
    import torch

    src = tmp_path / "m.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32), "step": 3}, src)
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))

    def edits(tree):
        _replace(tree, "w.npy", _npy(np.full(4, 7, dtype=np.float32)))  # same layout: patched in place
        _replace(tree, "step.yaml", b"4\n")  # a YAML view: the pickle is written again

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    out = tmp_path / "out.pt"
    _write(ckpt.writer, files, before, out)
    written = torch.load(out, weights_only=True)
    assert written["w"].tolist() == [7, 7, 7, 7] and written["step"] == 4


def test_the_hugging_face_writer_fills_a_directory_in_memory(tmp_path):
    import shutil

    src = Path(shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", tmp_path / "bert"))
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))
    assert ckpt.writer.directory

    def edits(tree):
        _replace(tree, "pooler/dense/bias.npy", _npy(np.zeros(32, dtype=np.float32)))

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    out = tmp_path / "out"
    out.mkdir()
    with NewDirectory(str(out)) as new:
        ckpt.writer.write_dir(files, before, new)
    assert sorted(os.listdir(out)) == sorted(os.listdir(src))
    merged = {}
    for shard in sorted(out.glob("*.safetensors")):
        merged.update(load_file(str(shard)))
    assert not merged["pooler.dense.bias"].any()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(merged) == sorted(index["weight_map"])
    unchanged = [s for s in out.glob("*.safetensors") if "pooler.dense.bias" not in load_file(str(s))]
    assert all(os.stat(s).st_ino == os.stat(src / s.name).st_ino for s in unchanged)  # hard links, not copies


def test_the_distributed_checkpoint_writer_fills_a_directory_in_memory(tmp_path):
    import shutil
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    src = Path(shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", tmp_path / "ckpt"))
    ref = torch.load(FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", weights_only=False)
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))
    assert ckpt.writer.directory and ckpt.writer.adds_tensors
    new = np.arange(60, dtype=np.float32).reshape(10, 6)

    def edits(tree):
        _replace(tree, "extra/colsharded.npy", _npy(new))  # split back into both ranks' column chunks

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    out = tmp_path / "out"
    out.mkdir()
    with NewDirectory(str(out)) as directory:
        ckpt.writer.write_dir(files, before, directory)
    state = {"extra": {"colsharded": torch.zeros(10, 6)}, "model": {k: torch.zeros_like(v) for k, v in ref["model"].items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(out))
    assert np.array_equal(state["extra"]["colsharded"].numpy(), new)
    assert all(torch.equal(state["model"][k], v) for k, v in ref["model"].items())


def test_the_legacy_torch_save_writer_on_a_tree_in_memory(tmp_path):
    import torch

    src = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3), "lr": 0.5}, src, _use_new_zipfile_serialization=False)
    ckpt = open_checkpoint(str(src), str(tmp_path / "cache"))

    def edits(tree):
        _replace(tree, "lr.yaml", b"0.25\n")
        tree.remove("w.npy")

    files, before = _edit_in_memory(ckpt, tmp_path, edits)
    out = tmp_path / "out.pt"
    _write(ckpt.writer, files, before, out)
    assert torch.load(out, weights_only=True) == {"lr": 0.25}


def test_a_journal_record_cut_short_is_taken_back_and_the_journal_stays_readable(tmp_path, source, monkeypatch):
    import errno

    overlay = Overlay.create(str(source))
    tree = EditableTree(_tree(), overlay)
    tree.mkdir("kept")
    real_write = os.write

    def full_disk(fd, data):  # half the record fits, then the disk is full
        if fd == overlay.journal_fd:
            monkeypatch.setattr(os, "write", real_write)
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as refused:
        tree.mkdir("lost")
    assert refused.value.errno == errno.ENOSPC and "lost" not in tree.root.children  # not made: journal first
    tree.mkdir("after")
    overlay.release()
    again, records = Overlay.reopen(str(source))
    assert [r.get("path") for r in records] == ["kept", "after"]
    again.release()


def test_a_torn_last_record_is_left_out_and_a_damaged_one_is_an_error(tmp_path, source, caplog):
    overlay = Overlay.create(str(source))
    tree = EditableTree(_tree(), overlay)
    tree.mkdir("a")
    tree.mkdir("b")
    overlay.release()
    journal = Path(overlay.path) / "journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'0badc0de {"op":"mkdir","path":"c"}\n')  # its checksum does not match: torn
    again, records = Overlay.reopen(str(source))
    assert [r["path"] for r in records] == ["a", "b"] and "cut short" in caplog.text
    again.release()
    lines = whole.split(b"\n")
    journal.write_bytes(lines[0][:-3] + b"xyz\n" + lines[1] + b"\n")  # the first record damaged: not a crash's doing
    with pytest.raises(CkptfsError, match="record 1 of 2 is damaged.*ckptfs recover .* --discard"):
        Overlay.reopen(str(source))
    (Path(overlay.path) / "state.json").write_text("{")  # cut short by a full disk
    Overlay.discard_waiting(str(source))  # drops them whatever state they are in
    assert not Path(overlay.path).exists() and not os.path.exists(lock_path(str(source)))
