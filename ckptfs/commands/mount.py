"""`ckptfs mount`: the command line of a mount; mount/assemble.py puts the
mount together."""

from __future__ import annotations

import os

from ..mount import assemble, logs, options
from ..mount.destination import destination
from ..sources.cachedir import default_cache_dir
from . import arguments
from .command import FORMATS, Command

EPILOG = """\
mount options (-o, comma-separated):
  ro                 read-only (default: writable; edits are written back on unmount,
                     see docs/writing.md)
  allow_other        let other users see the mount (needs user_allow_other)
  uid=N, gid=N       show every file as owned by this user and group (root only,
                     or your own uid and groups)
  umask=022          take these mode bits away from files and folders
  fmask=, dmask=     the same for files only, for folders only
  noexec, noatime, ...   kernel mount flags, passed through; every mount is nosuid,nodev
                     (suid and dev, which mount.fuse3 adds, are ignored)
  nonempty           mount over a directory that holds files (they are hidden until unmounted)
  ignore=GLOB:GLOB   names of editors' temporary files, never packed (default:
                     .*.swp:.*.swx:.*.swo:*~:4913:.#*:*.tmp:.~lock.*#; ignore=+GLOB adds
                     to them, ignore= packs everything)
  debug, log_level=LEVEL, log_file=PATH, cache_dir=PATH  as the long options
  base=PATH          a PEFT adapter's base model (a Hugging Face folder, a .safetensors file
                     or hf://ORG/NAME): merged/ shows it with the adapter merged (default:
                     base_model_name_or_path in the Hugging Face cache, where it is)
  max_NAME=N         raise a bound on what a checkpoint may make ckptfs spend: max_pickle_ops,
                     max_pickle_memo, max_pickle_nesting, max_pickle_bytes, max_yaml_values,
                     max_header_bytes, max_members (defaults in docs/security.md)
  block_size=8M      a remote source's largest range request (docs/remote.md)
  cache_memory=256M  remote bytes kept in memory
  cache_disk=2G      remote bytes kept on disk under the cache dir across mounts (0: none)
  stall_timeout=30   seconds a remote request may go without progress: then it is
                     asked once more, on another connection, then the read fails (EIO)
  fetch=whole        a file on a web server that ignores range requests (python -m http.server):
                     download it once into the disk cache and read it there
  defaults, noauto, nofail, _netdev, x-systemd.*, ...  fstab-only, ignored

examples:
  ckptfs mount model.safetensors /mnt/m
  ckptfs mount megatron.nemo /mnt/m -o ro
  ckptfs mount ./hf-model-dir /mnt/m          # a Hugging Face model directory
  mount -t fuse.ckptfs model.nemo /mnt/m -o ro # through mount(8) / fstab (ckptfs install-helper)
  ckptfs mount s3://bucket/run/step_100/ /mnt/m     # a prefix of an object store (the remote extra)
  ckptfs mount https://host/model.safetensors /mnt/m
  ckptfs mount hf://org/model@main /mnt/m           # a Hugging Face repository at its commit
  ckptfs mount s3://bucket/model.nemo /mnt/m --output s3://bucket/fixed.nemo   # edits go to a new key
"""


def _arguments(parser) -> None:
    arguments.source(parser)
    parser.add_argument("mountpoint", help="an existing empty directory (-o nonempty allows files there)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS", help="mount options, see below")
    parser.add_argument("-f", "--foreground", action="store_true", help="serve in the foreground until unmounted")
    parser.add_argument(
        "--resume", action="store_true",
        help="mount writable with the edits an earlier mount left waiting (a refused repack, a crash), to fix them",
    )
    parser.add_argument(
        "--log-file", metavar="PATH",
        help="where the daemon logs (default: a file named after the mount point in /run/ckptfs, or "
        "$XDG_RUNTIME_DIR/ckptfs for other users; removed when the mount ends cleanly, kept when not)",
    )
    parser.add_argument("--cache-dir", metavar="PATH", help="where gzip seek indexes are kept (default: ~/.cache/ckptfs)")
    to = parser.add_mutually_exclusive_group()
    to.add_argument(
        "--output", metavar="DEST",
        help="write the edited checkpoint to DEST (a new path, or a new s3:// key) at unmount; the source stays "
        "as it is. A remote source mounts writable only with --output or --replace",
    )
    to.add_argument(
        "--replace", action="store_true",
        help="a remote (s3://) source: upload the edited checkpoint over it at unmount, only if it still holds "
        "the version mounted",
    )
    parser.add_argument(
        "--overlay-dir", metavar="DIR",
        help="a remote source: where its edits are kept until written (default: ~/.cache/ckptfs/edits)",
    )
    parser.add_argument("--log-level", choices=logs.LEVELS, help="the least severe messages logged (default: info)")


def _options(args) -> options.MountOptions:
    """The -o options, and the long options over them."""
    opts = options.parse(args.options, options.MountOptions())
    opts.debug = opts.debug or args.debug
    opts.log_level = "debug" if opts.debug else args.log_level or opts.log_level or "info"
    opts.log_file = args.log_file or opts.log_file
    opts.cache_dir = args.cache_dir or opts.cache_dir or default_cache_dir()
    opts.output, opts.replace = args.output and destination(args.output), args.replace
    opts.overlay_dir = args.overlay_dir
    return opts


def run(args) -> int:
    opts = _options(args)
    return assemble.mount(arguments.source_path(args.source), os.path.abspath(args.mountpoint), opts,
                          resume=args.resume, foreground=args.foreground)


COMMAND = Command(
    "mount", "mount a checkpoint", f"Mount SOURCE at MOUNTPOINT. Returns once the mount is usable; the filesystem "
    f"is served by a background daemon until 'ckptfs umount'. SOURCE is any of: {FORMATS}.",
    _arguments, run, epilog=EPILOG,
)
