"""The names of the extended attributes ckptfs shows (docs/layout.md).

`getfattr` lists them with the `user.` prefix the FUSE layer adds:
`user.ckptfs.dtype`. Every module names them through these constants; the
values are what users see, so they never change.
"""

#: a tensor's key in its checkpoint, while the file stays where it was
NAME = "ckptfs.name"
#: a tensor's canonical dtype name (tree/dtypes.py)
DTYPE = "ckptfs.dtype"
#: a tensor's shape as a JSON list, `[4096, 1024]`
SHAPE = "ckptfs.shape"
#: the path of the file on disk that holds the bytes
SOURCE = "ckptfs.source"
#: `START-END`, where the bytes lie in that file
RANGE = "ckptfs.range"
#: a pickled tensor's storage: `KEY offset N stride [..]`
STORAGE = "ckptfs.storage"
#: an assembled tensor's chunks: `[[offsets, sizes], ...]` as JSON
CHUNKS = "ckptfs.chunks"
#: an array read a chunk at a time (an Orbax checkpoint's): its chunk's shape as a JSON list
ARRAY_CHUNK = "ckptfs.array_chunk"
#: where one chunk of a distributed checkpoint lies in its tensor
OFFSETS = "ckptfs.offsets"
#: a GGUF tensor's ggml type (`Q4_0`), on its `raw.bin`
GGML_TYPE = "ckptfs.ggml_type"
#: a GGUF tensor's dimensions in GGUF's order, on its `raw.bin`
GGUF_SHAPE = "ckptfs.gguf_shape"
#: the ggml type a `dequantized.npy` was computed from
DEQUANTIZED_FROM = "ckptfs.dequantized_from"
#: a PEFT adapter's `merged/` tensor: the adapter's tensors it was computed from, and the scaling
MERGED_FROM = "ckptfs.merged_from"
#: an HDF5 dataset read through h5py: how it is stored (`chunked [7, 33], filters: deflate, shuffle`)
HDF5_STORAGE = "ckptfs.hdf5_storage"
#: on `.ckptfs/`: the source's modification time
SOURCE_MTIME = "ckptfs.source_mtime"
#: an edited file's bytes are in the overlay until the repack
EDITED = "ckptfs.edited"
#: why an edited file cannot be written back, until it is fixed
PROBLEM = "ckptfs.problem"
#: on a mount's root (or a checkpoint's folder): why it is read-only
READ_ONLY = "ckptfs.read_only"

#: attributes that say where a file's bytes lie in the source: an edited
#: file's bytes lie in the overlay instead
LOCATION = (SOURCE, RANGE, STORAGE, CHUNKS, OFFSETS)
