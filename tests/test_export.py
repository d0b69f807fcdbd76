"""`ckptfs export` and the `.ckptfs/export/` view: every format's tensors
as safetensors, a Hugging Face folder or a torch.save file, compared with
what torch, safetensors, the DCP loader and transformers read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import ml_dtypes  # noqa: F401  (numpy then knows bfloat16 and float8)
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from .conftest import FIXTURES, run_ckptfs

NEMO = FIXTURES / "nemo" / "tiny.nemo"
LIGHTNING = FIXTURES / "lightning" / "tiny.ckpt"
DCP = FIXTURES / "dcp" / "fsdp2_2rank"
HF = FIXTURES / "hf" / "bert_tiny_sharded"


def _flat(obj, prefix="") -> dict[str, torch.Tensor]:
    """The tensors of a nested state dict, by dotted name (as ckptfs names them)."""
    if isinstance(obj, torch.Tensor):
        return {prefix[:-1]: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _reference(path, tmp_path) -> dict[str, torch.Tensor]:
    """What the format's own loader reads."""
    if path.is_dir() and (path / ".metadata").exists():
        dcp_to_torch_save(str(path), str(tmp_path / "dcp.pt"))
        return _flat(torch.load(tmp_path / "dcp.pt", weights_only=False))
    if path.is_dir():
        return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}
    if path.suffix == ".nemo":
        import tarfile

        with tarfile.open(path) as tar:
            tar.extract("./model_weights.ckpt", tmp_path, filter="data")
        return _flat(torch.load(tmp_path / "model_weights.ckpt", weights_only=True))
    return _flat(torch.load(path, weights_only=False))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        bits = [t.contiguous().reshape(-1).view(torch.uint8) for t in (a[name], b[name])]
        assert torch.equal(*bits), name


def _export(*args) -> None:
    done = run_ckptfs("export", *map(str, args))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("source", [NEMO, LIGHTNING, DCP, FIXTURES / "dcp" / "fsdp2_2rank.ref.pt", HF],
                         ids=lambda p: p.name)
def test_every_format_exports_bit_exact_to_each_target(source, tmp_path, mount):
    reference = _reference(source, tmp_path)
    _export(source, tmp_path / "out.safetensors")
    _equal(load_file(tmp_path / "out.safetensors"), reference)
    _export(source, tmp_path / "out.pt", "--to", "torch")
    _equal(torch.load(tmp_path / "out.pt", weights_only=True), reference)
    _export(source, tmp_path / "hf", "--to", "hf", "--max-shard-size", "200B")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards and len(shards) > 1
    loaded = {k: v for name in shards for k, v in load_file(tmp_path / "hf" / name).items()}
    assert {k: index["weight_map"][k] for k in loaded} == {k: n for n in shards for k in load_file(tmp_path / "hf" / n)}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in reference.values())
    _equal(loaded, reference)
    # the mount's view: the same bytes, readable where it lies
    view = mount(source, "-o", "ro") / ".ckptfs" / "export"
    assert (view / "model.safetensors").read_bytes() == (tmp_path / "out.safetensors").read_bytes()
    with safe_open(view / "model.safetensors", "pt") as f:
        _equal({k: f.get_tensor(k) for k in f.keys()}, reference)
    beside = sorted(p.name for p in source.iterdir() if p.is_file() and ".safetensors" not in p.name) \
        if source == HF else []  # a Hugging Face folder's config and tokenizer, written beside the weights
    assert sorted(p.name for p in (view / "hf").iterdir()) == sorted(["model.safetensors", *beside])  # one shard
    for name in beside:
        assert (view / "hf" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes() == (source / name).read_bytes()


def test_the_view_is_deterministic_and_follows_the_mount_not_the_edits(tmp_path, mount):
    copy = tmp_path / "model.nemo"
    shutil.copy(NEMO, copy)
    first = hashlib.sha256((mount(copy, "-o", "ro") / ".ckptfs/export/model.safetensors").read_bytes()).hexdigest()
    mnt = mount(copy)
    weight = mnt / "model_weights.ckpt/norm/weight.npy"
    array = np.load(weight)
    np.save(weight, array + 1)
    view = (mnt / ".ckptfs/export/model.safetensors").read_bytes()
    assert hashlib.sha256(view).hexdigest() == first  # as mounted; the edit shows after the repack
    done = run_ckptfs("umount", mnt)
    assert done.returncode == 0, done.stderr
    again = (mount(copy, "-o", "ro") / ".ckptfs/export/model.safetensors")
    with safe_open(again, "np") as f:
        assert np.array_equal(f.get_tensor("norm.weight"), array + 1)


def test_names_selected_and_mapped(tmp_path):
    out = tmp_path / "weights.safetensors"
    _export(LIGHTNING, out, "--include", "state_dict.*", "--exclude", "*.bias", "--map", "state_dict.=")
    reference = _flat(torch.load(LIGHTNING, weights_only=False)["state_dict"])
    _equal(load_file(out), {k: v for k, v in reference.items() if not k.endswith(".bias")})


def test_dtypes_and_what_safetensors_cannot_hold(tmp_path, mount):
    tensors = {"f8": torch.randn(4, 3).to(torch.float8_e4m3fn), "b": torch.tensor([True, False]),
               "i16": torch.arange(-5, 5, dtype=torch.int16), "u8": torch.arange(7, dtype=torch.uint8),
               "bf": torch.randn(2, 3, 4).to(torch.bfloat16), "scalar": torch.tensor(2.5, dtype=torch.float64),
               "strided": torch.arange(24.0).reshape(4, 6)[:, ::2], "empty": torch.zeros(0, 3),
               "c128": torch.randn(3, dtype=torch.complex128)}
    source = tmp_path / "mixed.pt"
    torch.save(tensors, source)
    done = run_ckptfs("export", str(source), str(tmp_path / "out.safetensors"))
    assert done.returncode == 0
    assert "ckptfs: left out c128: safetensors has no dtype complex128" in done.stderr
    expected = {k: v for k, v in tensors.items() if k != "c128"}
    _equal(load_file(tmp_path / "out.safetensors"), expected)
    _export(source, tmp_path / "out.pt", "--to", "torch")
    _equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)
    view = mount(source, "-o", "ro") / ".ckptfs/export"
    assert "c128: safetensors has no dtype complex128" in (view / "left-out.txt").read_text()
    assert (view / "model.safetensors").read_bytes() == (tmp_path / "out.safetensors").read_bytes()


