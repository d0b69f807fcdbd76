"""diffusers pipeline folders, as `DiffusionPipeline.save_pretrained` writes
them: `model_index.json` names the pipeline's components, each saved in a
subfolder of its name (unet/, vae/, text_encoder/, transformer/, scheduler/,
tokenizer/...).

Each subfolder that holds a model (weights as hf.py reads them: safetensors
or torch.save files, `diffusion_pytorch_model.*` or `model.*`, sharded with
an index or not, variants such as `diffusion_pytorch_model.fp16.safetensors`
beside them) is shown as hf.py shows a model folder, at its own name: its
merged tensor tree, each weights file expanded read-only at its own name, its
other files (config.json) as they are. Every other file (model_index.json,
scheduler_config.json, the tokenizer's files) appears as it is; a
safetensors file at the top (a single-file checkpoint shipped beside the
folders) is expanded read-only at its own name, and kept as it is. Edits are
written back by each component's own writer into a new folder swapped in for
the pipeline, every unchanged file hard-linked (folder.py's writer).

model_index.json only adds notes: a component it names whose folder is
missing (one it lists as `[null, null]`, a safety_checker left out, is not
one), a name that is no folder name (`../x`) or whose folder is a link, which
are never followed; a model_index.json that is no JSON object is noted too,
and the folders are shown all the same, for the mount is where it is fixed.
"""

from __future__ import annotations

import json

from ..errors import CkptfsError, FormatError, RepackError
from ..limits import LIMITS
from ..sources.directory import Directory
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Access, Dir, File
from . import hf, safetensors
from .base import DirectoryFormat, FileWriter, WriterKind
from .folder import Nested
from .nested import Shown, show_directory

MODEL_INDEX = "model_index.json"


def sniff(directory: Directory) -> bool:
    """model_index.json beside at least one component folder holding a model."""
    return directory.is_file(MODEL_INDEX) and any(_holds_model(directory, e) for e in directory.names())


def _holds_model(directory: Directory, name: str) -> bool:
    return directory.is_dir(name) and hf.sniff(directory.sub(name))


def open_dir(directory: Directory) -> Checkpoint:
    nested = Nested()

    def component(rel: str, parts: list[str], root: Dir, raw: Dir) -> bool:
        """A top-level folder holding a model, shown as hf.py shows one."""
        return len(parts) == 1 and _holds_model(directory, rel) and nested.take(
            hf.open_dir, directory, rel, parts, root, raw)

    shown = show_directory(directory, nested.grafts, take_folder=component)
    _expand_single_files(shown, nested.grafts.notes)
    return nested.checkpoint("diffusers pipeline", directory, shown, index_notes(directory))


def _expand_single_files(shown: Shown, notes: list[str]) -> None:
    """The safetensors files at the pipeline's top (the single-file
    checkpoint some repositories ship beside the folders), expanded at their
    own names, read-only: they are not the pipeline, and are kept as they are."""
    for name, node in list(shown.root.children.items()):
        source = shown.sources.get(id(node))
        if not (isinstance(node, File) and name.endswith(".safetensors") and source is not None):
            continue
        try:
            folder = safetensors.expand(source)[0]
        except FormatError as e:
            notes.append(f"{name} is shown as a plain file: {e.problem}")
            continue
        folder.read_only, folder.writer, folder.mtime_ns = True, KEPT, node.mtime_ns
        folder.access = Access.of(source.stat)
        shown.root.children[name] = folder
        shown.sources[id(folder)] = source


class Kept(FileWriter):
    """The writer of a file shown expanded read-only: the pipeline's writer
    (folder.py's) keeps it as it is."""

    def write(self, files, before, output) -> None:
        raise RepackError("a file shown read-only is kept as it is, never written")

    def blob(self, files, before) -> None:
        return None


KEPT = Kept()


def index_notes(directory: Directory) -> list[str]:
    """What model_index.json says that the folder does not bear out."""
    try:
        source = directory.open(MODEL_INDEX)
        if source.size > LIMITS.header_bytes:
            return [f"{MODEL_INDEX} is {source.size} bytes, more than the {LIMITS.header_bytes} of max_header_bytes; "
                    "its components are not checked"]
        index = json.loads(source.read_exact(0, source.size))
    except (OSError, ValueError, RecursionError, CkptfsError) as e:
        return [f"{MODEL_INDEX} is not JSON ({type(e).__name__}: {e}); diffusers cannot load the pipeline until it is"]
    if not isinstance(index, dict):
        return [f"{MODEL_INDEX} is not a JSON object; diffusers cannot load the pipeline until it is"]
    return [note for name, value in sorted(index.items()) if (note := _component_note(directory, name, value))]


def _component_note(directory: Directory, name: str, value: object) -> str | None:
    """What is wrong with the component `name` model_index.json lists as
    `value` (`[library, class]`), or None. Keys starting with `_` and
    values of any other shape are the pipeline's settings, not components."""
    if name.startswith("_") or not (isinstance(value, list) and len(value) == 2) or value == [None, None]:
        return None
    what = f"{MODEL_INDEX} names component {name!r} ({' '.join(map(str, value))})"
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        return f"{what}, which is no folder name of the pipeline; not followed"
    if directory.is_link(name):
        return f"{what}, whose folder {name}/ is a link; not followed"
    if not directory.is_dir(name):
        return f"{what}, whose folder {name}/ is missing; from_pretrained cannot load it"
    return None


FORMAT = DirectoryFormat("diffusers pipeline", sniff, open_dir,
                         "diffusers pipeline folders (model_index.json, a Hugging Face folder per component)",
                         WriterKind.DIRECTORY)
