"""Tools that write a temporary file and rename it over the one they edit
(sed -i, vim, Python's mkstemp then os.replace) work on a file at the root
and in a subfolder of every writable format; each edit is read back by the
format's own library. A temporary file left in the mount is refused by the
repack, with what to do."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile

import numpy as np
import pytest
import torch

from .conftest import TIMEOUT, run_ckptfs, umount

ONES = np.ones((2, 3), np.float32)
#: each tool changes what the one before it wrote: a tool that did nothing shows in the end
WORDS = ("alpha", "beta", "gamma", "delta")
#: float32 1.0 (00 00 80 3f) -> sed 1.5 (00 00 c0 3f) -> vim 3.0 (00 00 40 40) -> Python + 1
LAST_VALUE = 4.0


def _gguf(path):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_string("note", WORDS[0])
    w.add_tensor("blk.w", ONES)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _read_gguf(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    [tensor] = reader.tensors
    return reader.get_field("note").contents(), [np.array(tensor.data)]


def _safetensors(path):
    from safetensors.numpy import save_file

    save_file({"enc.w": ONES}, str(path), metadata={"note": WORDS[0]})


def _read_safetensors(path):
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return f.metadata()["note"], [f.get_tensor("enc.w")]


def _hf(path):
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"note": WORDS[0]}))
    save_file({"enc.w": ONES}, str(path / "model.safetensors"), metadata={"format": "pt"})


def _read_hf(path):
    from safetensors.numpy import load_file

    return json.loads((path / "config.json").read_text())["note"], [load_file(path / "model.safetensors")["enc.w"]]


def _pt(path):
    torch.save({"note": WORDS[0], "model": {"w": torch.from_numpy(ONES)}}, path)


def _read_pt(path):
    state = torch.load(path, weights_only=True)
    return state["note"], [state["model"]["w"].numpy()]


def _nemo(path):
    folder = path.parent / "nemo-folder"
    folder.mkdir()
    (folder / "model_config.yaml").write_text(f"note: {WORDS[0]}\n")
    torch.save({"state_dict": {"w": torch.from_numpy(ONES)}}, folder / "model_weights.ckpt")
    with tarfile.open(path, "w:") as tar:  # as NeMo writes a .nemo
        tar.add(folder, arcname=".")


def _read_nemo(path):
    with tarfile.open(path) as tar:
        config = tar.extractfile("./model_config.yaml").read().decode()
        tar.extract("./model_weights.ckpt", path.parent / "out", filter="data")
    state = torch.load(path.parent / "out" / "model_weights.ckpt", weights_only=True)
    return config.split(":")[1].strip(), [state["state_dict"]["w"].numpy()]


def _dcp(path):
    import torch.distributed.checkpoint as dcp

    with pytest.warns(UserWarning):  # a single process, no process group: as dcp.save allows
        dcp.save({"w": torch.from_numpy(ONES), "model": {"w": torch.from_numpy(ONES)}}, checkpoint_id=str(path))
    (path / "note.txt").write_text(WORDS[0])


def _read_dcp(path):
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.zeros(2, 3), "model": {"w": torch.zeros(2, 3)}}
    with pytest.warns(UserWarning):
        dcp.load(state, checkpoint_id=str(path))
    return (path / "note.txt").read_text(), [state["w"].numpy(), state["model"]["w"].numpy()]


def _npz(path):
    np.savez(path, w=ONES, **{"b/c": ONES})


def _read_npz(path):
    with np.load(path) as archive:
        return None, [archive["w"], archive["b/c"]]  # an archive of arrays holds no text


#: format -> (writer, source name, files edited (root, then a subfolder), reader)
FORMATS = {
    "gguf": (_gguf, "m.gguf", ["metadata.yaml", "blk/w/tensor.npy"], _read_gguf),
    "safetensors": (_safetensors, "m.safetensors", ["__metadata__.yaml", "enc/w.npy"], _read_safetensors),
    "hf": (_hf, "hf", ["config.json", "enc/w.npy"], _read_hf),
    "torch.save": (_pt, "m.pt", ["note.yaml", "model/w.npy"], _read_pt),
    "nemo": (_nemo, "m.nemo", ["model_config.yaml", "model_weights.ckpt/state_dict/w.npy"], _read_nemo),
    "dcp": (_dcp, "dcp", ["note.txt", "w.npy", "model/w.npy"], _read_dcp),
    "npz": (_npz, "m.npz", ["w.npy", "b/c.npy"], _read_npz),
}


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "LC_ALL": "C"})
    assert done.returncode == 0 and not done.stderr, f"{command[0]}: {done.stderr}"


def _sed(path) -> None:
    if path.suffix == ".npy":
        _run("sed", "-i", r"s/\x80?/\xc0?/g", str(path))
    else:
        _run("sed", "-i", f"s/{WORDS[0]}/{WORDS[1]}/", str(path))


def _vim(path) -> None:
    vim = ["vim", "-es", "-u", "NONE", "-i", "NONE"]
    if path.suffix == ".npy":
        _run(*vim, "-b", "--cmd", "set enc=latin1", "-c", r"%s/\%xc0?/@@/ge", "-c", "wq", str(path))
    else:
        _run(*vim, "-c", f"%s/{WORDS[1]}/{WORDS[2]}/e", "-c", "wq", str(path))


def _python_replace(path) -> None:
    """Write a temporary file beside it (mkstemp's tmpXXXXXXXX), then os.replace it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        if path.suffix == ".npy":
            np.save(f, np.load(path) + 1)
        else:
            f.write(path.read_bytes().replace(WORDS[2].encode(), WORDS[3].encode()))
    os.replace(tmp, path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sed_vim_and_python_edit_files_at_the_root_and_in_subfolders_of_every_writable_format(fmt, tmp_path, mount):
    make, name, edited, read = FORMATS[fmt]
    source = tmp_path / name
    make(source)
    mnt = mount(source)
    for path in edited:
        for tool in (_sed, _vim, _python_replace):
            tool(mnt / path)
    assert not [p for p in os.listdir(mnt) if p.startswith(("sed", "tmp"))]
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    note, arrays = read(source)
    assert note is None or note.strip() == WORDS[-1]
    for array in arrays:
        assert array.shape == ONES.shape and (array == LAST_VALUE).all(), array


@pytest.mark.parametrize("fmt", ["gguf", "nemo"])
def test_a_temporary_file_left_in_the_mount_is_refused_by_the_repack(fmt, tmp_path, mount):
    """sed's temporary file (closed without error, as sed closes it before
    its rename) is never packed: in a .nemo it would become a member."""
    make, name, _, _ = FORMATS[fmt]
    source = tmp_path / name
    make(source)
    before = source.read_bytes()
    mnt = mount(source, log_errors_expected=True)
    (mnt / "sedAb12Cd").write_text(f"note: {WORDS[1]}\n")
    done = umount(mnt)
    assert done.returncode == 1
    assert "sedAb12Cd: left by sed -i or a program that writes a temporary file" in done.stderr
    assert "rename each over the file it stands for, or remove it" in done.stderr
    assert source.read_bytes() == before
    assert run_ckptfs("recover", source, "--discard").returncode == 0


def test_files_of_the_source_named_like_temporary_files_are_kept(tmp_path, mount):
    """Only files made in the mount are editors' temporaries: a tensor
    `layers.4913.w` (4913 is vim's probe file) and a `.nemo` member `notes~`
    stay when another file is edited (they were dropped from the repack)."""
    from safetensors.numpy import load_file, save_file

    weights = tmp_path / "m.safetensors"
    save_file({"layers.4913.w": ONES, "layers.0.w": ONES * 2, "b": ONES * 3}, str(weights))
    nemo = tmp_path / "m.nemo"
    with tarfile.open(nemo, "w") as tar:
        for member, text in (("model_config.yaml", "a: 1\n"), ("notes~", "kept\n"), ("x.tmp", "kept too\n")):
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    mnt = mount(weights)
    assert (mnt / "layers" / "4913" / "w.npy").exists()
    np.save(mnt / "b.npy", ONES * 4)
    assert "layers.4913.w" in (mnt / ".ckptfs" / "tensors.tsv").read_text()  # what the repack packs
    assert umount(mnt).returncode == 0
    got = load_file(str(weights))
    assert sorted(got) == ["b", "layers.0.w", "layers.4913.w"]
    assert (got["layers.4913.w"] == ONES).all() and (got["b"] == ONES * 4).all()

    mnt = mount(nemo)
    (mnt / "model_config.yaml").write_text("a: 2\n")
    (mnt / "x.tmp").write_text("edited\n")  # the source's own: an edit like any other
    assert umount(mnt).returncode == 0
    with tarfile.open(nemo) as tar:
        assert tar.getnames() == ["model_config.yaml", "notes~", "x.tmp"]
        assert tar.extractfile("notes~").read() == b"kept\n"
        assert tar.extractfile("x.tmp").read() == b"edited\n"
        assert tar.extractfile("model_config.yaml").read() == b"a: 2\n"


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "nemo"])
def test_a_file_renamed_to_a_backup_name_is_gone_as_rm_would_have_it(fmt, tmp_path, mount):
    """Emacs (and vim with `backup`) keeps its backup by renaming FILE to
    FILE~: the file is then gone from what is packed, never packed as a
    tensor `w.npy~` or refused as one."""
    source = tmp_path / f"m.{fmt}"
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({"w": ONES, "b": ONES * 2}, str(source))
    elif fmt == "npz":
        np.savez(source, w=ONES, b=ONES * 2)
    else:
        with tarfile.open(source, "w") as tar:
            for member in ("w.npy", "b.npy"):
                info = tarfile.TarInfo(member)
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))
    mnt = mount(source)
    os.rename(mnt / "w.npy", mnt / "w.npy~")
    assert "w.npy" not in (mnt / ".ckptfs" / "tensors.tsv").read_text()
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    if fmt == "nemo":
        with tarfile.open(source) as tar:
            assert tar.getnames() == ["b.npy"]
        return
    if fmt == "npz":
        got = dict(np.load(source))
    else:
        from safetensors.numpy import load_file

        got = load_file(str(source))
    assert sorted(got) == ["b"] and (got["b"] == ONES * 2).all()
