"""Every namespace operation in every writable format (docs/writing.md,
"Renames, links and other namespace operations"): a rename the format can
hold is written under the new names, one it cannot hold fails at the call
with an errno; nothing accepted is dropped. One mount per format takes every
operation; after the unmount the checkpoint is read with its own library
and compared bit for bit."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.numpy import load_file, save_file

from .conftest import umount

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
AT_FDCWD = -100

#: the tensors of every fixture, by dotted key
SOURCE = {
    "enc.block.w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "enc.block.b": np.array([1.5, -2, 3], dtype=np.float16),
    "head": np.array([7, -(2 ** 40)], dtype=np.int64),
    "x": np.linspace(0, 1, 4, dtype=np.float32),
    "y": np.linspace(10, 11, 4, dtype=np.float32),
    "z": np.array([-1, 1], dtype=np.float32),
    "p": np.array([1, 2, 3], dtype=np.float32),
    "q": np.array([4, 5, 6], dtype=np.float32),
    "dec.w": np.array([[9, 8]], dtype=np.float32),
}
NEW_W = np.full((2, 3), 0.25, dtype=np.float32)
#: what every format holds after `_operate`
EXPECTED = {
    "enc.blk.w": NEW_W,  # the folder renamed, then the file truncated and written again
    "enc.blk.b": SOURCE["enc.block.b"],
    "enc.head": SOURCE["head"],  # moved into a folder
    "x": SOURCE["z"],  # renamed over an existing tensor
    "p": SOURCE["q"],  # RENAME_EXCHANGE
    "q": SOURCE["p"],
    "y2": SOURCE["y"],  # RENAME_NOREPLACE to a free name
    "dec.w": SOURCE["dec.w"],
}


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old))


def fallocate(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        if _libc.fallocate(fd, 0, 0, 1 << 16) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def refused(code: int, call, *args) -> None:
    with pytest.raises(OSError) as raised:
        call(*args)
    assert raised.value.errno == code, (call, args, raised.value)


def _operate(root: Path, sep: str = ".") -> None:
    """Every namespace operation on the tensors below `root` (`sep` joins a
    key's parts in the file names: "." keys are folders, "/" too for npz)."""
    def at(key: str) -> Path:
        return root / (key.replace(".", "/") + ".npy")

    os.rename(root / "enc" / "block", root / "enc" / "blk")  # a folder, within its folder
    os.rename(at("head"), at("enc.head"))  # a file, into another folder
    os.rename(at("z"), at("x"))  # over an existing name
    renameat2(at("p"), at("q"), RENAME_EXCHANGE)
    refused(errno.EEXIST, renameat2, at("y"), at("enc.head"), RENAME_NOREPLACE)
    renameat2(at("y"), at("y2"), RENAME_NOREPLACE)
    assert sorted(p.name for p in (root / "enc" / "blk").iterdir()) == ["b.npy", "w.npy"]
    w = at("enc.blk.w")
    os.truncate(w, 0)  # truncate, then written again
    assert w.stat().st_size == 0
    np.save(w, NEW_W)
    refused(errno.EPERM, os.link, at("y2"), root / "link.npy")
    refused(errno.EPERM, os.symlink, "y2.npy", root / "sym.npy")
    refused(errno.EPERM, os.mkfifo, root / "fifo")
    refused(errno.ENOTSUP, os.setxattr, at("y2"), "user.note", b"1")
    refused(errno.EOPNOTSUPP, fallocate, at("y2"))
    made = root / "made"
    os.mknod(made, 0o600 | stat.S_IFREG)  # a plain file, as create makes it
    assert made.stat().st_size == 0
    made.unlink()
    assert not any(p.name in ("link.npy", "sym.npy", "fifo") for p in root.iterdir())


def _same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, array in expected.items():
        value = got[key]
        assert value.dtype == array.dtype and value.shape == array.shape and value.tobytes() == array.tobytes(), key


def _torch_state(arrays: dict) -> dict:
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


def _numpy(state: dict) -> dict:
    return {k: v.numpy() for k, v in state.items()}


def _dcp_read(folder, expected: dict, item: str = "step") -> dict:
    """The tensors as dcp.load reads them (its metadata must list no other
    keys), and the pickled item `step` as it was, under the key `item`."""
    keys = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    state = {k: torch.zeros(v.shape, dtype=torch.from_numpy(v).dtype) for k, v in expected.items()}
    state[item] = 0
    assert keys == set(state), keys ^ set(state)
    dcp.load(state, checkpoint_id=str(folder))
    assert state.pop(item) == 3
    return state


# -- the formats: (make the source in a folder, the mounted root the tensors are in, read the result)


def _safetensors(tmp: Path) -> Path:
    save_file(SOURCE, tmp / "m.safetensors", metadata={"format": "np"})
    return tmp / "m.safetensors"


def _hf(tmp: Path) -> Path:
    (tmp / "hf").mkdir()
    save_file(SOURCE, tmp / "hf" / "model.safetensors", metadata={"format": "pt"})
    (tmp / "hf" / "config.json").write_text('{"model_type": "bert"}')
    return tmp / "hf"


def _npz(tmp: Path) -> Path:
    np.savez(tmp / "m.npz", **{k.replace(".", "/"): v for k, v in SOURCE.items()})
    return tmp / "m.npz"


def _torch_zip(tmp: Path) -> Path:
    torch.save(_torch_state(SOURCE), tmp / "m.pt")
    return tmp / "m.pt"


def _torch_legacy(tmp: Path) -> Path:
    torch.save(_torch_state(SOURCE), tmp / "m.pt", _use_new_zipfile_serialization=False)
    return tmp / "m.pt"


def _dcp(tmp: Path) -> Path:
    dcp.save({**_torch_state(SOURCE), "step": 3}, checkpoint_id=str(tmp / "ck"))
    return tmp / "ck"


def _nemo(tmp: Path) -> Path:
    buffer = io.BytesIO()
    torch.save(_torch_state(SOURCE), buffer)
    with tarfile.open(tmp / "m.nemo", "w") as tar:
        for name, data in (("model_config.yaml", b"hidden: 4\n"), ("model_weights.ckpt", buffer.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tmp / "m.nemo"


def _nemo_dcp(tmp: Path) -> Path:
    dcp.save({**_torch_state(SOURCE), "step": 3}, checkpoint_id=str(tmp / "model_weights"))
    (tmp / "model_config.yaml").write_text("hidden: 4\n")
    with tarfile.open(tmp / "m.nemo", "w") as tar:
        tar.add(tmp / "model_config.yaml", "model_config.yaml")
        tar.add(tmp / "model_weights", "model_weights")
    return tmp / "m.nemo"


def _dcp_folder(tmp: Path) -> Path:
    (tmp / "run" / "context").mkdir(parents=True)
    (tmp / "run" / "context" / "model.yaml").write_text("hidden: 4\n")
    dcp.save({**_torch_state(SOURCE), "step": 3}, checkpoint_id=str(tmp / "run" / "weights"))
    (tmp / "run" / "weights" / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    return tmp / "run"


def _extract(nemo: Path, member: str) -> bytes:
    with tarfile.open(nemo) as tar:
        return tar.extractfile(member).read()


FORMATS = {
    # name: (make, the tensors' folder in the mount, key separator, read the result as its library reads it)
    "safetensors": (_safetensors, "", ".", lambda src: load_file(src)),
    "hf": (_hf, "", ".", lambda src: load_file(src / "model.safetensors")),
    "npz": (_npz, "", "/", lambda src: {k.replace("/", "."): v for k, v in np.load(src).items()}),
    "torch_zip": (_torch_zip, "", ".", lambda src: _numpy(torch.load(src, weights_only=True))),
    "torch_legacy": (_torch_legacy, "", ".", lambda src: _numpy(torch.load(src, weights_only=True))),
    "dcp": (_dcp, "", ".", lambda src: _numpy(_dcp_read(src, EXPECTED, "extra.step"))),
    "nemo": (_nemo, "model_weights.ckpt", ".", lambda src: _numpy(
        torch.load(io.BytesIO(_extract(src, "model_weights.ckpt")), weights_only=True))),
    "nemo_dcp": (_nemo_dcp, "model_weights", ".", None),
    "dcp_folder": (_dcp_folder, "weights", ".", lambda src: _numpy(_dcp_read(src / "weights", EXPECTED, "extra.step"))),
}


def _read_nemo_dcp(src: Path, tmp: Path) -> dict:
    out = tmp / "unpacked"
    with tarfile.open(src) as tar:
        tar.extractall(out, filter="data")
    return _numpy(_dcp_read(out / "model_weights", EXPECTED, "extra.step"))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_namespace_operation_is_written_or_refused_at_once(kind, mount, tmp_path):
    make, inside, sep, read = FORMATS[kind]
    source = make(tmp_path)
    mnt = mount(source)
    root = mnt / inside if inside else mnt
    _operate(root, sep)
    assert (root / "enc" / "blk" / "b.npy").exists() and not (root / "enc" / "block").exists()
    assert "enc.blk.b" in (mnt / ".ckptfs" / "tensors.tsv").read_text() or kind in ("npz", "nemo", "nemo_dcp")
    _format_specific(kind, mnt, root)
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    got = _read_nemo_dcp(source, tmp_path) if kind == "nemo_dcp" else read(source)
    _same(got, EXPECTED)
    _after(kind, source, tmp_path)


def _format_specific(kind: str, mnt: Path, root: Path) -> None:
    """What only some formats have: files beside the tensors, non-tensor items, nested checkpoints."""
    if kind == "safetensors":
        refused(errno.EPERM, os.rename, root / "enc" / "blk" / "b.npy", root / "enc" / "blk" / "b.txt")
        refused(errno.EPERM, os.rename, root / "__metadata__.yaml", root / "enc" / "__metadata__.yaml")
    if kind == "hf":
        os.rename(mnt / "config.json", mnt / "config2.json")
        refused(errno.EPERM, os.rename, mnt / "config2.json", mnt / "%2E%2E")  # '..' once written
    if kind in ("torch_zip", "torch_legacy", "nemo"):  # a key holds a tensor (.npy) or a value (.yaml)
        refused(errno.EPERM, os.rename, root / "x.npy", root / "x.txt")
    if kind in ("dcp", "nemo_dcp", "dcp_folder"):  # a pickled item moves too; each stays what it was shown as
        refused(errno.EPERM, os.rename, root / "step.yaml", root / "step.npy")
        refused(errno.EPERM, os.rename, root / "x.npy", root / "x.bin")
        (root / "extra").mkdir()
        os.rename(root / "step.yaml", root / "extra" / "step.yaml")
    if kind in ("nemo", "nemo_dcp"):  # a member is renamed; the checkpoint inside keeps its name
        os.rename(mnt / "model_config.yaml", mnt / "config.yaml")
        refused(errno.EPERM, os.rename, mnt / "config.yaml", mnt / "%2E%2E")
        refused(errno.EPERM, os.rename, root, mnt / "weights")
        refused(errno.EXDEV, os.rename, root / "y2.npy", mnt / "y2.npy")  # across checkpoints: mv copies
    if kind == "dcp_folder":
        refused(errno.EPERM, os.rename, root / "metadata.json", root / "meta.json")  # Megatron's, beside the DCP
        os.rename(mnt / "context" / "model.yaml", mnt / "context" / "model2.yaml")
        refused(errno.EPERM, os.rename, root, mnt / "weights2")
        refused(errno.EXDEV, os.rename, root / "y2.npy", mnt / "context" / "y2.npy")


def _after(kind: str, source: Path, tmp: Path) -> None:
    if kind == "hf":
        assert sorted(p.name for p in source.iterdir()) == ["config2.json", "model.safetensors"]
        assert (source / "config2.json").read_text() == '{"model_type": "bert"}'
    if kind in ("nemo", "nemo_dcp"):
        with tarfile.open(source) as tar:
            names = tar.getnames()
        assert "config.yaml" in names and "model_config.yaml" not in names
        assert _extract(source, "config.yaml") == b"hidden: 4\n"
    if kind == "dcp_folder":
        assert (source / "weights" / "metadata.json").read_text() == '{"sharded_backend": "torch_dist"}'
        assert (source / "context" / "model2.yaml").read_text() == "hidden: 4\n"
        assert not (source / "context" / "model.yaml").exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
@pytest.mark.parametrize("kind", ["safetensors", "hf", "dcp", "npz"])
def test_a_renamed_folder_and_a_name_renamed_over_are_written(kind, mount, tmp_path):
    """The issue's case: `mv enc/block enc/blk` was shown, and the file came
    back unchanged; a tensor renamed over another kept the other's bytes.
    Two folders exchanged swap their tensors' keys."""
    make, _, _, read = FORMATS[kind]
    source = make(tmp_path)
    mnt = mount(source)
    os.rename(mnt / "enc" / "block", mnt / "enc" / "blk")
    os.rename(mnt / "z.npy", mnt / "x.npy")
    renameat2(mnt / "enc" / "blk", mnt / "dec", RENAME_EXCHANGE)
    rows = {line.split("\t")[0]: line.split("\t") for line in (mnt / ".ckptfs" / "tensors.tsv").read_text().splitlines()}
    assert "dec/w.npy" in rows and "enc/blk/w.npy" in rows and not any(p.startswith("enc/block/") for p in rows)
    if kind != "npz":  # the index names a moved tensor by its new key, its bytes still where the source has them
        assert rows["dec/w.npy"][1] == "dec.w" and "overlay" not in rows["dec/w.npy"][6]
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    expected = {k: v for k, v in SOURCE.items() if k not in ("x", "z", "dec.w") and not k.startswith("enc.")}
    expected.update({"x": SOURCE["z"], "dec.w": SOURCE["enc.block.w"], "dec.b": SOURCE["enc.block.b"],
                     "enc.blk.w": SOURCE["dec.w"]})
    _same(read(source) if kind != "dcp" else _numpy(_dcp_read(source, expected)), expected)


def test_gguf_refuses_renaming_its_tensors_and_takes_a_file_saved_into_place(mount, tmp_path):
    """GGUF finds tensors where the source has them: a rename of one is
    refused at the call (EPERM), never dropped at the repack; a file made
    in the mount and renamed into place (an editor's save) is taken."""
    from gguf import GGUFReader, GGUFWriter

    source = tmp_path / "m.gguf"
    writer = GGUFWriter(str(source), "llama")
    writer.add_uint32("llama.context_length", 16)
    writer.add_tensor("blk.0.w", SOURCE["p"])
    writer.add_tensor("blk.1.w", SOURCE["q"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    mnt = mount(source)
    refused(errno.EPERM, os.rename, mnt / "blk" / "0", mnt / "blk" / "9")
    refused(errno.EPERM, os.rename, mnt / "blk" / "0" / "w" / "raw.bin", mnt / "blk" / "0" / "w" / "r.bin")
    refused(errno.EPERM, renameat2, mnt / "blk" / "0", mnt / "blk" / "1", RENAME_EXCHANGE)
    refused(errno.EPERM, os.link, mnt / "metadata.yaml", mnt / "m.yaml")
    refused(errno.ENOTSUP, os.setxattr, mnt / "metadata.yaml", "user.note", b"1")
    text = (mnt / "metadata.yaml").read_text().replace("llama.context_length: !u32 16", "llama.context_length: 32")
    (mnt / "metadata.yaml.tmp").write_text(text)
    os.rename(mnt / "metadata.yaml.tmp", mnt / "metadata.yaml")
    (mnt / "tmpabcdefgh").write_text("a note\n")  # a temporary name: taken when closed
    refused(errno.EPERM, os.rename, mnt / "tmpabcdefgh", mnt / "notes.txt")  # a name the file cannot hold
    os.unlink(mnt / "tmpabcdefgh")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    reader = GGUFReader(str(source))
    assert reader.fields["llama.context_length"].contents() == 32
    assert {t.name: t.data.tobytes() for t in reader.tensors} == {
        "blk.0.w": SOURCE["p"].tobytes(), "blk.1.w": SOURCE["q"].tobytes()}


def test_renames_and_exchanges_are_replayed_from_the_journal(tmp_path):
    """`ckptfs recover` and `mount --resume` rebuild the tree a rename made:
    the moved files stand at their new paths, named after them, and count as
    edited there (a writer must not take the source's bytes for that path)."""
    from ckptfs.pack.changes import files_of, is_edited
    from ckptfs.tree.nodes import Content, Dir, File
    from ckptfs.write.editable import EditableTree
    from ckptfs.write.overlay import Overlay

    def tree() -> Dir:
        root = Dir()
        for path, data in (("enc/block/w.npy", b"w"), ("enc/block/b.npy", b"b"), ("p.npy", b"p"), ("q.npy", b"q")):
            *folders, leaf = path.split("/")
            root.subdir(folders).add(leaf, File(Content([data]), xattrs={"ckptfs.name": path[:-4].replace("/", ".")}))
        return root

    def shown(root: Dir) -> dict:
        return {p: (n.content.read(0, n.content.size), is_edited(n), n.xattrs.get("ckptfs.name"))
                for p, n in files_of(root).items() if isinstance(n, File)}

    source = tmp_path / "m.safetensors"
    source.write_bytes(b"x")
    overlay = Overlay.create(str(source))
    edited = EditableTree(tree(), overlay)
    edited.rename("enc/block", "enc/blk")
    edited.exchange("p.npy", "q.npy")
    expected = shown(edited.root)
    assert expected == {"enc/blk/w.npy": (b"w", True, None), "enc/blk/b.npy": (b"b", True, None),
                        "p.npy": (b"q", True, None), "q.npy": (b"p", True, None)}
    overlay.release()
    again, records = Overlay.reopen(str(source))
    assert [r["op"] for r in records] == ["rename", "exchange"]
    replayed = EditableTree(tree(), again, journal=False)
    replayed.replay(records)
    assert shown(replayed.root) == expected
    again.remove()


def test_a_folder_that_is_a_dict_of_the_pickle_is_refused_and_its_files_move(mount, tmp_path):
    """A new path in a torch.save checkpoint spells a dotted key in the
    nearest container: a renamed dict would not move but scatter into keys
    like `enc2.w`, so its rename is refused at the call; the files in it
    move, and a YAML value keeps its value."""
    source = tmp_path / "nested.pt"
    torch.save({"model": {"enc": {"w": torch.arange(4.0), "b": torch.ones(2)}}, "epoch": 3}, source)
    mnt = mount(source)
    refused(errno.EPERM, os.rename, mnt / "model" / "enc", mnt / "model" / "enc2")
    os.rename(mnt / "model" / "enc" / "w.npy", mnt / "model" / "enc" / "w2.npy")
    os.rename(mnt / "epoch.yaml", mnt / "model" / "epoch.yaml")
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    loaded = torch.load(source, weights_only=True)
    assert sorted(loaded) == ["model"] and sorted(loaded["model"]) == ["enc", "epoch"]
    assert loaded["model"]["epoch"] == 3
    assert {k: v.tolist() for k, v in loaded["model"]["enc"].items()} == {"w2": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 1.0]}
