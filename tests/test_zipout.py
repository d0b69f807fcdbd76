"""The zip writer of rewritten torch.save files, zip64 fields included
(forced on small files by lowering the threshold), read by zipfile and
torch.load."""

import os
import zipfile

import pytest
import torch

from ckptfs.formats.torchzip import TorchZip
from ckptfs.formats.zipout import Record, ZipBlob
from ckptfs.pack.output import Output
from ckptfs.sources.base import FileSource


@pytest.mark.parametrize("zip64_at", [0xFFFFFFFF, 64], ids=["zip32", "zip64"])
def test_records_copied_into_a_new_archive_load_the_same(tmp_path, zip64_at):
    state = {"w": torch.randn(300, 7), "b": torch.arange(5), "nested": {"h": torch.ones(2, dtype=torch.bfloat16)}}
    source_path, copy_path = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(state, source_path)
    source = FileSource(str(source_path))
    try:
        archive = TorchZip(source, "a.pt")
        records = []
        for name, info in archive.records.items():
            extent = archive.record_data(info)
            if name.endswith("data.pkl"):  # one record whose CRC is computed while writing
                records.append(Record(name, extent.length, piece=extent))
            else:
                records.append(Record(name, extent.length, piece=extent, crc=info.CRC))
        blob = ZipBlob(records, zip64_at=zip64_at)
        fd = os.open(copy_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            blob.write(Output(fd))
        finally:
            os.close(fd)
    finally:
        source.close()
    assert copy_path.stat().st_size == blob.size
    with zipfile.ZipFile(copy_path) as copy:
        assert copy.testzip() is None
        assert [i.filename for i in copy.infolist()] == list(archive.records)
    for loaded in (torch.load(copy_path, weights_only=True), torch.load(copy_path, weights_only=True, mmap=True)):
        assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
        assert torch.equal(loaded["nested"]["h"], state["nested"]["h"])
