"""Chunks of a distributed checkpoint, read lazily: each is a record of a
`.distcp` file (a torch.save zip of one chunk, maybe zstd-compressed, or a
tensor of the safetensors block that ends the file)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import FormatError
from ...humanize import plural
from ...pickle.torch_classes import TensorRef
from ...sources.base import Source
from ...tree.dtypes import DType
from .. import safetensors, torchzip


@dataclass(frozen=True)
class ChunkRecord:
    """Where `_StorageInfo` puts one chunk or item: `raw` is its byte range,
    `start` onwards in the shard file, `data` the bytes after undoing the
    stream transforms. `label` names the shard file in messages."""

    label: str
    shard: Source
    start: int
    raw: Source
    data: Source


class LazyChunk:
    """One chunk's C-order bytes, found in its record on the first read.

    The record is parsed then, not at mount: mount time then depends on the
    metadata alone, however many chunks the shards hold. A chunk that turns
    out to be broken fails its reads (EIO, logged with the file and tensor),
    and the rest of the checkpoint stays readable.
    """

    def __init__(self, record: ChunkRecord, fqn: str, dtype: DType, offsets: tuple[int, ...], sizes: tuple[int, ...],
                 blocks: dict):
        self.record, self.fqn, self.dtype, self.sizes = record, fqn, dtype, sizes
        self.length = math.prod(sizes) * (dtype.bits // 8)
        self.name = f"{record.label}: {fqn} chunk at {list(offsets)}"
        self._blocks = blocks  # safetensors blocks already parsed, shared by the chunks of a checkpoint
        self._piece = None

    @property
    def source(self) -> Source:
        return self.record.data

    def read(self, offset: int, length: int) -> bytes:
        return self._resolved().read(offset, length)

    def readv(self, offset: int, buffers: list[memoryview]) -> None:
        self._resolved().readv(offset, buffers)

    def prefetch(self, offset: int, length: int) -> None:
        """The record's whole byte range: it holds little besides the chunk,
        and the chunk's place in it is known only once it is parsed."""
        self.record.raw.prefetch(0, self.record.raw.size)

    def _resolved(self):
        if self._piece is None:
            self._piece = self._resolve()
        return self._piece

    def _resolve(self):
        head = self.record.data.pread(0, 4)
        if torchzip.sniff(head):
            piece = self._from_torch_zip()
        elif self.record.data is self.record.raw:
            piece = self._from_safetensors_block()
        else:
            raise FormatError(self.name, "the record is not a torch.save zip")
        if piece.length != self.length:
            raise FormatError(self.name, f"holds {plural(piece.length, 'byte')} where the metadata promises {self.length}")
        return piece

    def _from_torch_zip(self):
        archive = torchzip.TorchZip(self.record.data, self.name)
        ref = archive.obj
        if not isinstance(ref, TensorRef) or tuple(ref.shape) != self.sizes:
            raise FormatError(self.name, f"does not hold a {list(self.sizes)} tensor")
        return archive.tensor_piece(ref, self.name)[0]

    def _from_safetensors_block(self):
        """SerializationFormat.SAFETENSORS: the record's offset is where a
        safetensors block starts, which runs to the end of the shard file and
        holds this rank's chunk under the tensor's name."""
        key = (self.record.label, self.record.start)
        if key not in self._blocks:
            shard, start = self.record.shard, self.record.start
            block = shard.slice(start, shard.size - start)
            if not safetensors.sniff(block.pread(0, safetensors.MAGIC_LENGTH)):
                raise FormatError(self.name, "the record is neither a torch.save zip nor a safetensors block")
            self._blocks[key] = {t.name: t for t in safetensors.read(block)[1]}
        tensor = self._blocks[key].get(self.fqn)
        if tensor is None or tensor.shape != self.sizes or tensor.dtype != self.dtype:
            wanted = f"{self.dtype.name} {list(self.sizes)}"
            raise FormatError(self.name, f"the safetensors block holds no {wanted} tensor of that name")
        return tensor.data
