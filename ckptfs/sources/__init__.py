"""Byte sources: something with a size and `pread`. A file, a slice of one, a
decompressed stream; a remote source later, below unchanged formats."""
