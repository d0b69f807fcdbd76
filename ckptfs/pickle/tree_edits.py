"""The edits of a pickled checkpoint's tree made on its objects: each path
of the tree is a key of a container in the unpickled graph (`ObjectTree`
records which), so a removed file deletes its key, a new `.npy` or `.yaml`
adds one, an edited tensor file gets a new tensor and an edited YAML view
is merged into the objects it shows (`object_edits`). Everything else in
the graph is left as it was, to be pickled again.
"""

from __future__ import annotations

from typing import Callable

from ..tree import names
from ..tree.nodes import Dir, Symlink
from . import object_edits
from .object_edits import EditError
from .objtree import ObjectTree
from .torch_classes import new_size

#: (path, edited content, the tensor it replaces or None) -> the new tensor's value
NewTensor = Callable[[str, object, object], object]


def apply(tree: ObjectTree, files: dict, before: dict, changed: list[str], new_tensor: NewTensor) -> tuple[object, list[str]]:
    """The edited root object, and the problems (one line per bad path).
    `changed` lists the paths that differ (`repack.changes`)."""
    edits = _Edits(tree, new_tensor)
    removed = [p for p in changed if p in before and (p not in files or _kind_changed(p, files, before))]
    added = [p for p in changed if p in files and (p not in before or _kind_changed(p, files, before))]
    rewritten = [p for p in changed if p not in removed and p not in added and not isinstance(files[p], Dir)]
    was_at = {id(node): path for path, (node, _) in before.items()}
    for path in rewritten:
        edits.guarded(edits.rewrite, path, files[path].content)
    renamed = {p: edits.value_at(was_at[id(files[p])]) for p in added if id(files[p]) in was_at}
    edits.guarded(edits.remove_all, removed)
    for path in added:
        if isinstance(files[path], Symlink):
            edits.problems.append(f"{path}: a link stands for a value shown elsewhere; it cannot be moved or made "
                                  f"(edit the value where the link leads)")
        elif not isinstance(files[path], Dir):  # a new folder is made by the keys of what it holds
            edits.guarded(edits.add, path, files[path].content, renamed.get(path))
    return tree.holder[0], edits.problems


def _kind_changed(path: str, files: dict, before: dict) -> bool:
    return isinstance(files[path], Dir) != isinstance(before[path][0], Dir)


class _Edits:
    def __init__(self, tree: ObjectTree, new_tensor: NewTensor):
        self.tree, self.new_tensor = tree, new_tensor
        self.problems: list[str] = []
        self.replaced: dict[int, object] = {}  # id of a tuple -> the tuple that took its place
        self.slot_of = {id(c[k]): (c, k) for c, k in tree.slots.values() if isinstance(c[k], tuple)}

    def guarded(self, step, *args) -> None:
        try:
            step(*args)
        except EditError as e:
            self.problems.append(str(e))

    def rewrite(self, path: str, content) -> None:
        container, key = self.tree.slots[path]
        old = self._live(container)[key]
        if path.endswith(".npy"):
            self._set(container, key, self.new_tensor(path, content, old))
        elif path.endswith(".yaml"):
            node = object_edits.parse(content.read(0, content.size), path)
            value = object_edits.merge(old, node, path)
            if value is not old:
                self._set(container, key, value)
        else:
            raise EditError(f"{path}: not a file of this checkpoint's layout")

    def value_at(self, path: str) -> object:
        container, key = self.tree.slots.get(path, (None, None))
        return None if container is None else self._live(container)[key]

    def add(self, path: str, content, renamed_from=None) -> None:
        """A new file; `renamed_from` is the value a renamed one had (a
        Parameter stays one)."""
        if path.endswith(".npy"):
            value = self.new_tensor(path, content, renamed_from)
        elif path.endswith(".yaml"):
            node = object_edits.parse(content.read(0, content.size), path)
            value = object_edits.new_value(node, path)
        else:
            raise EditError(f"{path}: a new file must be a tensor (.npy) or a value (.yaml)")
        container, key = self._new_slot(path)
        if key in container:
            raise EditError(f"{path}: key {key!r} is already in use (by a file of another name)")
        container[key] = value

    def _new_slot(self, path: str) -> tuple[dict, object]:
        """The container and key a new file stands for: the nearest folder
        the tree knows, and the dotted key the rest of the path spells."""
        parts = path.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            folder = "/".join(parts[:depth])
            if folder in self.tree.folders:
                break
        else:
            raise EditError(f"{path}: the checkpoint holds one value, not a folder of them")
        container, prefix = self.tree.folders[folder]
        container = self._live(container)
        rest = parts[depth:]
        rest[-1] = rest[-1].rsplit(".", 1)[0]
        if not isinstance(container, dict):
            raise EditError(f"{path}: new items cannot be added to a {type(container).__name__}")
        try:
            if len(rest) == 1 and not prefix:
                int_keys = any(isinstance(k, int) and not isinstance(k, bool) for k in container)
                return container, names.key_from_name(rest[0], int_keys)
            return container, prefix + names.tensor_name("/".join(rest), suffix="")
        except (ValueError, SyntaxError) as e:
            raise EditError(f"{path}: {e}") from None

    def remove_all(self, removed: list[str]) -> None:
        """Removes the key of each removed file and container folder (list
        items last to first, so the indices hold)."""
        gone: set[str] = set()
        from_lists = []
        for path in sorted(removed):
            parts = path.split("/")
            if path not in self.tree.slots or any("/".join(parts[:n]) in gone for n in range(1, len(parts))):
                continue  # a folder a dotted name made, or inside a removed container
            gone.add(path)
            container, key = self.tree.slots[path]
            if container is self.tree.holder:
                raise EditError(f"{path}: the checkpoint's only value cannot be removed")
            live = self._live(container)
            if isinstance(live, dict):
                del live[key]
            else:
                from_lists.append((id(container), key, container))
        for _, key, container in sorted(from_lists, key=lambda r: (r[0], -r[1])):
            live = self._live(container)
            items = list(live)
            del items[key]
            self._set_all(container, items)

    def _live(self, container):
        return self.replaced.get(id(container), container)

    def _set(self, container, key, value) -> None:
        live = self._live(container)
        if isinstance(live, tuple):
            items = list(live)
            items[key] = value
            self._set_all(container, items)
        else:
            live[key] = value

    def _set_all(self, container, items: list) -> None:
        """A list's or a tuple's items replaced; a tuple is rebuilt and put in
        its own place."""
        live = self._live(container)
        if isinstance(live, list):
            live[:] = items
            return
        new = tuple(items) if type(live) is tuple else new_size(items)
        self.replaced[id(container)] = new
        parent, key = self.slot_of[id(container)]
        self._set(parent, key, new)
