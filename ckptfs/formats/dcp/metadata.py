"""The metadata of a distributed checkpoint: `.metadata` (or every rank's
`__N.metadata`) unpickled by the inert interpreter into what each key is
(a tensor and its chunks, or bytes) and where its bytes lie."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import FormatError
from ...humanize import plural
from ...limits import LIMITS
from ...pickle.inert import Call, Global, InertUnpickler, PickleError
from ...pickle.torch_classes import KNOWN
from ...sources.base import Source
from ...tree.dtypes import BY_TORCH, DType

METADATA = ".metadata"
_RANK_METADATA = re.compile(r"__(\d+)\.metadata")
#: Megatron-core's key for one shard of a ShardedObject: `key/shard_<offset>_<shape>`
SHARDED_OBJECT = re.compile(r"(.+)/(shard_[0-9.]+_[0-9.]+)")


def is_metadata(name: str) -> bool:
    return name == METADATA or _RANK_METADATA.fullmatch(name) is not None


def metadata_names(file_names) -> list[str]:
    """The metadata files to read: the global `.metadata`, or else every
    rank's `__N.metadata` (a save with `use_collectives=False`), by rank."""
    if METADATA in file_names:
        return [METADATA]
    ranks = [n for n in file_names if _RANK_METADATA.fullmatch(n)]
    return sorted(ranks, key=lambda n: int(_RANK_METADATA.fullmatch(n).group(1)))


@dataclass
class TensorMeta:
    dtype: DType
    shape: tuple[int, ...]
    #: chunk offsets -> sizes, in the order the metadata lists them
    chunks: dict[tuple[int, ...], tuple[int, ...]] = field(default_factory=dict)


@dataclass
class Metadata:
    """What the metadata file(s) say: each item (a TensorMeta, or None for a
    bytes item) and where each chunk or item is stored."""

    items: dict[str, TensorMeta | None]
    storage: dict[tuple[str, tuple[int, ...] | None], dict]
    globals: list[str]
    notes: list[str]

    @classmethod
    def read(cls, name: str, files: dict[str, Source]) -> Metadata:
        found = metadata_names(files)
        if not found:
            raise FormatError(f"{name}/{METADATA}", "missing")
        merged = cls({}, {}, [], [])
        for metadata_name in found:
            path = f"{name}/{metadata_name}"
            source = files[metadata_name]
            if source.size > LIMITS.pickle_bytes:
                raise FormatError(path, f"{plural(source.size, 'byte')}, above the limit of "
                                        f"{LIMITS.pickle_bytes} for a pickle "
                                        "(-o max_pickle_bytes raises it)")
            try:
                unpickler = InertUnpickler(source.read_exact(0, source.size), known=KNOWN)
                merged._add(path, fields_of(unpickler.load()))
            except (PickleError, KeyError, TypeError, AttributeError, ValueError, OSError) as e:
                raise FormatError(path, f"not a readable distributed checkpoint metadata file ({e})") from None
            merged.globals += [g.path for g in unpickler.globals if g.path not in merged.globals]
        return merged

    def _add(self, path: str, metadata: dict) -> None:
        for index, info in metadata["storage_data"].items():
            index, info = fields_of(index), fields_of(info)
            offset = tuple(index["offset"]) if index.get("offset") is not None else None
            self.storage.setdefault((index["fqn"], offset), info)
        for fqn, item in metadata["state_dict_metadata"].items():
            if not (isinstance(item, Call) and item.path.endswith("TensorStorageMetadata")):
                self.items.setdefault(fqn, None)
                continue
            meta = _tensor_meta(path, fqn, fields_of(item))
            known = self.items.setdefault(fqn, meta)
            if known is None or (known.dtype, known.shape) != (meta.dtype, meta.shape):
                self.notes.append(f"{fqn}: {path} disagrees with an earlier metadata file on type or shape; kept the first")
                continue
            for offsets, sizes in meta.chunks.items():
                known.chunks.setdefault(offsets, sizes)


def _tensor_meta(path: str, fqn: str, meta: dict) -> TensorMeta:
    properties = meta["properties"]
    dtype_global = properties.state[0] if isinstance(properties.state, tuple) else fields_of(properties)["dtype"]
    if not (isinstance(dtype_global, Global) and dtype_global.name in BY_TORCH):
        raise FormatError(path, f"tensor {fqn!r}: unknown dtype {dtype_global!r:.60}")
    chunks = {}
    for chunk_meta in meta["chunks"]:
        fields = fields_of(chunk_meta)
        chunks[tuple(fields["offsets"])] = tuple(fields["sizes"])
    return TensorMeta(BY_TORCH[dtype_global.name], tuple(meta["size"]), chunks)


def fields_of(value: object) -> dict:
    """The attributes of a pickled dataclass instance."""
    if isinstance(value, Call):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (__dict__, __slots__ values)
        if isinstance(state, dict):
            return state
    raise PickleError(f"expected a dataclass instance, found {value!r:.80}")
