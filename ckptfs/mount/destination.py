"""Where a writable mount's edits go (`--output`, `--replace`,
`--overlay-dir`), checked before anything is mounted: an edit session that
could only fail at unmount is refused at once (docs/remote.md, "Writing")."""

from __future__ import annotations

import os

from ..errors import CkptfsError
from ..sources.location import location, writers
from ..sources.settings import SETTINGS
from ..sources.stores.base import writable_schemes
from .options import MountOptions


def destination(text: str) -> str:
    """Where `--output` writes: a URL as it is, a path made absolute."""
    return location(text).text


def check_edit_options(opts: MountOptions, source: str, resume: bool) -> None:
    if (opts.output or opts.replace or resume) and opts.read_only:
        flag = "--output" if opts.output else "--replace" if opts.replace else "--resume"
        raise CkptfsError(f"{flag} mounts writable; it does not go with -o ro")
    where = location(source)
    if where.local and opts.replace:
        raise CkptfsError("--replace is for remote sources; a local one is written over in place")
    if where.remote:
        if opts.replace and not where.replaceable:
            raise CkptfsError(f"{source}: only an {writable_schemes()} object can be replaced (a web server, the Hub "
                              "or another fsspec filesystem takes no writes, and a folder cannot be switched at "
                              "once); give --output PATH instead")
        if resume and not (opts.output or opts.replace):
            raise CkptfsError(f"{source}: say where the edits go: --output DEST, or --replace")
        if opts.replace:
            where.store.check_conditional_writes(source)
    if opts.remote.get("fetch") == "whole" and not where.fetched_whole:
        raise CkptfsError(f"{source}: -o fetch=whole is for a file on a web server (http:// or https://), whose "
                          "server may ignore range requests; object stores and the Hub serve them")
    use_overlay_dir(source, opts.overlay_dir)
    if opts.output:
        check_output(opts.output, source)


def use_overlay_dir(source: str, directory: str | None) -> None:
    """Keep a remote source's edits in `directory` (`--overlay-dir`)."""
    if directory is None:
        return
    if location(source).local:
        raise CkptfsError("--overlay-dir is for remote sources; a local one's edits are kept beside it")
    SETTINGS.overlays = os.path.abspath(directory)


def check_output(output: str, source: str) -> None:
    """A new path, or a new key of a store that takes uploads (s3://) for a checkpoint of one file."""
    out = location(output)
    if out.remote and location(source).folder:
        raise CkptfsError(f"{output}: an edited folder is written to a local path only; upload it afterwards "
                          "(aws s3 sync)")
    if out.remote:
        if not out.uploads:
            raise CkptfsError(f"{output}: ckptfs writes checkpoints to {writers()} only")
        store = out.store
        store.check_conditional_writes(output)
        if store.exists(output):
            raise CkptfsError(f"{output}: exists; give a new key for the edited checkpoint")
    elif os.path.lexists(output):
        raise CkptfsError(f"{output}: exists; give a new path for the edited checkpoint")
    elif not os.path.isdir(os.path.dirname(output)):
        raise CkptfsError(f"{os.path.dirname(output)}: no such directory, for --output")
