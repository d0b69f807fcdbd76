"""The `ckptfs` commands, one module each: its parser declared beside the
function that runs it (command.py says what a command declares). A new
command is a module here and a line in COMMANDS; ckptfs/cli.py runs them."""

from __future__ import annotations

import argparse

from ..version import __version__
from . import (
    cat,
    commit,
    completion,
    diff,
    doctor,
    export,
    info,
    install_helper,
    ls,
    mount,
    recover,
    scan,
    stats,
    status,
    umount,
)
from .command import FORMATS, Command, Formatter, Parser

#: in the order of `ckptfs --help`, the man page and the message naming them after an unknown one
COMMANDS: tuple[Command, ...] = tuple(module.COMMAND for module in (
    mount, umount, commit, recover, status, doctor, info, ls, cat, diff, stats, scan, export, install_helper, completion))
#: every name a command is called by, aliases included
NAMES = {name: command for command in COMMANDS for name in (command.name, *command.aliases)}

DESCRIPTION = (f"Mount a machine learning checkpoint as a directory: configs as files, every tensor as a .npy, "
               f"nothing extracted. Reads {FORMATS}. Mounts of all but the read-only ones are writable: edits are "
               "written back in the same format on unmount.")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ckptfs", description=DESCRIPTION, formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"ckptfs {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="log every detail; show the traceback of an internal error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in COMMANDS:
        command.add_to(subparsers, common)
    return parser
