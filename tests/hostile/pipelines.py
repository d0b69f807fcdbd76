"""Hostile diffusers pipeline folders: a model_index.json that names
components outside the folder, nests without end or outgrows its bound,
and a component folder that is a link out. Made by hand, without diffusers:
what matters is the folder, not the model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..conftest import write_safetensors
from . import Case


def pipeline(tmp_path: Path, model_index: bytes) -> Path:
    """A pipeline folder: `model_index.json`, and unet/ holding a model of one tensor."""
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_bytes(model_index)
    write_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors",
                      {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    return folder


def _index(**components) -> bytes:
    return json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], **components}).encode()


def _naming_outside(tmp_path: Path) -> Path:
    """Components named `../x` (a model folder beside the pipeline) and `/abs`."""
    outside = pipeline(tmp_path / "beside", b"{}") / "unet"
    (tmp_path / "x").symlink_to(outside)
    return pipeline(tmp_path, _index(**{"../x": ["diffusers", "UNet2DModel"], "/abs": ["diffusers", "X"]}))


def _notes(mnt: Path) -> list[str]:
    return yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]


def _shows_only_its_own(mnt: Path, source: Path) -> None:
    assert _notes(mnt) == [f"model_index.json names component {n!r} (diffusers {c}), which is no folder name of "
                           "the pipeline; not followed" for n, c in (("../x", "UNet2DModel"), ("/abs", "X"))]
    assert sorted(p.name for p in mnt.iterdir()) == [".ckptfs", "model_index.json", "unet"]
    assert (mnt / ".ckptfs" / "tensors.tsv").read_text().splitlines()[1:] == [
        "unet/w.npy\tw\tfloat32\t[2]\t2\t8\tunet/diffusion_pytorch_model.safetensors\t64"]


def _linked_out(tmp_path: Path) -> Path:
    """A second component, vae/, that is a link to a model folder outside the pipeline."""
    folder = pipeline(tmp_path, _index(vae=["diffusers", "AutoencoderKL"]))
    (folder / "vae").symlink_to(pipeline(tmp_path / "elsewhere", b"{}") / "unet")
    return folder


def _not_followed(mnt: Path, source: Path) -> None:
    assert _notes(mnt) == ["model_index.json names component 'vae' (diffusers AutoencoderKL), whose folder vae/ "
                           "is a link; not followed"]
    assert (mnt / "vae").is_symlink() and len((mnt / ".ckptfs" / "tensors.tsv").read_text().splitlines()) == 2


def _too_deep(mnt: Path, source: Path) -> None:
    [note] = _notes(mnt)
    assert note.startswith("model_index.json is not JSON (RecursionError: "), note


def _too_large(mnt: Path, source: Path) -> None:
    size = (source / "model_index.json").stat().st_size
    assert _notes(mnt) == [f"model_index.json is {size} bytes, more than the 1000 of max_header_bytes; its "
                           "components are not checked"]


CASES = {
    "a diffusers model_index.json naming ../x and /abs as components": Case(
        _naming_outside, "served", check=_shows_only_its_own),
    "a diffusers component folder that is a link out of the pipeline": Case(_linked_out, "served", check=_not_followed),
    "a diffusers model_index.json of 100,000 nested arrays": Case(
        lambda tmp: pipeline(tmp, b"[" * 100_000 + b"]" * 100_000), "served", check=_too_deep),
    "a diffusers model_index.json larger than max_header_bytes": Case(
        lambda tmp: pipeline(tmp, _index(padding=["x" * 4000, None])), "served", check=_too_large,
        options=("-o", "max_header_bytes=1000")),
}
