"""Small JSON files of a checkpoint (an adapter's config, a zarr array's
`.zarray`), read as one object whatever they hold: bounded in size before
they are parsed, nesting past the parser's stack refused like bad JSON."""

from __future__ import annotations

import json

from ..errors import FormatError


def json_object(text: bytes, path: str, limit: int, what: str) -> dict:
    """`text`, the file at `path`, as a JSON object of at most `limit`
    bytes; FormatError naming the file and why it is not `what`."""
    if len(text) > limit:
        raise FormatError(path, f"{len(text):,} bytes: not {what} (at most {limit:,})")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FormatError(path, f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise FormatError(path, "not a JSON object")
    return value
