"""Zip archives that torch.load reads one way and other zip readers
(Python's zipfile, and with it np.load and the scanners built on it, or a
reader walking local headers from the start) another: two archives
concatenated, local headers that name other records or sizes, a CRC that
does not match, duplicate names, a record marked as a folder, bytes no
record accounts for. Each is refused (docs/security.md); the builders are
shared with tests/test_torch_zip.py, which proves what torch loads from each."""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import torch

from . import Case

PKL = "archive/data.pkl"
CENTRAL_MAGIC, LOCAL_MAGIC = b"PK\x01\x02", b"PK\x03\x04"


def torch_records(obj) -> dict[str, bytes]:
    """The records of `torch.save(obj)`, in its order (archive name `archive`)."""
    out = io.BytesIO()
    torch.save(obj, out)
    with zipfile.ZipFile(out) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def torch_bytes(obj) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def zip_of(records: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    """A zip written by Python's zipfile, records stored, timestamps fixed;
    a list may name a record twice."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in records.items() if isinstance(records, dict) else records:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def command_pickle(marker: Path) -> bytes:
    """A protocol-2 pickle that runs `touch marker` when loaded."""
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."


def concatenated(loaded: dict[str, bytes], shown: dict[str, bytes]) -> bytes:
    """Two archives of the same record names and sizes, one after the
    other (each data.pkl padded after its STOP to the same length): miniz
    takes the second's directory offset as written and lands on the first
    archive's directory, so torch.load reads `loaded`; zipfile sees data
    before the second archive, shifts every offset by it, and reads `shown`."""
    assert list(loaded) == list(shown)
    width = max(len(loaded[PKL]), len(shown[PKL]))
    loaded, shown = ({**records, PKL: records[PKL].ljust(width, b"\0")} for records in (loaded, shown))
    assert all(len(loaded[n]) == len(shown[n]) for n in loaded)
    return zip_of(loaded) + zip_of(shown)


def central_entry(data: bytes, name: str) -> int:
    """The offset of `name`'s central directory entry (the first, if named twice)."""
    at = data.find(CENTRAL_MAGIC)
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length] == name.encode():
            return at
        at = data.find(CENTRAL_MAGIC, at + 4)
    raise KeyError(name)


def local_header(data: bytes, name: str) -> int:
    return struct.unpack_from("<I", data, central_entry(data, name) + 42)[0]


def data_start(data: bytes, name: str) -> int:
    """Where `name`'s stored bytes start: after its local header, name and extra field."""
    at = local_header(data, name)
    return at + 30 + sum(struct.unpack_from("<HH", data, at + 26))


def weights(value: float) -> dict[str, bytes]:
    return torch_records({"w": torch.tensor([value, value])})


# -- the inputs, each written under `folder`


def pair_of_weights(folder: Path) -> Path:
    """torch.load gives w = [9, 9]; zipfile (and the mount, before) [1, 1]."""
    path = folder / "pair.pt"
    path.write_bytes(concatenated(weights(9.0), weights(1.0)))
    return path


def pair_running_a_command(folder: Path) -> Path:
    """torch.load(weights_only=False) runs `touch folder/ran`; zipfile sees w = [1, 1]."""
    shown = weights(1.0)
    path = folder / "pair-command.pt"
    path.write_bytes(concatenated({**shown, PKL: command_pickle(folder / "ran")}, shown))
    return path


def local_name_of_another_record(folder: Path) -> Path:
    """data.pkl's local header names `archive/data.pkx`: torch.load reads it all the same."""
    data = bytearray(zip_of(weights(1.0)))
    at = local_header(data, PKL) + 30
    data[at : at + len(PKL)] = b"archive/data.pkx"
    path = folder / "local-name.pt"
    path.write_bytes(bytes(data))
    return path


