"""What several commands take, declared once, and the values they make of
it: a checkpoint named on the command line, `--backup`, `--map OLD=NEW`."""

from __future__ import annotations

import argparse

from ..errors import CkptfsError
from ..sources.cachedir import default_cache_dir


def source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint file or directory")


def backup(parser: argparse.ArgumentParser, text: str = "keep the original as SOURCE.orig") -> None:
    parser.add_argument("--backup", action="store_true", help=text)


def source_path(text: str) -> str:
    """A source as the command line names it: a URL as it is, a path made absolute."""
    from ..sources.location import location

    return location(text).text


def open_source(text: str):
    """The checkpoint a command line names, for the commands that read it without a mount."""
    from ..formats import open_checkpoint

    return open_checkpoint(source_path(text), default_cache_dir())


def positive_int(text: str) -> int:
    """An option's whole number of 1 or more (`--sample N`, `--bins K`, `--jobs N`)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 1 or more")
    return value


def prefix_maps(items: list[str]) -> list[tuple[str, str]]:
    """`--map OLD=NEW`, each as (OLD, NEW)."""
    maps = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise CkptfsError(f"--map {item!r}: give it as OLD=NEW")
        maps.append((old, new))
    return maps
