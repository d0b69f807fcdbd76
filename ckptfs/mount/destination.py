"""Where a writable mount's edits go (`--output`, `--replace`,
`--overlay-dir`), checked before anything is mounted: an edit session that
could only fail at unmount is refused at once (docs/remote.md, "Writing")."""

from __future__ import annotations

import os

from ..errors import CkptfsError
from ..sources import remote
from .options import MountOptions


def destination(text: str) -> str:
    """Where `--output` writes: a URL as it is, a path made absolute."""
    return text if remote.is_url(text) else os.path.abspath(text)


def check_edit_options(opts: MountOptions, source: str, resume: bool) -> None:
    if (opts.output or opts.replace or resume) and opts.read_only:
        flag = "--output" if opts.output else "--replace" if opts.replace else "--resume"
        raise CkptfsError(f"{flag} mounts writable; it does not go with -o ro")
    if not remote.is_url(source) and opts.replace:
        raise CkptfsError("--replace is for remote sources; a local one is written over in place")
    if remote.is_url(source):
        if opts.replace and (not source.startswith("s3://") or source.endswith("/")):
            raise CkptfsError(f"{source}: only an s3:// object can be replaced (a web server or the Hub takes no "
                              "writes, and a folder cannot be switched at once); give --output PATH instead")
        if resume and not (opts.output or opts.replace):
            raise CkptfsError(f"{source}: say where the edits go: --output DEST, or --replace")
        if opts.replace:
            remote.store_for(source).check_conditional_writes(source)
    if opts.remote.get("fetch") == "whole" and not (source.startswith(("http://", "https://"))
                                                     and not source.endswith("/")):
        raise CkptfsError(f"{source}: -o fetch=whole is for a file on a web server (http:// or https://), whose "
                          "server may ignore range requests; object stores and the Hub serve them")
    use_overlay_dir(source, opts.overlay_dir)
    if opts.output:
        check_output(opts.output, source)


def use_overlay_dir(source: str, directory: str | None) -> None:
    """Keep a remote source's edits in `directory` (`--overlay-dir`)."""
    if directory is None:
        return
    if not remote.is_url(source):
        raise CkptfsError("--overlay-dir is for remote sources; a local one's edits are kept beside it")
    remote.SETTINGS.overlays = os.path.abspath(directory)


def check_output(output: str, source: str) -> None:
    """A new path, or a new s3:// key for a checkpoint of one file."""
    folder = source.endswith("/") or source.startswith("hf://") or os.path.isdir(source)
    if remote.is_url(output) and folder:
        raise CkptfsError(f"{output}: an edited folder is written to a local path only; upload it afterwards "
                          "(aws s3 sync)")
    if remote.is_url(output):
        if not output.startswith("s3://"):
            raise CkptfsError(f"{output}: ckptfs writes checkpoints to local paths and s3:// only")
        store = remote.store_for(output)
        store.check_conditional_writes(output)
        if store.exists(output):
            raise CkptfsError(f"{output}: exists; give a new key for the edited checkpoint")
    elif os.path.lexists(output):
        raise CkptfsError(f"{output}: exists; give a new path for the edited checkpoint")
    elif not os.path.isdir(os.path.dirname(output)):
        raise CkptfsError(f"{os.path.dirname(output)}: no such directory, for --output")
