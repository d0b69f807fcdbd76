"""The legacy torch.save format (before PyTorch 1.6, or
`_use_new_zipfile_serialization=False`): pickles back to back (magic number,
protocol version, system info, the object, the sorted storage keys), then
each storage as an 8-byte element count and its raw bytes."""

from __future__ import annotations

import dataclasses
import io

from ..errors import FormatError
from ..limits import LIMITS
from ..pickle.inert import InertUnpickler, PickleError
from ..pickle.torch_classes import KNOWN, legacy_storable, persistent_load
from ..sources.base import Source
from ..tree.checkpoint import Checkpoint
from ..tree.nodes import Extent
from .base import FileFormat, FileWriter, Opening, WriterKind
from .torchzip import PickledCheckpoint, open_pickled

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: protocol 2, LONG1 of 10 bytes, then the magic number: how every legacy file starts
SIGNATURE = b"\x80\x02\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little")


def sniff(head: bytes) -> bool:
    return head.startswith(SIGNATURE)


class TorchLegacy(PickledCheckpoint):
    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name
        self.element_sizes: dict[str, int] = {}
        stream = io.BytesIO(source.pread(0, min(source.size, LIMITS.pickle_bytes)))
        try:
            header = [InertUnpickler(stream).load() for _ in range(3)]
            self.header_end = stream.tell()  # magic number, protocol version, system info
            if header[0] != MAGIC_NUMBER or header[1] != PROTOCOL_VERSION:
                raise FormatError(name, f"legacy torch.save header {header[:2]} is not {MAGIC_NUMBER:#x}, {PROTOCOL_VERSION}")
            if isinstance(header[2], dict) and header[2].get("little_endian") is False:
                raise FormatError(name, "big-endian torch checkpoint: not supported")
            unpickler = InertUnpickler(stream, persistent_load=self._persistent_load, known=KNOWN)
            self.obj = unpickler.load()
            self.globals = unpickler.globals
            keys = InertUnpickler(stream).load()
        except PickleError as e:
            raise FormatError(name, f"legacy torch.save pickle: {e}") from None
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise FormatError(name, "legacy torch.save: the storage key list is missing or malformed")
        self._storages = self._locate(keys, stream.tell())

    def _persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 6 and pid[5] is not None:
            raise PickleError("storage views of the legacy format are not supported")
        storage = persistent_load(pid[:5] if isinstance(pid, tuple) else pid)
        if storage.dtype is not None:
            self.element_sizes[storage.key] = storage.dtype.bits // 8
        return dataclasses.replace(storage, pid=pid)

    def _locate(self, keys: list[str], position: int) -> dict[str, Extent]:
        storages = {}
        for key in keys:
            head = self.source.pread(position, 8)
            if len(head) < 8:
                raise FormatError(self.name, f"storage {key!r} is missing: the file ends at byte {position} (truncated?)")
            count = int.from_bytes(head, "little")
            nbytes = count * self.element_sizes.get(key, 1)
            if position + 8 + nbytes > self.source.size:
                raise FormatError(self.name, f"storage {key!r} runs past the end of the file (truncated?)")
            storages[key] = Extent(self.source, position + 8, nbytes)
            position += 8 + nbytes
        return storages

    def storage_keys(self) -> list[str]:
        return list(self._storages)

    def storage(self, key: str) -> Extent:
        if key not in self._storages:
            raise FormatError(self.name, f"storage {key!r} is not in the file")
        return self._storages[key]


class Writer(FileWriter):
    """Writes an edited tree of a legacy torch.save file in the legacy
    layout (`torch_rewrite.write_legacy`): any edit rewrites the object
    pickle; storages are copied by byte range."""

    adds_tensors = True

    def __init__(self, source: Source, name: str):
        self.source, self.name = source, name

    def write(self, files: dict, before: dict, output) -> None:
        from .torch_rewrite import write_legacy  # written only at repack: not imported at mount

        write_legacy(TorchLegacy(self.source, self.name), files, before, output)

    def check(self, path: str, node) -> None:
        from .torch_rewrite import LEGACY, check

        check(lambda: TorchLegacy(self.source, self.name), path, node, legacy_storable, LEGACY)

    def check_move(self, moved: list) -> None:
        from .torch_rewrite import check_move  # written only at repack: not imported at mount

        check_move(lambda: TorchLegacy(self.source, self.name), moved)


def open_file(opening: Opening) -> Checkpoint:
    source, st = opening.source, opening.stat
    ckpt = open_pickled(TorchLegacy(source, source.path), "torch (legacy, before 1.6)", st)
    ckpt.writer = Writer(source, source.path)
    return ckpt


FORMAT = FileFormat("torch.save (legacy)", sniff, open_file, "legacy torch.save files (before torch 1.6)", WriterKind.FILE)
