"""The malicious corpus of `ckptfs scan` (tests/malicious/generate.py), its
single files mounted: a mount refuses or serves each without running its
payload. (The pair of concatenated zips is item 3's, in its own module.)"""

from __future__ import annotations

from pathlib import Path

from ..malicious.generate import SAMPLES
from . import Case

#: what the mount makes of each file today: served as the format it is, or refused
_SERVED = {"os.system in data.pkl", "torch.storage._load_from_bytes", "DATA.PKL record",
           "torch tar format, pickle member", "torch tar format, pickle after storage bytes",
           ".nemo, model_weights.ckpt a hard link", ".nemo, model_weights.ckpt sparse"}
_PLAIN = "a plain pickle, not a torch.save checkpoint"
_UNKNOWN = "not a checkpoint ckptfs knows"
_REFUSED = {
    **dict.fromkeys(["builtins.eval", "builtins.exec", "builtins.getattr chain", "operator.methodcaller",
                     "functools.partial", "pickle.loads", "runpy", "pip.main", "numpy.load", "marshal",
                     "STACK_GLOBAL through the memo", "STACK_GLOBAL of a computed name",
                     "a second pickle after the first"], _PLAIN),
    **dict.fromkeys(["INST", "OBJ", "protocol 0 in model_best.pth.tar", "protocol 1 in a .dat",
                     "protocol 0 in a .data", "protocol 0 named .npy", "legacy torch.save of protocol 0",
                     "INT in base 0", "STRING of UTF-8"], _UNKNOWN),
    # a bare .npy is a format (formats/npy.py): one of objects is refused as one, however its dtype is spelled
    **dict.fromkeys(["object .npy, double quotes", "object .npy, 'object'"], "an array of Python objects"),
    "object .npy, dtype past 64 KiB": "an NPY header longer than the 65,536 bytes ckptfs reads",
}


def _make(name: str):
    return lambda tmp_path: SAMPLES[name].write(tmp_path, tmp_path / "ran")


def _nothing_ran(mnt: Path, source: Path) -> None:
    assert not (source.parent / "ran").exists()


CASES = {
    **{f"malicious: {name}": Case(_make(name), "served", check=_nothing_ran) for name in _SERVED},
    **{f"malicious: {name}": Case(_make(name), "refused", says) for name, says in _REFUSED.items()},
}
