"""Hostile torch.export archives (.pt2): payload configs whose views run
past their records, name dtypes and layouts no one knows, sizes that are
symbolic or astronomical, FQNs and record names that climb out with
`../`; JSON nested past any parser's stack; a million records. Each
payload breaks only itself (left out, a note naming it); the archive as a
whole is refused in one line."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import yaml

from . import Case

#: the one good record: four float32 values
VALUES = np.arange(4, dtype=np.float32)


def pt2_zip(path: Path, records: dict[str, bytes], folder: str = "h") -> Path:
    """A PT2 archive as torch's writer lays it out (records stored, all in
    one folder, the weights first), written by zipfile."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records.items():
            z.writestr(f"{folder}/{name}", data)
        z.writestr(f"{folder}/archive_format", b"pt2")
    return path


def _meta(sizes: list, strides: list, offset: int = 0, dtype: int = 7, **more) -> dict:
    return {"dtype": dtype, "sizes": [{"as_int": n} if isinstance(n, int) else n for n in sizes],
            "requires_grad": False, "device": {"type": "cpu", "index": None},
            "strides": [{"as_int": s} for s in strides], "storage_offset": {"as_int": offset}, "layout": 7, **more}


def _payload(path_name: str, meta: dict | None, pickled: bool = False) -> dict:
    return {"path_name": path_name, "is_param": False, "use_pickle": pickled, "tensor_meta": meta}


class _Call:
    """An object whose unpickling would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


OS_SYSTEM_CALL = _Call()

#: FQN -> its entry, and whether the mount shows it as a tensor
PAYLOADS = {
    "good.weight": (_payload("weight_0", _meta([2, 2], [2, 1])), True),
    "good.turned": (_payload("weight_0", _meta([2, 2], [1, 2])), True),
    "../../evil": (_payload("weight_0", _meta([4], [1])), True),
    "past": (_payload("weight_0", _meta([2, 2], [2, 1], offset=3)), False),
    "unknown_dtype": (_payload("weight_0", _meta([4], [1], dtype=99)), False),
    "symbolic": (_payload("weight_0", _meta([{"as_expr": {"expr_str": "s0"}}], [1])), False),
    "astronomical": (_payload("weight_0", _meta([1 << 40, 1 << 40], [1 << 40, 1])), False),
    "backwards": (_payload("weight_0", _meta([4], [-1])), False),
    "sparse": (_payload("weight_0", _meta([4], [1], layout=1)), False),
    "missing": (_payload("weight_9", _meta([4], [1])), False),
    "climbing": (_payload("../../models/model.json", _meta([4], [1])), False),
    "no_entry": ("not a mapping", False),
    "opaque": (_payload("opaque_obj_0", None, pickled=True), False),
    "opaque_call": (_payload("opaque_obj_1", None, pickled=True), False),
}


def _pt2_of_bad_payloads(tmp_path: Path) -> Path:
    config = {"config": {fqn: entry for fqn, (entry, _) in PAYLOADS.items()}}
    return pt2_zip(tmp_path / "bad.pt2", {
        "data/weights/weight_0": VALUES.tobytes(),
        "data/weights/opaque_obj_0": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94.",
        "data/weights/opaque_obj_1": pickle.dumps(OS_SYSTEM_CALL),
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        "data/constants/model_constants_config.json": b'{"config": {}}',
        "models/model.json": b'{"graph_module": {}}',
    })


def _each_bad_payload_breaks_only_itself(mnt: Path, source: Path) -> None:
    assert np.load(mnt / "good" / "weight.npy").tolist() == [[0, 1], [2, 3]]
    assert np.load(mnt / "good" / "turned.npy").tolist() == [[0, 2], [1, 3]]
    tensors = {str(p.relative_to(mnt)) for p in mnt.rglob("*.npy") if ".ckptfs" not in p.parts}
    assert tensors == {"good/weight.npy", "good/turned.npy", "%/%/%2F/%/%2Fevil.npy"}, tensors
    assert np.load(mnt / "%" / "%" / "%2F" / "%" / "%2Fevil.npy").tolist() == [0, 1, 2, 3]
    assert (mnt / "opaque.pkl").read_bytes().endswith(b"os\x94.")  # its bytes, never unpickled
    assert yaml.safe_load((mnt / "opaque.yaml").read_text()) == "os"
    called = f"{os.system.__module__}.system"  # posix.system
    assert (mnt / "opaque_call.yaml").read_text().startswith(f"!python/object:{called}\nargs:\n- touch pwned")
    assert called in (mnt / ".ckptfs" / "pickle-globals.txt").read_text().splitlines()
    notes = "\n".join(yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"])
    for fqn in ("past", "unknown_dtype", "symbolic", "astronomical", "backwards", "sparse", "missing", "climbing",
                "no_entry"):
        assert f"'{fqn}' is left out" in notes, fqn
    assert not any(name.startswith("evil") for name in os.listdir(source.parent))


def _pt2_of_deep_json(tmp_path: Path) -> Path:
    return pt2_zip(tmp_path / "deep.pt2", {"models/model.json": b"[" * 100_000 + b"]" * 100_000})


#: how many empty objects the wide model.json lists
WIDE = 30_000_000


def _pt2_of_wide_json(tmp_path: Path) -> Path:
    """A model.json of 30 million empty objects in 90 MB (under
    max_header_bytes): parsed, it would take 2.3 GB."""
    return pt2_zip(tmp_path / "wide.pt2", {"models/model.json": b"[" + b"{}," * WIDE + b"{}]"})


def _shown_as_json(mnt: Path, source: Path) -> None:
    assert not (mnt / "exported_program.yaml").exists()
    assert (mnt / "exported_program.json").stat().st_size == 3 * WIDE + 4
    notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
    assert any("h/models/model.json is shown as the JSON it is" in note for note in notes), notes


def _pt2_of_a_wide_config(tmp_path: Path) -> Path:
    config = b'{"config": [' + b"0," * 7_000_000 + b"0]}"
    return pt2_zip(tmp_path / "config.pt2", {"data/weights/model_weights_config.json": config,
                                             "models/model.json": b"{}"})


def _pt2_of_a_million_records(tmp_path: Path) -> Path:
    """A million empty stored records in the archive's folder, written
    directly (zipfile takes minutes for as many)."""
    path = tmp_path / "many.pt2"
    count, local, central = 1_000_000, bytearray(), bytearray()
    for i in range(count):
        name = b"m/data/weights/weight_%d" % i
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0,
                               len(local)) + name
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(central), len(local), 0)
    zip64 = struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), len(local))
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(local) + len(central), 1)
    path.write_bytes(bytes(local + central) + zip64 + locator + end)
    return path


CASES = {
    "a pt2 whose payloads run past their record, name unknown dtypes, climb with ../": Case(
        _pt2_of_bad_payloads, "served", "is left out", check=_each_bad_payload_breaks_only_itself),
    "a pt2 whose model.json nests 100000 deep": Case(_pt2_of_deep_json, "refused", "not readable JSON"),
    "a pt2 whose model.json is 30 million empty objects": Case(_pt2_of_wide_json, "served", check=_shown_as_json),
    "a pt2 whose weights config holds 7 million values": Case(_pt2_of_a_wide_config, "refused",
                                                              "-o max_members raises the limit"),
    "a pt2 of a million records": Case(_pt2_of_a_million_records, "refused", "more than 200000 records"),
}
