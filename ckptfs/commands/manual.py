"""The man page ckptfs(1) and the bash and zsh completions, made from the
argument parser so that they say what the commands do.

`python -m ckptfs.manual` (ckptfs/manual.py) writes them into
ckptfs/share/, which pip installs under PREFIX/share (so `man ckptfs` and
completion work in a virtualenv whose bin/ is on PATH; an editable install,
which installs no data files, gets them from `python -m ckptfs.manual
--prefix VENV`, as `make` runs it); tests/test_manual.py fails when they are
out of date. `ckptfs install-helper` and `ckptfs completion` make them
afresh from the parser that runs.
"""

from __future__ import annotations

import argparse
import re

from ..mount import options
from ..version import __version__

#: in every file made here; install-helper --uninstall removes only files that hold it
MADE_HERE = "made from ckptfs's argument parser by ckptfs.manual"
FILES = {
    "man": "man/man1/ckptfs.1",
    "bash": "bash-completion/completions/ckptfs",
    "zsh": "zsh/site-functions/_ckptfs",
}
#: what -o completes to (the `=` ones take a value)
MOUNT_OPTION_WORDS = sorted(
    {"ro", "rw", "nonempty", "debug", "uid=", "gid=", "umask=", "fmask=", "dmask=", "log_level=", "log_file=",
     "cache_dir=", "ignore="} | options.PASSED_TO_FUSE | options.ALWAYS
)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each command, aliases left out."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return [(name, helps[name], sub) for name, sub in action.choices.items() if name in helps]


def _optionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _usage(parser: argparse.ArgumentParser) -> str:
    return re.sub(r"\s+", " ", parser.format_usage().removeprefix("usage: ")).strip()


def man_page(parser: argparse.ArgumentParser) -> str:
    out = [
        f'.\\" {MADE_HERE}; do not edit',
        f'.TH CKPTFS 1 "" "ckptfs {__version__}" "User Commands"',
        ".SH NAME",
        "ckptfs \\- machine learning checkpoints as a FUSE filesystem",
        ".SH SYNOPSIS",
    ]
    commands = _subcommands(parser)
    for _, _, sub in commands:
        out += [".nf", _roff(_usage(sub)), ".fi"]
    out += [".SH DESCRIPTION", _roff(parser.description), ".SH COMMANDS"]
    for name, help_text, sub in commands:
        out += [f".SS {_roff(name)}", _roff(sub.description or help_text)]
        for action in _positionals(sub):
            out += [".TP", f"\\fI{_roff(action.metavar or action.dest)}\\fR", _roff(action.help or "")]
        for action in _optionals(sub):
            value = f" \\fI{_roff(action.metavar or action.dest.upper())}\\fR" if _takes_value(action) else ""
            if action.choices:
                value = " \\fI" + _roff("{" + ",".join(map(str, action.choices)) + "}") + "\\fR"
            flags = ", ".join(f"\\fB{_roff(flag)}\\fR" for flag in action.option_strings)
            out += [".TP", flags + value, _roff(action.help or "")]
        if sub.epilog:
            out += [".PP", ".nf", _roff(sub.epilog), ".fi"]
    out += [
        ".SH EXIT STATUS",
        "0: success. 1: a problem, described in one line on standard error. 2: wrong usage.",
        ".SH FILES",
        ".TP",
        "\\fI/run/ckptfs/\\fR, \\fI$XDG_RUNTIME_DIR/ckptfs/\\fR, \\fI/tmp/ckptfs\\-UID/\\fR",
        "each mount's state and log, named after its mount point (root, other users, users without "
        "XDG_RUNTIME_DIR); private to their user",
        ".TP",
        "\\fI.NAME.ckptfs/\\fR beside a source",
        "the edits of a writable mount until they are written back",
        ".TP",
        "\\fI/sbin/mount.fuse.ckptfs\\fR",
        "the mount(8) helper that ckptfs install\\-helper writes",
        ".SH SEE ALSO",
        "fusermount3(1), mount(8), fstab(5), systemd.mount(5), systemd.automount(5). The guide: "
        "docs/ in the source, https://pypi.org/project/ckptfs/",
    ]
    return "\n".join(out) + "\n"


