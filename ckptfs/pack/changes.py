"""What changed between the tree a writable mount had at mount and the
edited one: the paths of a tree, which of them differ, which files were
edited. Writers ask these; they never see the overlay itself."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable

from ..tree.nodes import Dir, File, Node

COMPARE_BLOCK = 8 << 20

#: Names editors and tools use for their own temporary files: never packed,
#: and their existence alone is not an edit. `-o ignore=` replaces them.
TEMP_PATTERNS = (".*.swp", ".*.swx", ".*.swo", "*~", "4913", ".#*", "*.tmp", ".~lock.*#")

#: Names of files a program writes whole, then renames over the file they
#: replace: sed -i's `sedXXXXXX`, Python tempfile's `tmpXXXXXXXX` (mkstemp,
#: NamedTemporaryFile; a suffix or not). Such a file is checked under the
#: name it is renamed to, not when closed; one still there at the repack
#: holds an edit that never reached its file, and is refused.
STAGING_PATTERNS = ("sed??????", "tmp????????", "tmp????????.*")


def is_temp_name(name: str, patterns: tuple[str, ...] = TEMP_PATTERNS) -> bool:
    return _matcher(patterns)(name) is not None


def is_staging_name(name: str) -> bool:
    """A name `STAGING_PATTERNS` matches."""
    return _matcher(STAGING_PATTERNS)(name) is not None


@functools.lru_cache(maxsize=8)
def _matcher(patterns: tuple[str, ...]):
    """One regular expression for all the patterns: a writable mount tests
    every name of its tree (fnmatch per pattern took 1 s for 100k tensors)."""
    if not patterns:
        return lambda name: None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL).match


def is_edited(node: Node | None) -> bool:
    """True for a file whose bytes were written through the mount, or that
    a rename moved: either way its path no longer holds what the source
    has there (a writer that copied the source's bytes for that path, or
    took its key from the node's mount-time name, would drop the edit)."""
    return isinstance(node, File) and node.edited


def files_of(root: Dir, skip: frozenset[str] = frozenset(), ignored: tuple[str, ...] = TEMP_PATTERNS,
             kept: Callable[[str, Node], bool] = lambda path, node: False) -> dict[str, Node]:
    """Every node of the main tree by path, without editors' temporary files
    (names matching `ignored`, unless `kept(path, node)` says the source had
    it: a tensor `layers.4913.w` is no editor's) and the `skip` top-level
    names (the `.ckptfs/` view), and files of values computed from other
    files (`File.computed`). A read-only folder is listed but not
    entered: nothing below it can change (and a lazy one stays unfilled)."""
    found: dict[str, Node] = {}
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        for name, node in folder.children.items():
            path = prefix + name
            if (not prefix and name in skip) or (is_temp_name(name, ignored) and not kept(path, node)):
                continue
            if isinstance(node, File) and node.computed:
                continue  # a dequantized weight: a view of other files, never packed
            found[path] = node
            if isinstance(node, Dir) and not node.read_only:
                pending.append((path + "/", node))
    return found


def below(folder: str, files: dict, before: dict) -> tuple[dict, dict]:
    """The entries of `files` and `before` under `folder`, relative to it."""
    prefix = folder + "/"
    return (
        {p[len(prefix) :]: n for p, n in files.items() if p.startswith(prefix)},
        {p[len(prefix) :]: v for p, v in before.items() if p.startswith(prefix)},
    )


def same_bytes(a, b) -> bool:
    if a.size != b.size:
        return False
    return all(a.read(p, COMPARE_BLOCK) == b.read(p, COMPARE_BLOCK) for p in range(0, a.size, COMPARE_BLOCK))


def changes(before: dict[str, tuple[Node, object]], after: dict[str, Node]) -> list[str]:
    """Paths whose existence, kind or bytes differ between the source's tree
    (`before`: path -> (node, its content at mount)) and the edited one."""
    changed = sorted(set(before) ^ set(after))
    for path, node in after.items():
        if path not in before:
            continue
        old, old_content = before[path]
        if isinstance(old, Dir) != isinstance(node, Dir):
            changed.append(path)
        elif is_edited(node):
            if not same_bytes(node.content, old_content):
                changed.append(path)
    return changed
