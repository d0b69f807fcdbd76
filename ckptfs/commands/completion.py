"""`ckptfs completion`: the bash or zsh completion script (commands/manual.py)."""

from __future__ import annotations

from . import manual
from .command import Command


def _arguments(parser) -> None:
    parser.add_argument("shell", choices=("bash", "zsh"))


def run(args) -> int:
    from . import build_parser  # the package that lists this command

    print(manual.completion(build_parser(), args.shell), end="")
    return 0


COMMAND = Command(
    "completion", "print a shell completion script", "Print the completion script for SHELL; install-helper "
    "installs both system-wide. For one user: ckptfs completion bash > "
    "~/.local/share/bash-completion/completions/ckptfs",
    _arguments, run, printing=True,
)
