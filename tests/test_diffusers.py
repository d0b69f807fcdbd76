"""diffusers pipeline folders: a tiny Stable Diffusion pipeline written by
diffusers on CPU (tests/diffusers_writer.py: a sharded unet with an fp16
variant, a vae in torch.save files, a transformers text encoder, a
tokenizer, a scheduler), against safetensors, torch.load and
DiffusionPipeline.from_pretrained."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import TIMED_APART, run_ckptfs, umount

pytestmark = TIMED_APART

#: the components holding a model, and how each stores it
COMPONENTS = ("text_encoder", "unet", "vae")
#: every file save_pretrained wrote that is not a model's weights: shown as it is
PLAIN = ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json",
         "tokenizer/tokenizer_config.json", "text_encoder/config.json", "unet/config.json",
         "unet/diffusion_pytorch_model.safetensors.index.json", "vae/config.json")


@pytest.fixture(scope="module")
def pipeline(written) -> Path:
    return written("tests.diffusers_writer")


def stored(folder: Path, component: str) -> dict[str, torch.Tensor]:
    """A component's tensors (not its variants) as the libraries read its files."""
    where = folder / component
    if component == "vae":
        return torch.load(where / "diffusion_pytorch_model.bin", weights_only=True)
    if component == "unet":
        index = json.loads((where / "diffusion_pytorch_model.safetensors.index.json").read_text())
        return {name: t for shard in sorted(set(index["weight_map"].values()))
                for name, t in load_file(str(where / shard)).items()}
    return load_file(str(where / "model.safetensors"))


