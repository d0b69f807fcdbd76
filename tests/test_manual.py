"""The man page and the shell completions: made from the argument parser,
current in ckptfs/share/, found by man(1) beside an install's bin/, and
completing what the commands take."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from ckptfs.commands import build_parser, manual

from .conftest import CKPTFS, REPO, TIMEOUT


def test_the_shipped_copies_are_what_the_parser_makes():
    made = manual.render(build_parser())
    for kind, relative in manual.FILES.items():
        shipped = (REPO / "ckptfs" / "share" / relative).read_text()
        assert shipped == made[kind], f"ckptfs/share/{relative} is out of date: run python -m ckptfs.manual"


def test_man_finds_and_renders_the_page_beside_an_installs_bin(tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    done = subprocess.run(CKPTFS[:1] + ["-m", "ckptfs.manual", "--prefix", str(prefix)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    env = dict(os.environ, PATH=f"{prefix / 'bin'}:/usr/bin:/bin", MANWIDTH="100", MANPAGER="cat", PAGER="cat")
    env.pop("MANPATH", None)
    where = subprocess.run(["man", "-w", "ckptfs"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert where.stdout.strip() == str(prefix / "share/man/man1/ckptfs.1"), where.stderr
    page = subprocess.run(["man", "--warnings", "ckptfs"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert page.returncode == 0 and not page.stderr, page.stderr
    text = " ".join(page.stdout.split())
    for name, _, sub in manual._subcommands(build_parser()):
        assert f"ckptfs {name}" in text
        for action in manual._optionals(sub):
            assert all(flag in text for flag in action.option_strings), action.option_strings
    assert "umask=022" in text and "EXIT STATUS" in text


def test_a_wheel_installs_the_page_and_completions_under_share(tmp_path):
    done = subprocess.run(CKPTFS[:1] + ["-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("ckptfs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for relative in manual.FILES.values():
        assert any(n.endswith(f".data/data/share/{relative}") for n in names), relative


def _complete(words: str, tmp_path: Path) -> list[str]:
    """What bash completion offers after `words` (the last one being completed)."""
    script = manual.bash_completion(build_parser())
    parts = words.split(" ")
    array = " ".join(f"'{w}'" for w in parts)
    run = (f"{script}\nCOMP_WORDS=({array}); COMP_CWORD={len(parts) - 1}; cd {tmp_path}; _ckptfs; "
           'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "-c", run], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.split()


def test_bash_completion_offers_commands_options_and_values(tmp_path):
    (tmp_path / "model.nemo").touch()
    assert {"mount", "umount", "status", "install-helper", "completion"} <= set(_complete("ckptfs ", tmp_path))
    assert _complete("ckptfs statu", tmp_path) == ["status"]  # "st" is stats too
    assert {"--foreground", "--log-level", "--resume"} <= set(_complete("ckptfs mount --", tmp_path))
    assert _complete("ckptfs mount --log-level w", tmp_path) == ["warning"]
    assert {"allow_other", "umask=", "uid="} <= set(_complete("ckptfs mount -o ", tmp_path))
    assert _complete("ckptfs mount mod", tmp_path) == ["model.nemo"]
    assert _complete("ckptfs status --j", tmp_path) == ["--json"]


def test_zsh_completion_parses_and_names_every_command():
    assert shutil.which("zsh"), "zsh is missing: make test installs it"
    script = manual.zsh_completion(build_parser())
    done = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and not done.stderr, done.stderr
    for name, _, _ in manual._subcommands(build_parser()):
        assert f"'{name}:" in script


def test_completion_command_prints_the_script():
    done = subprocess.run(CKPTFS + ["completion", "bash"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and done.stdout == manual.bash_completion(build_parser())
