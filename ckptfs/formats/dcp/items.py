"""The non-tensor items of a distributed checkpoint (what `dcp.save` stores
for an int, a string, a dict of them, an `io.BytesIO`), as an edit makes
them: the record that holds the item's bytes written anew.

DCP's default planner stores every non-tensor value as `torch.save(value)`
(a whole torch.save zip); the mount shows one as a YAML view (`.yaml`). An
edited view is merged into the unpickled object it was rendered from
(`object_edits`: types kept, untouched objects kept as they were) and the
object is saved as torch.save saves it, its other records (and any storage
it holds) copied. A planner that stores an `io.BytesIO` as it is (Megatron's)
leaves bytes that are not a zip: the mount shows them as `.bin`, and an
edited one is stored as its new bytes. Nothing is imported or run.
"""

from __future__ import annotations

from ...errors import FormatError
from ...pack.output import ContentBlob
from ...pickle import object_edits
from ...pickle.writer import PickleWriteError
from ...sources.base import Source
from ...tree import names
from .. import torchzip
from .metadata import SHARDED_OBJECT, Metadata
from .reader import Reader, item_path

#: how the mount shows an item: a pickled value, or bytes stored as they were
PICKLED, RAW = ".yaml", ".bin"


class Items:
    """The items of one distributed checkpoint (`files` by their names in
    its directory), for its writer."""

    def __init__(self, path: str, files: dict[str, Source]):
        self.path, self.files = path, files
        self._known: tuple[Metadata, dict[str, str]] | None = None

    def _metadata(self) -> tuple[Metadata, dict[str, str]]:
        """The metadata, and the key of each item by the paths the mount may
        show it at (which suffix depends on its bytes)."""
        if self._known is None:
            metadata = Metadata.read(self.path, self.files)
            at = {"/".join(item_path(fqn, suffix)): fqn
                  for fqn, item in metadata.items.items() if item is None for suffix in (PICKLED, RAW)}
            self._known = metadata, at
        return self._known

    def at(self, path: str) -> str | None:
        """The key of the item the mount showed at `path`, if any: the
        suffix says how, as the reader chose it (`.yaml` for a torch.save
        zip, else `.bin`)."""
        fqn = self._metadata()[1].get(path)
        if fqn is None or path.endswith(PICKLED) != (self._archive(fqn) is not None):
            return None
        return fqn

    @staticmethod
    def key_for(path: str) -> str:
        """The key a new item's path spells: `extra/epoch.yaml` is
        `extra.epoch`; a Megatron shard file keeps its `/`
        (`x/_extra_state/shard_0_1.yaml` is `x._extra_state/shard_0_1`)."""
        parts = [names.unescape(p) for p in path.rsplit(".", 1)[0].split("/")]
        key = ".".join(parts)
        if len(parts) > 1 and SHARDED_OBJECT.fullmatch(f"x/{parts[-1]}"):
            key = ".".join(parts[:-1]) + "/" + parts[-1]
        return key

    def stored(self, path: str, content, was: str | None):
        """The bytes (a blob: `size`, `write(output)`) of the record for the
        item file at `path` holding `content`; `was` is the key of the item
        it showed (edited in place, or renamed), None for a new file.
        ValueError naming `path` and the problem."""
        if path.endswith(RAW):
            if was is None:
                raise ValueError(f"{path}: a new item of a distributed checkpoint is a value (.yaml) or a tensor "
                                 "(.npy); raw bytes (.bin) are read back only by the planner that stored them")
            return ContentBlob(content)
        if not path.endswith(PICKLED):
            raise ValueError(f"{path}: a distributed checkpoint takes new tensors (.npy) and values (.yaml) only")
        view = object_edits.parse(content.read(0, content.size), path)
        archive = self._archive(was) if was is not None else None
        try:
            if archive is None:
                value = object_edits.new_value(view, path)
                return _torch_rewrite().new_archive(_dumps(value))
            value = object_edits.merge(archive.obj, view, path)
            return _torch_rewrite().archive_blob(archive, _dumps(value), value)
        except PickleWriteError as e:
            raise ValueError(f"{path}: the value cannot be pickled as torch.save pickles it ({e})") from None

    def _archive(self, fqn: str) -> torchzip.TorchZip | None:
        """The torch.save zip an item's record holds (read afresh: an edit
        changes the objects), or None if its bytes are not one."""
        metadata = self._metadata()[0]
        reader = Reader(self.path, self.files)
        try:
            data = reader.record(fqn, reader.item_storage(fqn, metadata.storage)).data
            if not torchzip.sniff(data.pread(0, 4)):
                return None
            return torchzip.TorchZip(data, f"{data.path}:{fqn}")
        except FormatError:
            return None


def _dumps(value: object) -> bytes:
    from ...pickle import writer as pickle_writer  # written only at close and repack: not imported at mount

    return pickle_writer.dumps(value)


def _torch_rewrite():
    from .. import torch_rewrite  # written only at close and repack: not imported at mount

    return torch_rewrite
