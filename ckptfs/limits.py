"""What one checkpoint may make ckptfs spend, whatever it claims.

Every parser checks what a file claims against these bounds before it
allocates or loops on it, so a hostile file of a few kilobytes can neither
hang a mount nor take gigabytes. The defaults clear every real checkpoint we
know by a wide margin; `-o max_NAME=N` raises one for a mount (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Limits:
    #: opcodes one pickle may run (a pickle of N bytes runs at most N)
    pickle_ops: int = 50_000_000
    #: entries of one pickle's memo
    pickle_memo: int = 10_000_000
    #: containers inside containers in one pickle (Python's own pickler stops near 1000)
    pickle_nesting: int = 200
    #: bytes of one pickle (a torch.save zip's data.pkl, a legacy file's pickles)
    pickle_bytes: int = 256 << 20
    #: values rendered into the YAML files of one pickle, shared references counted once per file
    yaml_values: int = 1_000_000
    #: bytes of a safetensors JSON header (the safetensors library's own limit)
    header_bytes: int = 100_000_000
    #: members of one archive: a tar's (every header), a zip's records
    members: int = 200_000


#: the bounds of this process; `apply` sets them from mount options
LIMITS = Limits()
NAMES = tuple(f.name for f in fields(Limits))


def apply(values: dict[str, int]) -> None:
    for name, value in values.items():
        setattr(LIMITS, name, value)