def rows(mnt: Path) -> list[dict[str, str]]:
    with open(mnt / ".ckptfs" / "tensors.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def same(array: np.ndarray, tensor: torch.Tensor) -> bool:
    return array.dtype == tensor.numpy().dtype and array.shape == tuple(tensor.shape) and \
        array.tobytes() == tensor.numpy().tobytes()


def in_folder(folder: Path, name: str) -> Path:
    """Where a tree of split names shows the tensor `name`."""
    *parents, leaf = name.split(".")
    return folder.joinpath(*parents, leaf + ".npy")


def info(source: Path) -> dict:
    done = run_ckptfs("info", "--json", source)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_each_component_is_its_own_merged_tree_bit_for_bit(pipeline, mount):
    mnt = mount(pipeline, "-o", "ro")
    listed = rows(mnt)
    for component in COMPONENTS:
        expected = stored(pipeline, component)
        mine = {r["name"]: r["path"] for r in listed if r["path"].startswith(component + "/")}
        assert sorted(mine) == sorted(expected), component
        for name, tensor in expected.items():
            assert same(np.load(mnt / mine[name]), tensor), f"{component}: {name}"
    assert len(listed) == sum(len(stored(pipeline, c)) for c in COMPONENTS)
    for rel in PLAIN:
        assert (mnt / rel).read_bytes() == (pipeline / rel).read_bytes(), rel
    summary = info(pipeline)
    assert summary["format"] == "diffusers pipeline" and summary["writable"]
    assert sorted(summary["by_prefix"]) == list(COMPONENTS)
    assert summary["notes"] == []  # safety_checker, feature_extractor: [null, null], left out as diffusers does


def test_variants_and_shards_are_shown_as_they_are_stored(pipeline, mount):
    mnt = mount(pipeline, "-o", "ro")
    fp16 = load_file(str(pipeline / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    shown = mnt / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    assert all(same(np.load(in_folder(shown, n)), t) for n, t in fp16.items()) and fp16
    half = torch.load(pipeline / "vae" / "diffusion_pytorch_model.fp16.bin", weights_only=True)
    shown = mnt / "vae" / "diffusion_pytorch_model.fp16.bin"
    assert all(same(np.load(in_folder(shown, n)), t) for n, t in half.items()) and half
    shards = sorted(p.name for p in (pipeline / "unet").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and all((mnt / "unet" / s).is_dir() for s in shards)
    with pytest.raises(OSError):  # a shard's tree is read-only: edits go to the merged tree
        np.save(in_folder(mnt / "unet" / shards[0], next(iter(load_file(str(pipeline / "unet" / shards[0]))))),
                np.zeros(1, np.float32))


def _edit(mnt: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Edits of a tensor in each component and of the scheduler's config;
    returns {component: (tensor name, its new value)}."""
    by_name = {(r["path"].split("/")[0], r["name"]): r["path"] for r in rows(mnt)}
    edits = {}
    for component, name in (("unet", "conv_in.weight"), ("vae", "encoder.conv_in.bias"),
                            ("text_encoder", "final_layer_norm.bias")):
        path = mnt / by_name[component, name]
        old = np.load(path)
        new = np.linspace(-1, 1, old.size, dtype=old.dtype).reshape(old.shape)
        np.save(path, new)
        edits[component] = (name, new)
    config = json.loads((mnt / "scheduler" / "scheduler_config.json").read_text())
    config["beta_end"] = 0.5
    (mnt / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))
    return edits


def _inodes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def test_edits_are_repacked_into_a_pipeline_diffusers_loads(pipeline, mount, tmp_path):
    from diffusers import DiffusionPipeline

    src = Path(shutil.copytree(pipeline, tmp_path / "pipe"))
    single = {"model.diffusion_model.w": torch.arange(6.0).reshape(2, 3)}  # a single-file checkpoint beside the folders
    save_file(single, str(src / "single.safetensors"))
    before, variants = _inodes(src), {p: (src / p).read_bytes() for p in (
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.bin")}
    mnt = mount(src)
    shown = mnt / "single.safetensors" / "model" / "diffusion_model" / "w.npy"
    assert same(np.load(shown), single["model.diffusion_model.w"])
    with pytest.raises(OSError):  # not the pipeline: shown read-only, kept as it is
        np.save(shown, np.zeros((2, 3), np.float32))
    edits = _edit(mnt)
    done = umount(mnt)
    assert done.returncode == 0, done.stderr
    original = DiffusionPipeline.from_pretrained(pipeline)
    edited = DiffusionPipeline.from_pretrained(src)
    for component in COMPONENTS:
        was, now = getattr(original, component).state_dict(), getattr(edited, component).state_dict()
        name, value = edits[component]
        assert sorted(now) == sorted(was)
        assert [k for k in now if not torch.equal(now[k], was[k])] == [name], component
        assert now[name].numpy().tobytes() == value.tobytes(), component
    assert edited.scheduler.config.beta_end == 0.5 and original.scheduler.config.beta_end != 0.5
    for rel, data in variants.items():  # a variant is kept as it was: it is not what was edited
        assert (src / rel).read_bytes() == data, rel
    after = _inodes(src)
    rewritten = {"scheduler/scheduler_config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
                 "vae/diffusion_pytorch_model.bin", "text_encoder/model.safetensors",
                 next(rel for rel in before if rel.startswith("unet/diffusion_pytorch_model-")
                      and "conv_in.weight" in load_file(str(src / rel)))}
    assert sorted(after) == sorted(before)
    assert {rel for rel in before if after[rel] != before[rel]} == rewritten  # every other file hard-linked


def _pipeline_copy(pipeline: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pipeline, tmp_path / "pipe"))


def test_a_model_index_that_is_not_json_is_a_note(pipeline, mount, tmp_path):
    """The folders are shown all the same: the mount is where it is fixed."""
    src = _pipeline_copy(pipeline, tmp_path)
    (src / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",')
    mnt = mount(src)
    assert "model_index.json is not JSON (JSONDecodeError:" in (mnt / ".ckptfs" / "info.yaml").read_text()
    assert len(rows(mnt)) == sum(len(stored(pipeline, c)) for c in COMPONENTS)
    (mnt / "model_index.json").write_bytes((pipeline / "model_index.json").read_bytes())
    assert umount(mnt).returncode == 0
    assert info(src)["notes"] == []


def test_a_component_without_its_folder_is_a_note(pipeline, tmp_path):
    src = _pipeline_copy(pipeline, tmp_path)
    shutil.rmtree(src / "vae")
    summary = info(src)
    assert summary["notes"] == ["model_index.json names component 'vae' (diffusers AutoencoderKL), whose folder "
                                "vae/ is missing; from_pretrained cannot load it"]
    assert sorted(summary["by_prefix"]) == ["text_encoder", "unet"]


def test_a_component_named_outside_the_pipeline_is_never_followed(pipeline, mount, tmp_path):
    src = _pipeline_copy(pipeline, tmp_path)
    shutil.copytree(src / "unet", tmp_path / "x")
    index = json.loads((src / "model_index.json").read_text())
    index.update({"../x": ["diffusers", "UNet2DConditionModel"], "/abs": ["diffusers", "AutoencoderKL"]})
    (src / "model_index.json").write_text(json.dumps(index))
    mnt = mount(src, "-o", "ro")
    notes = info(src)["notes"]
    assert notes == [f"model_index.json names component {n!r} (diffusers {c}), which is no folder name of the "
                     "pipeline; not followed" for n, c in (("../x", "UNet2DConditionModel"), ("/abs", "AutoencoderKL"))]
    assert {r["path"].split("/")[0] for r in rows(mnt)} == set(COMPONENTS)
    assert sorted(os.listdir(mnt)) == sorted([".ckptfs", *os.listdir(src)])


def test_a_component_folder_linked_out_is_not_followed(pipeline, mount, tmp_path):
    src = _pipeline_copy(pipeline, tmp_path)
    (src / "unet").rename(tmp_path / "elsewhere")
    (src / "unet").symlink_to(tmp_path / "elsewhere")
    mnt = mount(src)
    assert os.path.islink(mnt / "unet") and {r["path"].split("/")[0] for r in rows(mnt)} == {"text_encoder", "vae"}
    summary = info(src)
    assert not summary["writable"] and "unet" in summary["read_only_because"]
    assert summary["notes"] == ["model_index.json names component 'unet' (diffusers UNet2DConditionModel), whose "
                                "folder unet/ is a link; not followed"]
    with pytest.raises(OSError):
        (mnt / "model_index.json").write_text("{}")


def test_a_model_index_nested_too_deep_or_too_large_is_a_note(pipeline, tmp_path, monkeypatch):
    from ckptfs.formats import diffusers
    from ckptfs.limits import LIMITS
    from ckptfs.sources.directory import LocalDirectory

    src = _pipeline_copy(pipeline, tmp_path)
    (src / "model_index.json").write_text("[" * 100_000 + "]" * 100_000)
    summary = info(src)
    [note] = summary["notes"]  # the parser's own words follow its error's name
    assert note.startswith("model_index.json is not JSON (RecursionError: ") and note.endswith(
        "; diffusers cannot load the pipeline until it is"), note
    assert sorted(summary["by_prefix"]) == list(COMPONENTS)
    monkeypatch.setattr(LIMITS, "header_bytes", 1000)
    assert diffusers.index_notes(LocalDirectory(str(src))) == [
        "model_index.json is 200000 bytes, more than the 1000 of max_header_bytes; its components are not checked"]


def test_a_quantized_component_shows_its_dequantized_weights(pipeline, mount, tmp_path):
    """An FP8 transformer (one scale per tensor) as a component: its
    dequantized.npy, as a Hugging Face folder shows it, under the component."""
    src = _pipeline_copy(pipeline, tmp_path)
    (src / "transformer").mkdir()
    weight, scale = torch.randn(40, 24, generator=torch.Generator().manual_seed(0)).to(torch.float8_e4m3fn), 0.5
    save_file({"a.weight": weight, "a.weight_scale_inv": torch.tensor([scale])},
              str(src / "transformer" / "diffusion_pytorch_model.safetensors"))
    mnt = mount(src, "-o", "ro")
    values = np.load(mnt / "transformer" / "a" / "weight" / "dequantized.npy")
    assert values.tobytes() == (weight.to(torch.float32) * scale).numpy().tobytes()
    assert info(src)["dequantized_on_read"] == {"FP8 float8_e4m3fn, one scale": {"weights": 1, "parameters": 960}}


def test_a_pipeline_on_the_hub_mounts_as_on_disk(pipeline, mount, tmp_path, monkeypatch):
    """hf:// against a stand-in for the Hub: the same pipeline, component by component."""
    from .remote_servers import HubServer

    hub = HubServer(pipeline)
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        remote = mount("hf://org/model", "--cache-dir", tmp_path / "cache")
        def placed(mnt):  # each row but the file's location, a URL on the Hub
            return [{k: v for k, v in r.items() if k != "file"} for r in rows(mnt)]

        assert placed(remote) == placed(mount(pipeline, "-o", "ro"))
        for r in rows(remote)[::25]:
            name, component = r["name"], r["path"].split("/")[0]
            assert same(np.load(remote / r["path"]), stored(pipeline, component)[name]), r["path"]
        assert info("hf://org/model")["format"] == "diffusers pipeline"
    finally:
        hub.close()


def test_diff_tells_apart_components_whose_tensors_share_names(pipeline, tmp_path):
    """SDXL's text_encoder and text_encoder_2 hold tensors of the same names:
    a change to one is a change, never hidden by the other."""
    a = _pipeline_copy(pipeline, tmp_path)
    shutil.copytree(a / "text_encoder", a / "text_encoder_2")
    index = json.loads((a / "model_index.json").read_text())
    index["text_encoder_2"] = index["text_encoder"]
    (a / "model_index.json").write_text(json.dumps(index, indent=2))
    b = Path(shutil.copytree(a, tmp_path / "b"))
    state = load_file(str(b / "text_encoder" / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name] + 1
    from safetensors.torch import save_file

    save_file(state, str(b / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    done = run_ckptfs("diff", a, b, "--tensors-only", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and list(report["differing"]) == [f"text_encoder.{name}"], report
    assert not (report["added"] or report["removed"])
