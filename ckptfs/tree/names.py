"""Names of checkpoint keys as file names, and back (docs/layout.md).

Percent-encoding of the UTF-8 bytes, applied only where a name cannot stand
as it is: `%`, `/`, NUL, a leading `.`, the empty name, a lone surrogate
(which no file name can hold: a pickle or a JSON header may still name a key
so), and names longer than the kernel's 255-byte limit. Every function here
is pure.
"""

from __future__ import annotations

import ast
import hashlib
import re

NAME_MAX = 255
EMPTY = "%"
_ALWAYS = {"%", "/", "\0"}
_HASH_MARK = "%#"
#: surrogates that `os.fsencode` cannot turn into bytes (those standing for
#: undecodable bytes of a file name, U+DC80..U+DCFF, it can)
_LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _quote_char(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def escape(part: str, suffix: str = "", *, dots: bool = False) -> str:
    """The file name for one name part, with `suffix` (like `.npy`) appended.

    `dots=True` also escapes every `.`, for a dotted key that must stay one
    name instead of being split into folders.
    """
    return _fit(_quote(part, dots), suffix)


def _quote(part: str, dots: bool = False) -> str:
    if part == "":
        return EMPTY
    if (part[0] != "." and "%" not in part and "/" not in part and "\0" not in part and not (dots and "." in part)
            and not _LONE_SURROGATE.search(part)):
        return part  # the common case: nothing to escape
    return "".join(
        _quote_char(ch) if ch in _ALWAYS or (ch == "." and (i == 0 or dots)) or _LONE_SURROGATE.match(ch) else ch
        for i, ch in enumerate(part)
    )


def _fit(body: str, suffix: str) -> str:
    name = body + suffix
    if len(name) <= NAME_MAX // 4 or len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX:
        return name  # (at most 4 bytes a character: a short name needs no encoding to know it fits)
    digest = hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = _HASH_MARK + digest + suffix
    room = NAME_MAX - len(tail.encode())
    head = body.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    while head.endswith("%") or (len(head) >= 2 and head[-2] == "%"):
        head = head[:-1]  # never cut an escape in half
    return head + tail


def unescape(name: str) -> str:
    """The name part a file name stands for (the reverse of `escape`). A `%`
    that no two hex digits follow is kept as it is: a name a user made in
    the mount (`50%.txt`) means what it says.

    Raises ValueError for a shortened name: its original lives in the
    `user.ckptfs.name` attribute, not in the name.
    """
    if name == EMPTY:
        return ""
    if _HASH_MARK in name:
        raise ValueError(f"{name!r} is a shortened name; see its user.ckptfs.name attribute")
    out = bytearray()
    i = 0
    while i < len(name):
        ch = name[i]
        hexpair = name[i + 1 : i + 3]
        if ch == "%" and len(hexpair) == 2 and all(c in "0123456789ABCDEFabcdef" for c in hexpair):
            out.append(int(hexpair, 16))
            i += 3
        else:
            out += ch.encode("utf-8", "surrogatepass")
            i += 1
    try:
        return out.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # escapes no name of ours makes (`%FF`): the name as it is
        return name


def disk_path(tree_path: str) -> str:
    """The path of a file of a directory a path of the tree stands for, each
    part unescaped (`%2E%2E/x` is `../x`: check it before it is written)."""
    return "/".join(unescape(p) for p in tree_path.split("/"))


def split_dotted(name: str) -> list[str]:
    """A flat tensor name split into its parts: `a.b.c` -> `['a', 'b', 'c']`."""
    return name.split(".")


def tensor_path(name: str, suffix: str = ".npy") -> list[str]:
    """The path parts for a flat dotted tensor name: `a.b.w` -> `a/b/w.npy`."""
    parts = split_dotted(name)
    return [escape(p) for p in parts[:-1]] + [escape(parts[-1], suffix)]


def tensor_name(path: str, suffix: str = ".npy") -> str:
    """The flat dotted tensor name a path of the tree spells, the inverse of
    `tensor_path`: `a/b/w.npy` -> `a.b.w` (each part unescaped)."""
    return ".".join(unescape(p) for p in path.removesuffix(suffix).split("/"))


def key_name(key: object, sibling_keys: frozenset = frozenset(), suffix: str = "") -> str:
    """The file name for one key of a container (dict key or list index).

    `sibling_keys` are the other keys of the same container; they decide
    whether a string that looks like an int key needs its first character
    escaped to stay distinct.
    """
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        return _fit("%=" + _quote(repr(key)), suffix)
    if isinstance(key, int):
        return _fit(str(key), suffix)
    if _looks_like_int(key) and int(key) in sibling_keys:
        rest = "".join(_quote_char(c) if c in _ALWAYS else c for c in key[1:])
        return _fit(_quote_char(key[0]) + rest, suffix)
    return escape(key, suffix)


def _looks_like_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and str(int(text)) == text


def key_from_name(name: str, int_keys: bool = False) -> object:
    """The key a file name made by `key_name` stands for.

    `int_keys` says whether the container holds int keys, so a plain decimal
    name means an int rather than a string.
    """
    if name.startswith("%="):
        return ast.literal_eval(unescape(name[2:]))
    if int_keys and _looks_like_int(name):
        return int(name)
    return unescape(name)


def escape_first(name: str) -> str:
    """`name` with its first character escaped: a distinct, decodable twin."""
    if name.startswith("%"):
        return _quote_char("%") + name[1:]
    return _quote_char(name[0]) + name[1:]


def file_parts(relpath: str) -> list[str]:
    """File names for a path of a file of the source (a tar member, a file
    of a directory, an archive's record): kept as they are but for `%`, a
    top-level `.ckptfs`, and what the name rule (sources/pathnames.py)
    refuses: an empty part, `.`, `..`, NUL, a character no file name holds."""
    parts = [_file_part(p) for p in relpath.split("/")]
    if parts[0] == ".ckptfs":
        parts[0] = "%2Eckptfs"
    return parts


def _file_part(part: str) -> str:
    if part in ("", ".", ".."):
        return "%2E" * len(part) or EMPTY
    body = part.replace("%", "%25")
    if "\0" in body or _LONE_SURROGATE.search(body):
        body = "".join(_quote_char(c) if c == "\0" or _LONE_SURROGATE.match(c) else c for c in body)
    return _fit(body, "")


def natural_key(name: str) -> list:
    """Sorts names as people and distributed writers do: `rank2` before
    `rank10` (the numbers in a name compared by value)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
