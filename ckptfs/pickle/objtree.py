"""The generic layout of unpickled checkpoints (docs/layout.md): containers
that hold tensors become folders, tensors become `.npy`, every other value
becomes `.yaml`. Dotted string keys are split like tensor names. A folder or
tensor the pickle holds in several places is shown once, and a link
everywhere else: the graph is a graph, never copied out into a tree (30
levels of a list shared twice would be 2^30 folders)."""

from __future__ import annotations

import posixpath
from typing import Callable

from ..limits import LIMITS
from ..tree import names
from ..tree.nodes import Content, Dir, File, Node, PathConflict, Symlink
from ..tree.tensors import PlacedTensor, Tensor, TensorFile
from .pyobjects import to_yaml
from .torch_classes import TensorRef

#: (a pickled tensor, its full key) -> its record
TensorOf = Callable[[TensorRef, str], Tensor]


class ObjectTree:
    """Builds the folder for one unpickled object.

    A writer also needs to know where each path's value lives (`record`):
    `slots` maps the path of every file and container folder to (container,
    key), and `folders` maps every folder to (container, key prefix) for new
    files, the prefix being the dotted start of the keys a split name stands
    for. A value that is not a container is the one item of `holder`.
    """

    def __init__(self, tensor_of: TensorOf, record: bool = False):
        self.tensor_of = tensor_of
        self.record = record
        self.placed: list[PlacedTensor] = []
        self._holds_tensors: dict[int, bool] = {}
        self.slots: dict[str, tuple[object, object]] = {}
        self.folders: dict[str, tuple[object, str]] = {}
        self.holder: list = []
        self._shown_at: dict[int, str] = {}  # id of a container or tensor -> the path it is shown at
        self._yaml_budget = [LIMITS.yaml_values]  # values left to render, for every YAML file of the pickle

    def build(self, obj: object) -> Dir:
        root = Dir()
        self.holder = [obj]
        if isinstance(obj, (dict, list, tuple)):
            self.slots[""] = (self.holder, 0)
            self._fill(root, obj, "", "")
        else:
            self._add(root, [], "data", obj, "data", "", (self.holder, 0))
        return root

    def holds_tensors(self, value: object) -> bool:
        """True if `value` is a container with a tensor somewhere inside."""
        if isinstance(value, TensorRef):
            return True
        if not isinstance(value, (dict, list, tuple)):
            return False
        known = self._holds_tensors.get(id(value))
        if known is None:
            self._holds_tensors[id(value)] = False  # a cycle holds nothing new
            items = value.values() if isinstance(value, dict) else value
            known = self._holds_tensors[id(value)] = any(self.holds_tensors(v) for v in items)
        return known

    def _fill(self, folder: Dir, container, prefix: str, path: str) -> None:
        if self.record:
            self.folders.setdefault(path, (container, ""))
        if isinstance(container, dict):
            pairs, keys = list(container.items()), frozenset(container)
        else:
            pairs, keys = list(enumerate(container)), frozenset()
        for position, (key, value) in enumerate(pairs):
            full = f"{prefix}{key}"
            if isinstance(key, str) and "." in key:
                parts = [names.escape(p) for p in key.split(".")]
            else:
                parts = [names.key_name(key, keys)]
            try:
                self._add(folder, parts[:-1], parts[-1], value, full, path, (container, key))
            except PathConflict:
                try:
                    self._add(folder, [], names.escape(str(key), dots=True), value, full, path, (container, key))
                except PathConflict:  # a key named by a cut repr, like another one: its position tells them apart
                    self._add(folder, [], f"{names.escape(str(key), dots=True)}%~{position}", value, full, path,
                              (container, key))

    def _add(self, folder: Dir, dirs: list[str], leaf: str, value, full: str, path: str, slot: tuple) -> None:
        parent = folder.subdir(dirs)
        where = "/".join(filter(None, [path, *dirs]))
        for depth in range(1, len(dirs) + 1) if self.record else ():  # the folders a dotted key was split into
            dotted = ".".join(slot[1].split(".")[:depth]) + "."
            self.folders.setdefault("/".join(filter(None, [path, *dirs[:depth]])), (slot[0], dotted))
        if isinstance(value, TensorRef):
            name = leaf + ".npy"
            if not self._link(parent, name, value, where, slot):
                tensor = self.tensor_of(value, full)
                self._put(parent, name, TensorFile(tensor))
                self.placed.append(PlacedTensor(f"{where}/{name}".lstrip("/"), tensor))
                self._slot(f"{where}/{name}", slot)
        elif self.holds_tensors(value):
            existing = parent.children.get(leaf)
            if isinstance(existing, Dir) or not self._link(parent, leaf, value, where, slot):
                sub = existing if isinstance(existing, Dir) else self._put(parent, leaf, Dir())
                self._slot(f"{where}/{leaf}", slot)
                self._fill(sub, value, full + ".", f"{where}/{leaf}".lstrip("/"))
        else:
            text = to_yaml(value, self._yaml_budget)
            self._put(parent, leaf + ".yaml", File(Content([text.encode("utf-8")])))
            self._slot(f"{where}/{leaf}.yaml", slot)

    def _link(self, parent: Dir, name: str, value: object, where: str, slot: tuple) -> bool:
        """Put a link to where `value` is shown already, if it is; else
        remember that it is shown at `where/name` and say False."""
        shown_at = self._shown_at.get(id(value))
        if shown_at is None:
            self._shown_at[id(value)] = f"{where}/{name}".lstrip("/")
            return False
        self._put(parent, name, Symlink(posixpath.relpath(shown_at, where or ".")))
        self._slot(f"{where}/{name}", slot)  # removing the link removes this key; the value stays where it is shown
        return True

    def _slot(self, path: str, slot: tuple) -> None:
        if self.record:
            self.slots[path.lstrip("/")] = slot

    @staticmethod
    def _put(parent: Dir, name: str, node: Node) -> Node:
        if name in parent.children:
            raise PathConflict(name)
        return parent.add(name, node)