def _value_words(action: argparse.Action) -> str | None:
    """What completes the value of an option: words, or None for file names."""
    if action.choices:
        return " ".join(map(str, action.choices))
    if action.dest == "options":
        return " ".join(MOUNT_OPTION_WORDS)
    if action.metavar in ("PATH", "DIR", "FILE"):
        return None
    return ""


def bash_completion(parser: argparse.ArgumentParser) -> str:
    commands = _subcommands(parser)
    names = " ".join(name for name, _, _ in commands)
    cases = []
    for name, _, sub in commands:
        aliases = "|".join([name] + _aliases(parser, name))
        flags = " ".join(f for a in _optionals(sub) for f in a.option_strings)
        value_cases = []
        for action in _optionals(sub):
            if not _takes_value(action):
                continue
            words = _value_words(action)
            reply = 'compgen -f -- "$cur"' if words is None else f'compgen -W "{words}" -- "$cur"'
            if words == "":
                reply = "true"
            value_cases.append(f'                {"|".join(action.option_strings)}) COMPREPLY=($({reply})); return ;;')
        positional = "compgen -W \"bash zsh\" -- \"$cur\"" if name == "completion" else 'compgen -f -- "$cur"'
        cases.append("\n".join([
            f"        {aliases})",
            f'            opts="{flags}"',
            '            case $prev in',
            *value_cases,
            "            esac",
            f'            [[ $cur == -* ]] || {{ COMPREPLY=($({positional})); return; }} ;;',
        ]))
    return "\n".join([
        f"# bash completion for ckptfs, {MADE_HERE}",
        "_ckptfs() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" opts="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        [[ ${COMP_WORDS[i]} == -* ]] || { cmd=${COMP_WORDS[i]}; break; }',
        "    done",
        "    case $cmd in",
        f'        "") COMPREPLY=($(compgen -W "{names} --help --version" -- "$cur")); return ;;',
        *cases,
        "    esac",
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "}",
        "complete -o filenames -o bashdefault -F _ckptfs ckptfs",
        "",
    ])


def _aliases(parser: argparse.ArgumentParser, name: str) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [alias for alias, sub in action.choices.items() if sub is action.choices[name] and alias != name]


def _zsh_quote(text: str) -> str:
    return text.replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    commands = _subcommands(parser)
    described = " ".join(f"'{name}:{_zsh_quote(help_text)}'" for name, help_text, _ in commands)
    cases = []
    for name, _, sub in commands:
        specs = []
        for action in _optionals(sub):
            help_text = _zsh_quote((action.help or "").split(";")[0].split(" (")[0])
            for flag in action.option_strings:
                spec = f"{flag}[{help_text}]"
                if _takes_value(action):
                    words = _value_words(action)
                    spec += ":value:_files" if words is None else f":value:({words})" if words else ":value: "
                specs.append(f"'{spec}'")
        positional = "'*:shell:(bash zsh)'" if name == "completion" else "'*:file:_files'"
        names = "|".join([name] + _aliases(parser, name))
        cases.append(f"        {names}) _arguments {' '.join(specs)} {positional} ;;")
    return "\n".join([
        "#compdef ckptfs",
        f"# zsh completion for ckptfs, {MADE_HERE}",
        "_ckptfs() {",
        f"    local -a commands=({described})",
        "    if (( CURRENT == 2 )); then",
        "        _describe command commands",
        "        return",
        "    fi",
        "    shift words; (( CURRENT-- ))",
        "    case $words[1] in",
        *cases,
        "    esac",
        "}",
        '_ckptfs "$@"',
        "",
    ])


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    return bash_completion(parser) if shell == "bash" else zsh_completion(parser)


def render(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The text of each of FILES."""
    return {"man": man_page(parser), "bash": bash_completion(parser), "zsh": zsh_completion(parser)}