def local_sizes_that_differ(folder: Path) -> Path:
    """data.pkl's local header claims 16 bytes; the central directory, which torch.load and zipfile use, more."""
    data = bytearray(zip_of(weights(1.0)))
    struct.pack_into("<II", data, local_header(data, PKL) + 18, 16, 16)
    path = folder / "local-sizes.pt"
    path.write_bytes(bytes(data))
    return path


def pickle_of_a_wrong_crc(folder: Path) -> Path:
    """torch.save's own archive, data.pkl's CRC in the central directory
    changed: torch.load does not check it, zipfile refuses the record."""
    data = bytearray(torch_bytes({"w": torch.tensor([1.0, 1.0])}))
    at = central_entry(data, PKL) + 16
    struct.pack_into("<I", data, at, struct.unpack_from("<I", data, at)[0] ^ 1)
    path = folder / "crc.pt"
    path.write_bytes(bytes(data))
    return path


def storage_named_twice(folder: Path, first: str = "archive/data/0") -> Path:
    """Storage 0 of w = [9, 9] named `first`, and after the rest a second
    record `archive/data/0` of [1, 1]: zipfile takes the last of two names,
    torch.load (miniz's sorted lookup, which ignores case) the first."""
    records = [(first if name == "archive/data/0" else name, data) for name, data in weights(9.0).items()]
    path = folder / f"twice-{first.split('/')[1]}.pt"
    path.write_bytes(zip_of(records + [("archive/data/0", struct.pack("<2f", 1.0, 1.0))]))
    return path


def storage_named_twice_in_other_case(folder: Path) -> Path:
    return storage_named_twice(folder, "archive/DATA/0")


def storage_marked_as_folder(folder: Path) -> Path:
    """Storage 0 carries the DOS folder attribute: miniz extracts nothing for
    it and torch.load fills the tensor from uninitialised memory."""
    data = bytearray(zip_of(weights(1.0)))
    struct.pack_into("<I", data, central_entry(data, "archive/data/0") + 38, 0x10)
    path = folder / "folder-storage.pt"
    path.write_bytes(bytes(data))
    return path


def archive_after_hidden_bytes(folder: Path) -> Path:
    """An archive of w = [9, 9], then one of w = [1, 1] whose directory
    counts its offsets from the start of the file: both torch.load and zipfile read
    [1, 1], a reader walking local headers from the start reads [9, 9]."""
    hidden, shown = zip_of(weights(9.0)), bytearray(zip_of(weights(1.0)))
    at = shown.find(CENTRAL_MAGIC)
    while at >= 0:
        struct.pack_into("<I", shown, at + 42, struct.unpack_from("<I", shown, at + 42)[0] + len(hidden))
        at = shown.find(CENTRAL_MAGIC, at + 4)
    end = shown.rfind(b"PK\x05\x06")
    struct.pack_into("<I", shown, end + 16, struct.unpack_from("<I", shown, end + 16)[0] + len(hidden))
    path = folder / "hidden-before.pt"
    path.write_bytes(hidden + bytes(shown))
    return path


def end_signature_in_trailing_bytes(folder: Path) -> Path:
    """A torch.save archive, then an end-record signature with too few bytes
    after it: zipfile takes it for the end record and cannot read the
    archive (no verdict from a scanner built on it); miniz skips it."""
    path = folder / "trailing.pt"
    path.write_bytes(torch_bytes({"w": torch.ones(2)}) + b"PK\x05\x06" + bytes(10))
    return path


def directory_longer_than_its_count(folder: Path) -> Path:
    """The end record counts one entry fewer than the directory holds: the
    last, a second data.pkl that runs a command, is read by zipfile (which
    walks the directory to its size, and takes the last of two names) and
    not by torch.load."""
    shown = weights(1.0)
    data = bytearray(zip_of(list(shown.items()) + [(PKL, command_pickle(folder / "ran"))]))
    end = data.rfind(b"PK\x05\x06")
    count = struct.unpack_from("<H", data, end + 10)[0]
    struct.pack_into("<HH", data, end + 8, count - 1, count - 1)
    path = folder / "long-directory.pt"
    path.write_bytes(bytes(data))
    return path