def test_from_pretrained_reads_the_export_and_the_mount(tmp_path, mount):
    import transformers

    original = transformers.BertModel.from_pretrained(HF)
    _export(HF, tmp_path / "hf", "--to", "hf", "--max-shard-size", "40KB")
    assert (tmp_path / "hf" / "config.json").read_bytes() == (HF / "config.json").read_bytes()  # written beside
    exported = transformers.BertModel.from_pretrained(tmp_path / "hf")
    _equal(exported.state_dict(), original.state_dict())
    # straight from a mount: the config beside, the weights in the mount's view
    view = mount(HF, "-o", "ro") / ".ckptfs/export"
    folder = tmp_path / "from_mount"
    folder.mkdir()
    shutil.copy(HF / "config.json", folder)
    (folder / "model.safetensors").symlink_to(view / "model.safetensors")
    _equal(transformers.BertModel.from_pretrained(folder).state_dict(), original.state_dict())


def test_refusals_leave_nothing_behind(tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"mine")
    done = run_ckptfs("export", str(NEMO), str(out))
    assert (done.returncode, done.stderr.strip()) == (1, f"ckptfs: {out}: exists; remove it first or give a new path")
    assert out.read_bytes() == b"mine"
    done = run_ckptfs("export", str(NEMO), str(tmp_path / "x.safetensors"), "--include", "nothing*")
    assert done.returncode == 1 and "no tensors to export (see --include and --exclude)" in done.stderr
    done = run_ckptfs("export", str(NEMO), str(tmp_path / "x"), "--to", "hf", "--max-shard-size", "lots")
    assert done.returncode == 1 and "--max-shard-size 'lots'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_the_view_is_readable_only_by_whom_every_source_file_is(tmp_path, mount):
    folder = tmp_path / "hf"
    shutil.copytree(HF, folder)
    private = sorted(folder.glob("*.safetensors"))[0]
    os.chmod(private, 0o640)
    view = mount(folder, "-o", "ro") / ".ckptfs/export"
    mode = stat.S_IMODE(os.stat(view / "model.safetensors").st_mode)
    assert mode & 0o004 == 0 and mode & 0o440 == 0o440


