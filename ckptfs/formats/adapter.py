"""PEFT adapter folders (`adapter_config.json` beside `adapter_model.safetensors`,
as `save_pretrained` writes them), shown as the Hugging Face folder reader
shows any folder (hf.py), and, given the base model, with a read-only
`merged/` folder: every tensor of the base, the LoRA-adapted ones merged
on read (lora_merge.py), as PEFT's `merge_and_unload` gives them.

The base is `-o base=PATH` (`open_checkpoint`'s `base`: a folder, a
safetensors file, an hf:// URL), else the snapshot of the config's
`base_model_name_or_path` that `refs/main` names in the local Hugging Face
cache. PEFT saves a module's factors as `base_model.model.<module>.lora_A.weight`
and `lora_B.weight` (`lora_embedding_A`/`_B` for an embedding,
`lora_magnitude_vector` for DoRA, `lora_B.bias` with `lora_bias`); a key
with `.base_layer.` is the adapter's copy of a base tensor (an adapted
embedding saved whole), and any other key is a `modules_to_save` copy that
replaces the base tensor of its name (`utils/save_and_load.py`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

from ..errors import EditRefused, FormatError
from ..sources.directory import Directory
from ..tree import names, xattrs
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Content, Dir, File
from ..tree.tensors import ComputedTensor, PlacedTensor, Tensor, shown_again, tensor_tree
from . import hf, hf_torch, lora_config, lora_merge
from .base import DirectoryFormat, DirectoryWriter, WriterKind
from .lora_merge import Factors, Unfit

WEIGHTS = "adapter_model.safetensors"
#: what PEFT writes with safe_serialization=False (older adapters on the Hub), read where no WEIGHTS is
TORCH_WEIGHTS = "adapter_model.bin"
#: the folder at the mount's root that shows the merged model
MERGED = "merged"
#: what PEFT puts before every module name of the saved state dict
PREFIX = "base_model.model."
#: a key's ending -> the field of Factors it fills
_FACTORS = {".lora_A.weight": "a", ".lora_B.weight": "b", ".lora_B.bias": "bias",
            ".lora_embedding_A": "a", ".lora_embedding_B": "b",
            ".lora_magnitude_vector": "magnitude", ".lora_magnitude_vector.weight": "magnitude"}
#: a Hub repository id as the cache names its folder
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
NO_BASE = ("; give the base with -o base=PATH (a Hugging Face folder, a .safetensors file or hf://ORG/NAME), "
           "or --base for ckptfs export")


def sniff(directory: Directory) -> bool:
    entries = set(directory.names())
    return lora_config.CONFIG_NAME in entries and (WEIGHTS in entries or TORCH_WEIGHTS in entries)


def open_dir(directory: Directory) -> Checkpoint:
    ckpt = hf.open_dir(directory)
    ckpt.pretrained_files = None  # PeftModel.from_pretrained reads the folder as it is, not a model.safetensors
    if WEIGHTS in directory.names():
        ckpt.format = "peft adapter (safetensors)"
    else:
        _torch_weights(ckpt, directory)
    return ckpt


def _torch_weights(ckpt: Checkpoint, directory: Directory) -> None:
    """An adapter saved as `adapter_model.bin`, which the Hugging Face
    reader shows as a plain file (it is no `pytorch_model*.bin`): shown
    expanded, its state dict the adapter's tensors, the folder read-only."""
    ckpt.format = "peft adapter (torch.save)"
    shard = hf_torch.expand(directory.open(TORCH_WEIGHTS), os.path.join(directory.path, TORCH_WEIGHTS))
    shard.folder.read_only = True
    ckpt.root.add(TORCH_WEIGHTS, shard.folder, replace=True)
    ckpt.root.xattrs[xattrs.READ_ONLY] = (f"an adapter saved as {TORCH_WEIGHTS} is not written back; "
                                          "PEFT's save_pretrained(safe_serialization=True) makes one that is")
    ckpt.pickle_globals = shard.globals
    if shard.problem is not None:
        ckpt.notes.append(f"{TORCH_WEIGHTS} {shard.problem}")
        return
    ckpt.tensors = [PlacedTensor(f"{TORCH_WEIGHTS}/{p.path}", p.tensor) for p in shard.placed]


