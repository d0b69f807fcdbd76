"""The edit session of a writable mount: started at mount (or resumed from
the overlay an earlier mount left), finished at unmount or commit by the
format's writer, then swapped in atomically (docs/writing.md). On failure
the overlay stays, for `ckptfs mount --resume` or `ckptfs recover`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass

from ..errors import CkptfsError, EditRefused, EditsKept, MoveRefused, RepackError, SourceChangedError
from ..formats.base import DirectoryWriter, Moved, Writer, nested_writer
from ..pack.changes import TEMP_PATTERNS, changes, files_of, is_staging_name, is_temp_name
from ..pack.newdir import NewDirectory, Owners
from ..pack.output import TEMP_SUFFIX, write_atomically, write_directory_atomically
from ..sources.location import location
from ..sources.pathnames import temp_prefix
from ..tree import names
from ..tree.checkpoint import VIEW_NAME, Checkpoint
from ..tree.nodes import Dir, File, Node, Symlink, unmade_view
from .editable import EditableTree
from .overlay import EditedContent, Overlay, mounted_identity

log = logging.getLogger(__name__)
VIEW = frozenset({VIEW_NAME})


@dataclass
class EditSession:
    """A writable mount's edits: the tree, its overlay, and what the tree
    held at mount (path -> (node, content)) to tell what changed.

    That snapshot is taken just before the first change: a mount nobody
    edits (most) never holds the path of each of its 200,000 nodes twice.
    """

    checkpoint: Checkpoint
    editable: EditableTree
    _before: dict | None = None
    _mount: dict[int, str] | None = None

    @classmethod
    def start(cls, checkpoint, ignored: tuple[str, ...] = TEMP_PATTERNS) -> EditSession:
        overlay = Overlay.create(checkpoint.source_path, ignored)
        session = cls(checkpoint, EditableTree(checkpoint.root, overlay))
        session.editable.before_first_change.append(session.before)
        return session

    def before(self) -> dict:
        """The tree as it was at mount: unchanged until the first edit."""
        if self._before is None:
            self._before = _snapshot(self.checkpoint.root)
        return self._before

    @classmethod
    def resume(cls, checkpoint, source_changed_ok: bool = False) -> EditSession:
        """The edits an earlier mount left in the overlay, replayed. If the
        source changed since, SourceChangedError, unless `source_changed_ok`
        (the edits then go to a new file): they are replayed on its present
        content when every edited file was written whole, since a file
        patched in place takes its other bytes from the source."""
        source = checkpoint.source_path
        overlay, records = Overlay.reopen(source)
        try:
            remove_stale_temp_files(source)
            before = _snapshot(checkpoint.root)
            editable = EditableTree(checkpoint.root, overlay, journal=False)
            try:
                editable.replay(records)
            except (OSError, KeyError) as e:
                raise CkptfsError(f"{overlay.path}: the journal does not apply to {source} ({e})") from None
            if overlay.identity != mounted_identity(source):
                patched = [c for c in editable.contents.values() if not c.whole and c.base is not None]
                if not source_changed_ok:
                    raise SourceChangedError(f"{source}: changed since the edits in {overlay.path} were made")
                if patched:
                    raise CkptfsError(f"{source}: changed since the edits in {overlay.path} were made, and some"
                                      " files were patched in place; they cannot be applied to its new content")
                overlay.identity = mounted_identity(source)
        except BaseException:
            overlay.release()
            raise
        editable.journal = True
        return cls(checkpoint, editable, before)

    def check(self, path: str, node: Node) -> str | None:
        """What keeps an edited file from being written back, or None: asked
        of the writer of the checkpoint it belongs to (a nested one's, for a
        file inside a `.nemo`'s `model_weights.ckpt/`). An editor's
        temporary file is not: it is checked where it is renamed to."""
        if self._temporary(path, node) or self._staged(path, node):
            return None
        writer, relative = self._writer_of(path)
        try:
            writer.check(relative, node)
        except EditRefused as e:
            return str(e)
        return None

    def _writer_of(self, path: str) -> tuple[Writer, str]:
        """The writer of the checkpoint `path` lies in, and the path in it."""
        writer, relative, folder = self.checkpoint.writer, path, self.checkpoint.root
        parts = path.split("/")
        for depth, name in enumerate(parts[:-1], 1):
            folder = folder.children.get(name) if isinstance(folder, Dir) else None
            if nested_writer(folder) is not None:
                writer, relative = nested_writer(folder), "/".join(parts[depth:])
        return writer, relative

    def check_move(self, old: str, new: str) -> MoveRefused | None:
        """What keeps the format from holding `old` renamed to `new` (paths of
        the tree), or None; asked before the rename is made. A rename to an
        editor's temporary name is a removal, and always taken."""
        if is_temp_name(new.rpartition("/")[2], self.editable.overlay.ignored):
            return None
        try:
            node = self.editable.node(old)
        except OSError:
            return None  # the rename answers for itself
        writer, relative = self._writer_of(old)
        other, target = self._writer_of(new)
        if other is not writer:
            return MoveRefused(f"{old} -> {new}: these lie in different checkpoints; a file moves between them "
                               "as a copy (mv copies on EXDEV)", errno.EXDEV)
        mine = self._mount_paths()
        root = old[: len(old) - len(relative)]  # where the checkpoint of `writer` lies in the tree
        moved = []
        for path, found in _subtree(target, node):
            if nested_writer(found) is not None or found.read_only:
                return MoveRefused(f"{old}: holds {_below(new, target, path)}, a checkpoint that is written "
                                   "where the source has it; it cannot be renamed or moved", errno.EPERM)
            if isinstance(found, Symlink) and id(found) in mine:
                return MoveRefused(f"{old}: a link stands for a value or file shown elsewhere; it cannot be "
                                   "moved (edit it where it leads)", errno.EPERM)
            was = mine.get(id(found))
            moved.append(Moved(path, found, was[len(root):] if was is not None else None))
        shortened = next((p for p in [target, *(m.path for m in moved)] if not _spells_a_key(p)), None)
        if shortened is not None:
            return MoveRefused(f"{_below(new, target, shortened)}: a name shortened to fit cannot be moved (its "
                               "key is in its user.ckptfs.name attribute, not in its name)", errno.EPERM)
        if not writer.renames and any(m.from_source for m in moved):
            return MoveRefused(f"{old}: a {self.checkpoint.format} checkpoint cannot rename what its source "
                               "holds in this version", errno.EPERM)
        try:
            writer.check_move(moved)
            if isinstance(node, File) and moved[0].from_source and not isinstance(node.content, EditedContent):
                writer.check(target, node)  # its bytes are the source's: what fails now fails at the repack
        except MoveRefused as e:
            return e
        except EditRefused as e:
            return MoveRefused(str(e), errno.EPERM)
        return None

    def _staged(self, path: str, node: Node) -> bool:
        """A file made in this mount under a name of `STAGING_PATTERNS`."""
        return (is_staging_name(path.rpartition("/")[2]) and isinstance(node, File)
                and isinstance(node.content, EditedContent) and path not in self.before())

    def _temporary(self, path: str, node: Node) -> bool:
        """An editor's temporary file: named like one, and not the source's."""
        return is_temp_name(path.rpartition("/")[2], self.editable.overlay.ignored) and not self._of_source(path, node)

    def _of_source(self, path: str, node: Node) -> bool:
        """Whether a file named like an editor's temporary file is the
        source's own: at its path, or moved with its folder under the name
        it had. One renamed to such a name is gone, as `rm` would have it
        (Emacs keeps its backup by renaming FILE to FILE~)."""
        if path in self.before():
            return True
        was = self._mount_paths().get(id(node))
        return was is not None and was.rpartition("/")[2] == path.rpartition("/")[2]

    def packed_files(self) -> dict[str, Node]:
        """The tree's files as a repack packs them, by path: without the
        `.ckptfs/` view and editors' temporary files."""
        return files_of(self.checkpoint.root, VIEW, self.editable.overlay.ignored, self._of_source)

    def _mount_paths(self) -> dict[int, str]:
        """Where each node of the tree as it was at mount stood then (by id: the snapshot holds them)."""
        if self._mount is None:
            self._mount = {id(node): path for path, (node, _) in self.before().items()}
        return self._mount

    def finish(self, discard: bool = False, output_path: str | None = None, force: bool = False,
               backup: bool = False, progress=None) -> str:
        """Repack (or drop) the edits; returns what was done, in a line.
        On failure the overlay stays and the error says where it is."""
        overlay, source = self.editable.overlay, self.checkpoint.source_path
        if discard:
            overlay.remove()
            return f"{source}: edits discarded"
        after = self.packed_files()
        changed = changes(self.before(), after) if overlay.exists else []
        if not changed and not output_path and not force:
            overlay.remove()
            return f"{source}: no changes; the source was left as it was"
        staged = sorted(path for path, node in after.items() if self._staged(path, node))
        if staged:
            raise EditsKept(f"cannot write {source}: {', '.join(staged)}: left by sed -i or a program that writes "
                            "a temporary file, then renames it over the file it replaces; that edit never reached "
                            "its file: rename each over the file it stands for, or remove it", "edit", overlay.path)
        writer = self.checkpoint.writer
        try:
            if isinstance(writer, DirectoryWriter):
                def build(path: str) -> None:
                    owners = Owners() if location(source).remote else Owners.of(source)
                    try:
                        with NewDirectory(path, owners) as out:
                            writer.write_dir(after, self.before(), out)
                            out.finish()
                    finally:
                        owners.close()

                written = write_directory_atomically(source, build, overlay.identity, output_path, backup)
            else:
                written = write_atomically(
                    source, lambda out: writer.write(after, self.before(), out), overlay.identity, output_path,
                    backup, progress,
                )
        except RepackError as e:
            raise EditsKept(str(e), "edit", overlay.path) from None
        except SourceChangedError as e:
            raise EditsKept(str(e), "changed", overlay.path) from None
        except (CkptfsError, OSError) as e:
            reason = str(e) if isinstance(e, CkptfsError) else f"{e.strerror or e} while writing {source}"
            raise EditsKept(reason, "other", overlay.path) from None
        overlay.remove()
        kept = f"; the original is kept beside it as {os.path.basename(written)}.orig*" if backup else ""
        return f"{written}: written with {len(changed)} changed path{'s' * (len(changed) != 1)}{kept}"


def remove_stale_temp_files(source: str) -> None:
    """Half-written checkpoints (files, or directories of a directory
    format) of a repack a crash interrupted. Call it holding the source's
    lock, so that no repack is running. Only this user's and the source
    owner's are removed: another's, or a link, is something else that has
    the name. A remote
    source has none: its repack is uploaded, and an upload cut short never
    shows."""
    if location(source).remote:
        return
    directory, name = os.path.split(os.path.abspath(source))
    ours = {os.geteuid()}
    with contextlib.suppress(OSError):
        ours.add(os.stat(source).st_uid)  # a new folder is given to the source's owner before the swap
    prefix = temp_prefix(name, TEMP_SUFFIX)
    for entry in os.listdir(directory):
        middle = entry[len(prefix):-len(TEMP_SUFFIX)]  # tempfile's random part has no dot: `.a.b.*` is not `a`'s
        if entry.startswith(prefix) and entry.endswith(TEMP_SUFFIX) and middle and "." not in middle:
            path = os.path.join(directory, entry)
            st = os.lstat(path)
            if st.st_uid not in ours or stat.S_ISLNK(st.st_mode):
                log.warning("%s: left as it is: not a file this user's repack made", path)
            elif stat.S_ISDIR(st.st_mode):
                log.info("removing %s, left by an interrupted repack", entry)
                shutil.rmtree(path)
            else:
                log.info("removing %s, left by an interrupted repack", entry)
                os.unlink(path)


def _subtree(path: str, node: Node):
    """(path, node) of `node` and of everything in it (a folder not yet filled is not entered)."""
    pending = [(path, node)]
    while pending:
        path, node = pending.pop()
        yield path, node
        if isinstance(node, Dir) and not unmade_view(node):
            pending.extend((f"{path}/{name}", child) for name, child in node.children.items())


def _spells_a_key(path: str) -> bool:
    """Whether every name of `path` stands for a key (a shortened one does not)."""
    try:
        for part in path.split("/"):
            names.unescape(part)
    except ValueError:
        return False
    return True


def _below(new: str, target: str, path: str) -> str:
    """A path of a moved checkpoint's subtree, as the tree names it after the move."""
    return new[: len(new) - len(target)] + path


def _snapshot(root: Dir) -> dict:
    """Every node of the source's tree by path, with its content at mount;
    names like editors' temporary files too: there they are the source's."""
    return {path: (node, node.content if isinstance(node, File) else None)
            for path, node in files_of(root, VIEW, ignored=()).items()}
