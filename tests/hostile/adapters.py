"""Hostile PEFT adapter folders: configs whose ranks, scales or size no
merge can use, and one nested past any parser's recursion. Each mounts as
the folder it is, without `merged/`, a note in info.yaml saying why. (The
cases that need a base, keys that climb with ../ and ranks the tensors do
not have, are in tests/test_adapters.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from . import Case


def _adapter(tmp_path: Path, config: bytes) -> Path:
    from safetensors.numpy import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(config)
    save_file({"base_model.model.layer.lora_A.weight": np.ones((4, 8), np.float32),
               "base_model.model.layer.lora_B.weight": np.ones((8, 4), np.float32)},
              folder / "adapter_model.safetensors")
    return folder


def _config(**values) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "org/name",
                       **values}).encode()


def _noted(phrase: str):
    def check(mnt: Path, source: Path) -> None:
        assert not (mnt / "merged").exists()
        notes = yaml.safe_load((mnt / ".ckptfs" / "info.yaml").read_text())["notes"]
        assert any(phrase in note for note in notes), notes
        assert np.load(mnt / "base_model" / "model" / "layer" / "lora_A" / "weight.npy").shape == (4, 8)
    return check


CASES = {
    "an adapter of rank 0": Case(lambda tmp: _adapter(tmp, _config(r=0)), "served",
                                 check=_noted("r is 0: a rank is a whole number")),
    "an adapter claiming rank 10**12": Case(lambda tmp: _adapter(tmp, _config(r=10**12)), "served",
                                            check=_noted("r is 1000000000000")),
    "an adapter scaled by 1e999": Case(lambda tmp: _adapter(tmp, b'{"peft_type": "LORA", "lora_alpha": 1e999}'),
                                       "served", check=_noted("lora_alpha is inf: not a finite number")),
    "an adapter config nested 100000 deep": Case(lambda tmp: _adapter(tmp, b"[" * 100_000 + b"]" * 100_000),
                                                 "served", check=_noted("not JSON")),
    "an adapter config of 2 MB": Case(lambda tmp: _adapter(tmp, _config(pad="x" * (2 << 20))), "served",
                                      check=_noted("not an adapter config")),
}
