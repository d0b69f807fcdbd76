"""What a `ckptfs` command is: its name, the lines its help shows, the
arguments it takes and the function that runs it, declared together in the
command's own module (commands/__init__.py lists them)."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from typing import Callable

#: stands in a description for the formats' list, which `Parser` reads from their registry
FORMATS = "{formats}"


class Formatter(argparse.HelpFormatter):
    """argparse's help, its lines never broken at a hyphen: "(read-only)"
    stays whole where --help lists the formats."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


class RawDescriptionFormatter(argparse.RawDescriptionHelpFormatter, Formatter):
    """The description and epilog as written (mount's options and examples), the arguments' help as `Formatter`'s."""


class Parser(argparse.ArgumentParser):
    """Its description names the formats as their registry describes them
    (formats/__init__.py), imported only when help or the man page reads it:
    importing every format would slow each command by a quarter second."""

    @property
    def description(self) -> str | None:
        if self._description and FORMATS in self._description:
            from ..formats import described

            return self._description.replace(FORMATS, described())
        return self._description

    @description.setter
    def description(self, text: str | None) -> None:
        self._description = text


@dataclass(frozen=True)
class Command:
    name: str
    #: its line in `ckptfs --help`
    help: str
    #: the head of its own --help and its section of the man page
    description: str
    #: declares its arguments on its parser
    arguments: Callable[[argparse.ArgumentParser], None]
    #: runs it; returns the exit status
    run: Callable[[argparse.Namespace], int]
    aliases: tuple[str, ...] = ()
    #: printed after the options as written, and the description too (mount's options and examples)
    epilog: str | None = None
    #: its output is read by pipes: a closed pipe ends it quietly, as it ends cat
    printing: bool = False
    #: the exit status of trouble: 2 where 1 is an answer (different, dangerous), as diff(1)'s
    trouble: int = 1

    def add_to(self, subparsers, common: argparse.ArgumentParser) -> None:
        formatter = RawDescriptionFormatter if self.epilog else Formatter
        parser = subparsers.add_parser(self.name, aliases=list(self.aliases), help=self.help, parents=[common],
                                       description=self.description, epilog=self.epilog, formatter_class=formatter)
        self.arguments(parser)
