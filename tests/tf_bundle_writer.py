"""A TensorFlow tensor bundle written without TensorFlow, for the hostile
cases and fuzz seeds (tests/hostile/tensorflow.py, tests/fuzz/corpus.py),
which need bundles TensorFlow would never write. Its layout is the one of
tensorflow/core/lib/io/table_builder.cc and block_builder.cc (blocks of
prefix-compressed keys with restart points, a block trailer of type and
masked CRC-32C, a metaindex, an index, the 48-byte footer) and of
tensor_bundle.cc (the header under the empty key, a BundleEntryProto per
key, 8-byte aligned data); tests/test_tensorflow.py checks that TensorFlow
reads what it writes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import ml_dtypes
import numpy as np

from ckptfs.formats import tf_entries
from ckptfs.formats.protowire import I32, VARINT, encode_len, encode_tag, encode_varint

MAGIC = 0xDB4775248B80FB57
#: numpy dtype -> TensorFlow DataType (types.proto)
DATA_TYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
              np.dtype(np.int16): 5, np.dtype(np.int8): 6, np.dtype(np.complex64): 8, np.dtype(np.int64): 9,
              np.dtype(np.bool_): 10, np.dtype(ml_dtypes.bfloat16): 14, np.dtype(np.uint16): 17,
              np.dtype(np.float16): 19}


def mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def crc(data: bytes) -> int:
    return google_crc32c.value(data)


def block(items: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for n, (key, value) in enumerate(items):
        shared = 0
        if n % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(last)) and key[shared] == last[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        out += key[shared:] + value
        last = key
    for r in restarts or [0]:
        out += struct.pack("<I", r)
    return bytes(out + struct.pack("<I", len(restarts or [0])))


def trailer(contents: bytes, kind: int = 0) -> bytes:
    return bytes([kind]) + struct.pack("<I", mask(google_crc32c.value(contents + bytes([kind]))))


def table(items: list[tuple[bytes, bytes]], per_block: int = 8) -> bytes:
    """An SSTable of `items` (sorted by key), `per_block` entries a data block."""
    return table_of_blocks([block(items[start : start + per_block]) for start in range(0, len(items), per_block)],
                           [items[min(start + per_block, len(items)) - 1][0] for start in range(0, len(items), per_block)])


def table_of_blocks(blocks: list[bytes], last_keys: list[bytes], kind: int = 0) -> bytes:
    """Data blocks as they are (each with its last key, for the index), stored as `kind`."""
    out, index = bytearray(), []
    for data, key in zip(blocks, last_keys):
        index.append((key, encode_varint(len(out)) + encode_varint(len(data))))
        out += data + trailer(data, kind)
    handles = []
    for contents in (block([]), block(index, restart_interval=1)):
        handles.append((len(out), len(contents)))
        out += contents + trailer(contents)
    return bytes(out + footer(*handles))


def footer(metaindex: tuple[int, int], index: tuple[int, int]) -> bytes:
    """The 48 bytes after the blocks: the two handles, padding, the magic."""
    handles = b"".join(encode_varint(n) for n in (*metaindex, *index))
    return handles.ljust(40, b"\0") + struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32)


def header(shards: int) -> bytes:
    version = encode_tag(1, VARINT) + encode_varint(1)
    return encode_tag(1, VARINT) + encode_varint(shards) + encode_len(3, len(version)) + version


@dataclass(frozen=True)
class Entry(tf_entries.Entry):
    """A BundleEntryProto's fields (as ckptfs reads them), any of them as
    hostile as a test wants; slices are not written."""

    crc: int = 0
    slices: tuple[tuple[int, int], ...] = ()

    def encode(self) -> bytes:
        dims = b""
        for n in self.shape:
            dim = encode_tag(1, VARINT) + encode_varint(n & (1 << 64) - 1)
            dims += encode_len(2, len(dim)) + dim
        out = encode_tag(1, VARINT) + encode_varint(self.dtype) + encode_len(2, len(dims)) + dims
        out += encode_tag(3, VARINT) + encode_varint(self.shard & (1 << 64) - 1)
        out += encode_tag(4, VARINT) + encode_varint(self.offset) + encode_tag(5, VARINT) + encode_varint(self.size)
        return out + encode_tag(6, I32) + struct.pack("<I", self.crc)


def entries_for(arrays: dict[str, np.ndarray], shards: int = 1) -> tuple[dict[str, Entry], list[bytes]]:
    """Each array's entry and the data shards, the arrays dealt out to the shards in turn."""
    data = [bytearray() for _ in range(shards)]
    entries = {}
    for n, (key, array) in enumerate(arrays.items()):
        shard = data[n % shards]
        raw = np.ascontiguousarray(array).tobytes()
        entries[key] = Entry(DATA_TYPES[array.dtype], array.shape, n % shards, len(shard), len(raw), mask(crc(raw)))
        shard += raw + bytes(-len(raw) % 8)
    return entries, [bytes(d) for d in data]


def write(prefix: Path, entries: dict[str, Entry | bytes], shards: list[bytes], num_shards: int | None = None) -> Path:
    """`prefix.index` and its data shards; an entry given as bytes is written as it is."""
    items = [(b"", header(num_shards or len(shards)))]
    items += sorted((k.encode(), e if isinstance(e, bytes) else e.encode()) for k, e in entries.items())
    index = Path(f"{prefix}.index")
    index.write_bytes(table(items))
    for n, data in enumerate(shards):
        Path(f"{prefix}.data-{n:05d}-of-{num_shards or len(shards):05d}").write_bytes(data)
    return index


def write_arrays(prefix: Path, arrays: dict[str, np.ndarray], shards: int = 1) -> Path:
    entries, data = entries_for(arrays, shards)
    return write(prefix, entries, data)


#: the arrays of the bundle tests/test_tensorflow.py has TensorFlow read
ARRAYS = {
    "layer/kernel/.ATTRIBUTES/VARIABLE_VALUE": np.arange(12, dtype=np.float32).reshape(3, 4),
    "layer/bias/.ATTRIBUTES/VARIABLE_VALUE": np.array([1.5, -2], dtype=ml_dtypes.bfloat16),
    "layer/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE": np.full((3, 4), 0.25, np.float32),
    "steps": np.array([7, 1 << 40], dtype=np.int64),
    "flags": np.array([True, False]),
    "half": np.ones((2, 2), np.float16),
}


def checkpoint_folder(path: Path) -> Path:
    """A folder as `tf.train.Checkpoint.save` leaves it: `checkpoint` beside the bundle `ckpt-1`."""
    path.mkdir()
    write_arrays(path / "ckpt-1", ARRAYS)
    (path / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    return path


def saved_model_folder(path: Path) -> Path:
    """A SavedModel's layout: `saved_model.pb` (here a stand-in) beside `variables/`."""
    (path / "variables").mkdir(parents=True)
    write_arrays(path / "variables" / "variables", ARRAYS)
    (path / "saved_model.pb").write_bytes(b"\x08\x01")
    return path