def add_merged(ckpt: Checkpoint, base: str | None, open_base: Callable[[str], Checkpoint]) -> None:
    """Give an adapter's checkpoint its `merged/` (and `ckpt.merged`) where
    its base is found; else a note saying how to give it. `base` given for
    anything else, or for an adapter that cannot be merged, is refused
    (FormatError, one line)."""
    if ckpt.description != FORMAT.description:
        if base is not None:
            raise FormatError(ckpt.source_path, f"-o base= is for a PEFT adapter folder ({lora_config.CONFIG_NAME} "
                              f"beside {WEIGHTS}); this is a {ckpt.description}")
        return
    config_path = os.path.join(ckpt.source_path, lora_config.CONFIG_NAME)
    try:
        settings = lora_config.parse(_config_text(ckpt), config_path)
        base_ckpt = open_base(base or _cached_base(settings, config_path))
    except FormatError as e:
        if base is not None:
            raise
        ckpt.notes.append(f"no {MERGED}/: {e}")
        return
    if MERGED in ckpt.root.children:
        ckpt.notes.append(f"no {MERGED}/: the adapter holds a tensor or file of that name")
        return
    merged = merged_checkpoint(ckpt, settings, base_ckpt)
    ckpt.root.add(MERGED, merged.root)
    ckpt.merged = merged
    ckpt.notes += merged.notes
    if ckpt.writer is not None:
        ckpt.writer = Writer(ckpt.writer)


def _config_text(ckpt: Checkpoint) -> bytes:
    node = ckpt.root.children.get(lora_config.CONFIG_NAME)
    if not isinstance(node, File):
        raise FormatError(os.path.join(ckpt.source_path, lora_config.CONFIG_NAME), "not a file")
    return node.content.read(0, min(node.content.size, lora_config.MAX_CONFIG_BYTES + 1))


