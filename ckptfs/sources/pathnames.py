"""The one rule for names that come from outside: a key of an object store's
listing, a file of a Hub repository, an archive's member, a file named in
an index. Such a name is a relative path whose parts are separated by `/`;
each part must be a name a folder can hold: not empty, not `.` or `..`, no
NUL, at most 255 bytes, encodable as a file name. A name that breaks it is
checked here, once, where it enters; where it is kept, its offending parts
are escaped, so it can never name anything but a file below the folder it
belongs to.
"""

from __future__ import annotations

import hashlib
import os

NAME_MAX = 255


def part_problem(part: str) -> str | None:
    """Why `part` cannot be one file name in a folder, or None."""
    if part == "":
        return "an empty name"
    if part in (".", ".."):
        return f"the name {part!r}"
    if "/" in part:
        return "a '/' inside a name"
    if "\0" in part:
        return "a NUL character"
    try:
        encoded = os.fsencode(part)
    except UnicodeEncodeError:
        return "a character no file name can hold"
    if len(encoded) > NAME_MAX:
        return f"a name of {len(encoded)} bytes (at most {NAME_MAX})"
    return None


def path_problem(relpath: str) -> str | None:
    """Why `relpath` cannot name a file below a folder, or None."""
    if relpath.startswith("/"):
        return "an absolute path"
    for part in relpath.split("/"):
        problem = part_problem(part)
        if problem is not None:
            return problem
    return None


def escaped(relpath: str) -> str:
    """`relpath` with every part that breaks the rule made one that keeps it:
    `%` for an empty part, `%2E` for each dot of `.` and `..`, `%XX` for a
    NUL or a character no file name holds, a cut name and a hash for one too
    long (these escapes are tree/names.py's). Parts that keep the rule stay."""
    return "/".join(_escaped_part(p) if part_problem(p) else p for p in relpath.split("/"))


def _escaped_part(part: str) -> str:
    if part == "":
        return "%"
    if part in (".", ".."):
        return "%2E" * len(part)
    out = []
    for ch in part:
        try:
            fits = ch not in "\0/" and bool(os.fsencode(ch))
        except UnicodeEncodeError:
            fits = False
        out.append(ch if fits else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
    text = "".join(out)
    if len(os.fsencode(text)) <= NAME_MAX:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    head = os.fsencode(text)[: NAME_MAX - 18].decode("utf-8", "ignore")
    return f"{head}%#{digest}"


def beside(name: str, tail: str) -> str:
    """The name of a file ckptfs keeps beside the file `name` in its folder:
    `.NAME` and `tail` (`.model.nemo.ckptfs`), or where that passes NAME_MAX
    bytes, NAME's head (cut at a byte: any bytes make a name) and a hash of
    all of it: a source named near the limit (80 letters of a script of
    three bytes each are 240) still has its overlay, lock and temp files."""
    whole = f".{name}{tail}"
    encoded = os.fsencode(name)
    if len(os.fsencode(whole)) <= NAME_MAX:
        return whole
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    room = NAME_MAX - len(os.fsencode(tail)) - len(digest) - 2
    return f".{os.fsdecode(encoded[:room])}~{digest}{tail}"


#: the random part `tempfile.mkstemp` and `mkdtemp` put between prefix and suffix
_RANDOM = "X" * 8


def temp_prefix(name: str, suffix: str) -> str:
    """The `prefix` for `tempfile.mkstemp(prefix, suffix)` of a file beside
    `name` whose whole name stays within NAME_MAX (what `beside` gives for
    `.RANDOM` and `suffix`, less those)."""
    return beside(name, f".{_RANDOM}{suffix}")[: -len(_RANDOM + suffix)]
