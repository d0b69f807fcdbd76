"""Edited YAML that must be a mapping of strings to strings (an ONNX
model's metadata_props, a safetensors header's `__metadata__`): read when
the file is closed, so that whatever would fail the repack is refused then
in one line, not found at unmount."""

from __future__ import annotations

import yaml


def string_mapping(data: bytes) -> dict[str, str] | None:
    """The mapping `data` holds, None for an empty file; ValueError (one
    line) for YAML that cannot be read (nested past the parser's recursion
    too), anything but strings, or a string UTF-8 cannot encode (a lone
    surrogate, which YAML's escapes can write)."""
    try:
        value = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ValueError("not valid YAML (nested too deep to read)") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"a mapping of strings to strings is expected, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError(f"{key!r}: keys and values are strings (quote {item!r})")
        try:
            key.encode(), item.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{key!r}: a lone surrogate, which UTF-8 cannot encode") from None
    return value