def hub_cache() -> str:
    """The Hugging Face cache's folder, where huggingface_hub looks for it."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _cached_base(settings: lora_config.LoraSettings, config_path: str) -> str:
    """The cached snapshot of the base the config names, or FormatError
    saying what is missing and how to give it."""
    name = settings.base
    if name is None:
        raise FormatError(config_path, "names no base_model_name_or_path" + NO_BASE)
    cache = hub_cache()
    if not _REPO_ID.fullmatch(name) or ".." in name:
        raise FormatError(config_path, f"base {name!r} is not a Hub repository id to look up in {cache}" + NO_BASE)
    folder = os.path.join(cache, "models--" + name.replace("/", "--"))
    try:
        with open(os.path.join(folder, "refs", "main"), "rb") as f:
            commit = f.read(100).decode("ascii", "replace").strip()
    except OSError:
        raise FormatError(config_path, f"base {name!r} is not in the Hugging Face cache ({cache})" + NO_BASE) from None
    snapshot = os.path.join(folder, "snapshots", commit)
    if not _COMMIT.fullmatch(commit) or not os.path.isdir(snapshot):
        raise FormatError(config_path, f"base {name!r}: {folder} has no snapshot of refs/main" + NO_BASE)
    return snapshot


def adapter_parts(tensors: list[Tensor]) -> tuple[dict[str, Factors], dict[str, Tensor], list[str], set[str]]:
    """The adapter's tensors by what they do: the factors of each adapted
    module, the copies that replace base tensors (by the base's name), the
    keys of neither, and the base tensors the adapter changes in a way
    ckptfs does not merge (PEFT's trainable tokens: rows of an embedding)."""
    parts: dict[str, dict[str, object]] = {}
    replacing: dict[str, Tensor] = {}
    unknown: list[str] = []
    unmerged: set[str] = set()
    for tensor in tensors:
        key = tensor.name
        if not key.startswith(PREFIX):
            unknown.append(key)
            continue
        name = key[len(PREFIX):]
        ending = next((e for e in _FACTORS if name.endswith(e)), None)
        if ending is not None:
            fields = parts.setdefault(name[: -len(ending)], {})
            fields[_FACTORS[ending]] = tensor
            fields["embedding"] = fields.get("embedding", False) or "embedding" in ending
        elif ".base_layer." in name:
            replacing[name.replace(".base_layer.", ".")] = tensor
        elif ".token_adapter." in name:
            unmerged.add(name.partition(".token_adapter.")[0] + ".weight")
        elif "lora_" in name:
            unknown.append(key)
        else:
            replacing[name] = tensor
    return {module: Factors(**fields) for module, fields in parts.items()}, replacing, unknown, unmerged


def merged_checkpoint(ckpt: Checkpoint, settings: lora_config.LoraSettings, base: Checkpoint) -> Checkpoint:
    """The merged model: every tensor of `base`, the adapted ones computed,
    those that cannot be refused file by file (EIO, with the reason in the
    `user.ckptfs.problem` attribute and a note)."""
    modules, replacing, unknown, unmerged = adapter_parts([p.tensor for p in ckpt.tensors])
    by_name = {p.tensor.name: p.tensor for p in base.tensors}
    notes = [f"{key}: not a tensor a LoRA merge uses; {MERGED}/ leaves it out" for key in unknown]
    notes += [f"{PREFIX}{m}: the base has no tensor {m}.weight to merge it into" for m in modules
              if m + ".weight" not in by_name]
    notes += [f"{name}: the adapter replaces a tensor the base does not have; {MERGED}/ leaves it out"
              for name in replacing if name not in by_name]
    records, refused = [], {}
    for name, tensor in by_name.items():
        if name in unmerged:
            refused[name] = ("the adapter trains some of its rows (PEFT's trainable tokens), which ckptfs does not "
                             "merge", tensor)
            continue
        try:
            records.append(_merged_record(name, tensor, modules, replacing, settings))
        except Unfit as e:
            refused[name] = (str(e), tensor)
    root, placed = tensor_tree(records)
    for name, (problem, tensor) in sorted(refused.items()):
        parts = names.tensor_path(name)
        path = f"{MERGED}/{'/'.join(parts)}"
        root.subdir(parts[:-1]).add(parts[-1], File(Content([lora_merge.Refused(path, problem, tensor)]),
                                                    xattrs={xattrs.PROBLEM: problem}))
        notes.append(f"{path}: not merged: {problem}")
    files = _beside(base, root)
    root.read_only = True
    merged = Checkpoint(f"{ckpt.format} merged into {base.format}", base.source_path, base.stat, root, base.raw,
                        placed, notes, pretrained_files=files)
    merged.description = base.description
    return merged


def _beside(base: Checkpoint, root: Dir) -> list[str]:
    """The base's files from_pretrained reads beside the weights
    (config.json...), shown in the merged tree as they are."""
    shown = []
    for name in base.pretrained_files or ():
        node = base.root.children.get(name)
        if isinstance(node, File) and name not in root.children:
            root.add(name, shown_again(node, node.mtime_ns))
            shown.append(name)
    return shown


def _merged_record(name: str, tensor: Tensor, modules: dict[str, Factors], replacing: dict[str, Tensor],
                   settings: lora_config.LoraSettings) -> Tensor:
    """The record of the merged model's tensor `name` (the base's `tensor`)."""
    stored = replacing.get(name, tensor)
    if stored.shape != tensor.shape:
        raise Unfit(f"the adapter's copy is {list(stored.shape)}, the base tensor {list(tensor.shape)}")
    module, _, leaf = name.rpartition(".")
    factors = modules.get(module)
    if factors is None or leaf not in ("weight", "bias") or (leaf == "bias" and factors.bias is None):
        return stored if stored is tensor else dataclasses.replace(stored, name=name)  # the bytes where they lie
    scaling = settings.scaling(module)
    if leaf == "weight":
        transposed = lora_merge.fitted(stored, factors, settings.rank(module), settings.fan_in_fan_out, settings.dora)
        piece = lora_merge.MergedRows(stored, factors, scaling, transposed, settings.dora)
    else:
        lora_merge.fitted_bias(stored, factors)
        piece = lora_merge.MergedRows(stored, factors, scaling, False, False)
    made = ", ".join(t.name for t in (factors.a, factors.b, factors.bias, factors.magnitude) if t is not None)
    return ComputedTensor(name, stored.dtype, stored.shape, stored.data, (piece,),
                          ((xattrs.MERGED_FROM, f"{made} × {scaling!r}"),))


class Writer(DirectoryWriter):
    """The adapter folder's writer (hf.py's) with `merged/` left out: it is
    computed, read-only, and no file of the adapter."""

    adds_tensors = True

    def __init__(self, inner: hf.Writer):
        self.inner = inner

    def check(self, path: str, node: File) -> None:
        if _in_merged(path):
            raise EditRefused(f"{path}: {MERGED}/ is computed from the base and the adapter; edit the adapter")
        self.inner.check(path, node)

    def check_move(self, moved: list) -> None:
        self.inner.check_move(moved)

    def write_dir(self, files: dict, before: dict, out) -> None:
        self.inner.write_dir({p: n for p, n in files.items() if not _in_merged(p)},
                             {p: n for p, n in before.items() if not _in_merged(p)}, out)


def _in_merged(path: str) -> bool:
    return path == MERGED or path.startswith(MERGED + "/")


FORMAT = DirectoryFormat("PEFT adapter", sniff, open_dir, "PEFT LoRA adapter folders (merged with their base on read)",
                         WriterKind.DIRECTORY)
