"""Adding a format is one module and one line of the registry
(docs/architecture.md): every module of ckptfs/formats that ends with a
FORMAT is tried by detection, once, and nothing else names the formats."""

from __future__ import annotations

import gzip
import importlib
import pkgutil
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckptfs.formats as formats
from ckptfs.formats import DIRECTORY_FORMATS, FILE_FORMATS
from ckptfs.formats.base import SNIFF_BYTES, DirectoryFormat, DirectoryWriter, FileFormat, FileWriter, WriterKind
from ckptfs.sources.directory import LocalDirectory

from . import tf_bundle_writer
from .conftest import FIXTURES, REPO, WRITER_TIMEOUT
from .hostile.keras import keras_zip, weights_h5


def test_every_format_module_is_in_the_registry_once():
    defined = []
    for info in pkgutil.walk_packages(formats.__path__, formats.__name__ + "."):
        fmt = getattr(importlib.import_module(info.name), "FORMAT", None)
        if isinstance(fmt, (FileFormat, DirectoryFormat)):
            defined.append(fmt)
    registered = list(FILE_FORMATS) + list(DIRECTORY_FORMATS)
    assert sorted(f.name for f in defined) == sorted(f.name for f in registered)
    assert len({id(f) for f in registered}) == len(registered)
    assert {"gguf", "numpy .npz", "deepspeed zero", "sharded torch.save (FSDP1)"} <= {f.name for f in registered}


def _gguf(path):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.context_length", 8)
    w.add_tensor("token_embd.weight", np.ones((2, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _deepspeed(path):
    """A save in DeepSpeed's layout, as test_deepspeed.py writes one by hand."""
    import torch

    tag = path / "global_step1"
    tag.mkdir(parents=True)
    (path / "latest").write_text("global_step1")
    torch.save({"module": {}, "buffer_names": [], "param_shapes": [{"w": (2, 2)}], "shared_params": {}},
               tag / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"partition_count": [1], "single_partition_of_fp32_groups": [torch.ones(4)]}},
               tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")


def _diffusers(path):
    from .diffusers_writer import pipeline

    pipeline().save_pretrained(path)


def _onnx(path):
    from .onnx_models import save

    save(path.parent / "onnx", "inline").rename(path)


def _legacy(path):
    import torch

    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)


def _peft_adapter(path):
    import peft
    import torch

    peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), peft.LoraConfig(target_modules=["0"])) \
        .save_pretrained(path)


def _orbax(path):
    """An OCDBT checkpoint Orbax writes, in a program of its own (JAX stays out of pytest)."""
    code = "import sys, pathlib; from tests.orbax_writer import pytree_save, tree; pytree_save(pathlib.Path(sys.argv[1]), tree())"
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=WRITER_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]


def _megatron_zarr(path):
    """Megatron's zarr layout by hand: metadata.json and one raw zarr v2
    array (tests/megatron_zarr_writer.py writes them with zarr)."""
    (path / "w").mkdir(parents=True)
    (path / "metadata.json").write_text('{"sharded_backend": "zarr", "sharded_backend_version": 1}')
    (path / "w" / ".zarray").write_text('{"zarr_format": 2, "shape": [3], "chunks": [3], "dtype": "<f4", '
                                        '"compressor": null, "fill_value": null, "order": "C", "filters": null}')
    (path / "w" / "0").write_bytes(np.ones(3, np.float32).tobytes())


#: format name -> (file or folder name, how to make one from the library that writes it, or a sample)
MADE = {
    "nemo (gzip tar)": ("m.nemo", lambda p: p.write_bytes(gzip.compress((FIXTURES / "nemo/tiny.nemo").read_bytes()))),
    "nemo (tar)": ("m.nemo", lambda p: shutil.copyfile(FIXTURES / "nemo/tiny.nemo", p)),
    "safetensors": ("m.safetensors", lambda p: save_file({"w": np.ones(3, np.float32)}, p)),
    "gguf": ("m.gguf", _gguf),
    "numpy .npz": ("m.npz", lambda p: np.savez(p, w=np.ones(3))),
    "numpy .npy": ("m.npy", lambda p: np.save(p, np.ones(3))),
    "onnx": ("m.onnx", _onnx),
    "torch.export (pt2)": ("m.pt2", lambda p: shutil.copyfile(FIXTURES / "pt2/tiny.pt2", p)),
    "torch.save (zip)": ("m.ckpt", lambda p: shutil.copyfile(FIXTURES / "lightning/tiny.ckpt", p)),
    "torch.save (legacy)": ("m.pt", _legacy),
    "torch.distributed.checkpoint": ("m", lambda p: shutil.copytree(FIXTURES / "dcp/fsdp2_2rank", p)),
    "deepspeed zero": ("m", _deepspeed),
    "megatron-zarr": ("m", _megatron_zarr),
    "Hugging Face directory": ("m", lambda p: shutil.copytree(FIXTURES / "hf/bert_tiny_sharded", p)),
    "PEFT adapter": ("m", _peft_adapter),
    "folder of distributed checkpoints": ("m", lambda p: shutil.copytree(FIXTURES / "dcp/fsdp2_2rank", p / "weights")),
    "diffusers pipeline": ("m", _diffusers),
    "orbax": ("m", _orbax),
    "Keras (.keras)": ("m.keras", keras_zip),  # as model.save lays it out (tests/test_keras.py: Keras's own)
    "HDF5 (Keras .h5)": ("m.weights.h5", lambda p: p.write_bytes(weights_h5())),
    "tensorflow bundle": ("m.index", lambda p: tf_bundle_writer.write_arrays(p.with_suffix(""), tf_bundle_writer.ARRAYS)),
    "tensorflow checkpoint folder": ("m", tf_bundle_writer.checkpoint_folder),
    "tensorflow saved model": ("m", tf_bundle_writer.saved_model_folder),
}


