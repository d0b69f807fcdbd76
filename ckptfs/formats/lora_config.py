"""A PEFT adapter's `adapter_config.json`: what a LoRA merge needs of it.

PEFT (`tuners/lora/layer.py`, `update_layer`) scales each module's B·A by
`lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`; `r` and
`lora_alpha` may be set per module by `rank_pattern` and `alpha_pattern`,
whose keys match a module whose name is the key or ends with `.` + the key
(PEFT's `get_pattern_key` reads a key as a regular expression; here it is
matched as the plain module name it nearly always is, never compiled: a
file from the Hub does not choose what a regex engine runs). Nothing the
file says is trusted: every value is checked for its type and range here,
and the ranks against the tensors' shapes where the merge is planned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import FormatError
from .jsontext import json_object

CONFIG_NAME = "adapter_config.json"
#: the largest rank believed: LoRA ranks are in the tens to thousands; the
#: tensors' shapes must agree with it anyway
MAX_RANK = 1 << 20
#: the largest adapter_config.json read (they are a few KB)
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class LoraSettings:
    """What merging a LoRA adapter takes from its config."""

    r: int
    alpha: float
    rslora: bool
    dora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    #: the Hub id or path the adapter was trained on (`base_model_name_or_path`)
    base: str | None

    def rank(self, module: str) -> int:
        return self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)

    def scaling(self, module: str) -> float:
        """PEFT's scaling of `module`'s B·A, a Python float as PEFT keeps it."""
        rank = self.rank(module)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.alpha)
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank


def _pattern_key(patterns: dict, module: str) -> str | None:
    """The first key of `patterns` that names `module` (the whole name, or
    its last dotted parts), as PEFT tries them in order."""
    for key in patterns:
        if module == key or module.endswith("." + key):
            return key
    return None


def parse(text: bytes, path: str) -> LoraSettings:
    """The settings of `text`, the config at `path`; FormatError naming
    the file and the first value that cannot be used."""
    config = json_object(text, path, MAX_CONFIG_BYTES, "an adapter config")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise FormatError(path, f"peft_type {kind!r}: ckptfs merges LORA adapters only")
    for unsupported in ("use_qalora", "use_bdlora"):
        if config.get(unsupported):
            raise FormatError(path, f"{unsupported}: this LoRA variant is not merged by ckptfs")
    base = config.get("base_model_name_or_path")
    return LoraSettings(
        r=_rank(config.get("r", 8), path, "r"),
        alpha=_number(config.get("lora_alpha", 8), path, "lora_alpha"),
        rslora=_flag(config, "use_rslora", path), dora=_flag(config, "use_dora", path),
        fan_in_fan_out=_flag(config, "fan_in_fan_out", path),
        rank_pattern={k: _rank(v, path, f"rank_pattern[{k!r}]") for k, v in _mapping(config, "rank_pattern", path)},
        alpha_pattern={k: _number(v, path, f"alpha_pattern[{k!r}]")
                       for k, v in _mapping(config, "alpha_pattern", path)},
        base=base if isinstance(base, str) and base else None,
    )


def _rank(value: object, path: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_RANK:
        raise FormatError(path, f"{what} is {str(value)[:40]}: a rank is a whole number from 1 to {MAX_RANK:,}")
    return value


def _number(value: object, path: str, what: str) -> float:
    try:
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an integer past any float
        finite = False
    if not finite:
        raise FormatError(path, f"{what} is {str(value)[:40]}: not a finite number")
    return value


def _flag(config: dict, key: str, path: str) -> bool:
    value = config.get(key) or False
    if not isinstance(value, bool):
        raise FormatError(path, f"{key} is {value!r}: not true or false")
    return value


def _mapping(config: dict, key: str, path: str) -> list[tuple[str, object]]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise FormatError(path, f"{key} is not an object of module names")
    return list(value.items())