def test_a_file_edited_before_the_view_is_laid_out_is_left_out_with_a_reason():
    """A resumed mount (`mount --resume`) starts with edits in its tree:
    their bytes exist only in the overlay until the repack writes them."""
    from ckptfs.formats import open_checkpoint
    from ckptfs.sources.cachedir import default_cache_dir
    from ckptfs.write.export import select
    from ckptfs.write.overlay import EditedContent

    ckpt = open_checkpoint(str(NEMO), default_cache_dir())
    before = select(ckpt)
    node = ckpt.root.children["model_weights.ckpt"].children["norm"].children["weight.npy"]
    node.content = EditedContent.__new__(EditedContent)
    after = select(ckpt)
    assert [i.name for i in after.items] == [i.name for i in before.items if i.name != "norm.weight"]
    assert after.left_out == ["norm.weight: edited in this mount; exported as it is once the edits are written"]


def _quantized_gguf(path) -> None:
    """A plain tensor, Q8_0 (quantized by gguf), Q4_K blocks, and IQ4_NL
    blocks (a type ckptfs does not dequantize), as GGUFWriter writes them."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFWriter, quants

    rng = np.random.default_rng(27)

    def blocks(rows: int, per_row: int, size: int, scales: tuple[int, ...]) -> np.ndarray:
        raw = rng.integers(0, 256, (rows * per_row, size), dtype=np.uint8)
        for at in scales:  # finite float16 scales, as a quantizer writes them
            raw[:, at:at + 2] = rng.uniform(-0.1, 0.1, (len(raw), 1)).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, per_row * size)

    w = GGUFWriter(str(path), "llama")
    w.add_tensor("plain", rng.standard_normal((4, 32)).astype(np.float32))
    q8 = quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), T.Q8_0)
    for name, data, kind in (("blk.q8", q8, T.Q8_0), ("blk.q4k", blocks(2, 1, 144, (0, 2)), T.Q4_K),
                             ("blk.iq4", blocks(3, 2, 18, (0,)), T.IQ4_NL)):
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_exports_every_tensor_dequantized_or_as_its_blocks_and_names_what_it_leaves_out(tmp_path, mount):
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader, quants

    source = tmp_path / "q.gguf"
    _quantized_gguf(source)
    tensors = {t.name: t for t in GGUFReader(str(source)).tensors}

    out = tmp_path / "values.safetensors"
    done = run_ckptfs("export", source, out)
    assert done.returncode == 0, done.stderr
    assert "ckptfs: left out blk.iq4: ckptfs cannot dequantize IQ4_NL; --quantized raw writes its blocks" in done.stderr
    assert ": 3 tensors (2 dequantized), " in done.stderr
    with safe_open(out, "np") as f:
        assert sorted(f.keys()) == ["blk.q4k", "blk.q8", "plain"]
        assert f.get_tensor("plain").tobytes() == np.asarray(tensors["plain"].data).tobytes()
        for name in ("blk.q8", "blk.q4k"):
            want = quants.dequantize(tensors[name].data, tensors[name].tensor_type)
            got = f.get_tensor(name)
            assert (got.dtype, got.shape) == (np.float32, want.shape) and got.tobytes() == want.tobytes(), name
    view = mount(source, "-o", "ro") / ".ckptfs/export"
    assert (view / "model.safetensors").read_bytes() == out.read_bytes()  # what --help promises

    blocks = tmp_path / "blocks"
    done = run_ckptfs("export", source, blocks, "--to", "hf", "--quantized", "raw")
    assert done.returncode == 0, done.stderr
    assert "left out" not in done.stderr and ": 4 tensors, " in done.stderr
    with safe_open(blocks / "model.safetensors", "np") as f:
        metadata = f.metadata()
        for name in ("blk.q8", "blk.q4k", "blk.iq4"):
            stored, got = tensors[name], f.get_tensor(name)
            assert got.dtype == np.uint8 and got.shape == stored.data.shape and got.tobytes() == stored.data.tobytes()
            assert metadata[f"ggml_type.{name}"] == stored.tensor_type.name
            again = quants.dequantize(got, T[metadata[f"ggml_type.{name}"]])  # the blocks and their type suffice
            assert again.tobytes() == quants.dequantize(stored.data, stored.tensor_type).tobytes()
        assert "ggml_type.plain" not in metadata

    done = run_ckptfs("export", source, tmp_path / "x.pt", "--to", "torch", "--quantized", "raw")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        "ckptfs: --quantized raw: a torch.save file has no place to say the GGML type of a tensor's blocks; "
        "write them --to safetensors or --to hf")
    assert not (tmp_path / "x.pt").exists()