@pytest.mark.parametrize("name", MADE)
def test_a_format_takes_edits_as_its_record_says(tmp_path, name):
    """What `ckptfs --help` says of a format (its record's `writes`, and the
    name detection gives it) is what opening one does: a writer of that kind,
    or none and a read-only mount; `ckptfs info` names it by its record's
    description. FSDP1 saves need three ranks: tests/test_fsdp1.py."""
    fmt = next(f for f in (*FILE_FORMATS, *DIRECTORY_FORMATS) if f.name == name)
    path = tmp_path / MADE[name][0]
    MADE[name][1](path)
    assert _detected(path) is fmt
    checkpoint = formats.open_checkpoint(str(path), str(tmp_path / "cache"))
    kinds = {None: type(None), WriterKind.FILE: FileWriter, WriterKind.DIRECTORY: DirectoryWriter}
    assert isinstance(checkpoint.writer, kinds[fmt.writes])
    assert checkpoint.description == fmt.description


def _detected(path):
    """The format detection takes `path` for: the first whose sniff says yes."""
    if path.is_dir():
        return next(f for f in DIRECTORY_FORMATS if f.sniff(LocalDirectory(str(path))))
    head = path.read_bytes()[:SNIFF_BYTES]
    return next(f for f in FILE_FORMATS if f.sniff(head))


def test_every_format_is_made_above_but_fsdp1():
    names = {f.name for f in (*FILE_FORMATS, *DIRECTORY_FORMATS)}
    assert names == set(MADE) | {"sharded torch.save (FSDP1)"}


def _readme_table() -> list[str]:
    """The first cells of the rows of the README's table of what ckptfs reads."""
    text = (REPO / "README.md").read_text()
    section = text.split("## What it reads", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [row.split(" | ", 1)[0].removeprefix("| ") for row in rows[2:]]  # past the heading and its rule


def test_the_readme_table_names_every_format_as_the_registry_describes_it():
    """One row a format, first cell as `ckptfs --help` names it (its
    record's description, and read-only where it writes nothing); the one
    other row is where they may come from."""
    registered = [formats.shown_as(f) for f in (*FILE_FORMATS, *DIRECTORY_FORMATS)]
    table = _readme_table()
    others = [cell for cell in table if cell not in registered]
    assert sorted(cell for cell in table if cell in registered) == sorted(registered), \
        f"README.md's table of formats lacks or repeats some of {registered}"
    assert len(others) == 1 and others[0].startswith("any of these on S3"), others


def test_a_file_format_is_opened_with_the_folder_around_it(tmp_path, monkeypatch):
    """`Opening.neighbours` lists and opens the files beside a local
    checkpoint (an ONNX model's external data, a TensorFlow `.index` beside
    its shards); a link that leaves the folder is not followed."""
    from ckptfs.tree.checkpoint import Checkpoint
    from ckptfs.tree.nodes import Dir

    opened = []

    def open_probe(opening):
        opened.append(opening)
        return Checkpoint("probe", opening.source.path, opening.stat, Dir(), Dir())

    probe = FileFormat("probe", lambda head: head.startswith(b"PROBE"), open_probe, "probe files", None)
    monkeypatch.setattr(formats, "FILE_FORMATS", (probe, *FILE_FORMATS))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.probe").write_bytes(b"PROBE header")
    (folder / "model.probe.data").write_bytes(b"external weights")
    (tmp_path / "secret").write_bytes(b"outside")
    (folder / "leak").symlink_to(tmp_path / "secret")
    ckpt = formats.open_checkpoint(str(folder / "model.probe"), str(tmp_path / "cache"))
    assert ckpt.description == "probe files"
    neighbours = opened[0].neighbours
    assert neighbours.names() == ["leak", "model.probe", "model.probe.data"]
    assert neighbours.read("model.probe.data") == b"external weights"
    assert not neighbours.is_file("leak") and neighbours.is_link("leak")