def zip64_locator_elsewhere(folder: Path) -> Path:
    """torch.save's zip64 locator pointed at the first local header: miniz
    looks for the zip64 end record there, zipfile just before the locator."""
    data = bytearray(torch_bytes({"w": torch.ones(2)}))
    struct.pack_into("<Q", data, data.rfind(b"PK\x06\x07") + 8, 0)
    path = folder / "locator.pt"
    path.write_bytes(bytes(data))
    return path


def record_over_the_next(folder: Path) -> Path:
    """`.format_version` claims the bytes of the records after it (a
    torch.save archive, whose local headers carry no sizes)."""
    data = bytearray(torch_bytes({"w": torch.ones(2)}))
    grown = data_start(data, "archive/byteorder") + len(b"little") - data_start(data, "archive/.format_version")
    struct.pack_into("<II", data, central_entry(data, "archive/.format_version") + 20, grown, grown)
    path = folder / "overlap.pt"
    path.write_bytes(bytes(data))
    return path


def name_cut_by_a_nul(folder: Path) -> Path:
    """A record `archive/data.pkl\\0x` after the real data.pkl, which runs a
    command: zipfile cuts the name at the NUL and reads the benign one as
    data.pkl; torch.load reads the real one."""
    shown = weights(1.0)
    records = list({**shown, PKL: command_pickle(folder / "ran")}.items()) + [(PKL + "Zx", shown[PKL])]
    data = zip_of(records).replace((PKL + "Zx").encode(), (PKL + "\0x").encode())
    path = folder / "nul.pt"
    path.write_bytes(data)
    return path


def nemo_holding_a_pair(folder: Path) -> Path:
    """A .nemo whose model_weights.ckpt is the concatenated pair: shown as a
    plain file, with a note saying why."""
    pair = concatenated(weights(9.0), weights(1.0))
    path = folder / "pair.nemo"
    with tarfile.open(path, "w") as tf:
        for name, data in (("./model_config.yaml", b"a: 1\n"), ("./model_weights.ckpt", pair)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _weights_ckpt_is_a_plain_file(mnt: Path, source: Path) -> None:
    assert (mnt / "model_weights.ckpt").is_file()
    notes = (mnt / ".ckptfs" / "info.yaml").read_text()
    assert "model_weights.ckpt is shown as a plain file" in notes and "other zip readers" in notes, notes


#: what every refusal of an archive read differently says
SAYS = "torch.load would read other records than other zip readers"

CASES = {
    "two zips concatenated, torch.load reading the first": Case(pair_of_weights, "refused", SAYS),
    "two zips concatenated, the first running a command": Case(pair_running_a_command, "refused", SAYS),
    "a local header naming another record": Case(local_name_of_another_record, "refused", SAYS),
    "a local header of other sizes": Case(local_sizes_that_differ, "refused", SAYS),
    "data.pkl of a wrong CRC": Case(pickle_of_a_wrong_crc, "refused", SAYS),
    "a storage named twice": Case(storage_named_twice, "refused", SAYS),
    "a storage named twice, in another case": Case(storage_named_twice_in_other_case, "refused", SAYS),
    "a storage marked as a folder": Case(storage_marked_as_folder, "refused", SAYS),
    "an archive after bytes no record holds": Case(archive_after_hidden_bytes, "refused", SAYS),
    "an end-record signature after the end record": Case(end_signature_in_trailing_bytes, "refused", SAYS),
    "a directory holding more entries than counted": Case(directory_longer_than_its_count, "refused", SAYS),
    "a zip64 locator pointing elsewhere": Case(zip64_locator_elsewhere, "refused", SAYS),
    "a record over the records after it": Case(record_over_the_next, "refused", SAYS),
    "a name cut short by a NUL": Case(name_cut_by_a_nul, "refused", SAYS),
    "a .nemo holding two zips concatenated": Case(nemo_holding_a_pair, "served",
                                                  check=_weights_ckpt_is_a_plain_file),
}
