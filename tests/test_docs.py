"""Every command the guide shows is run: each ```console block of docs/ is a
shell session (`$ ` commands, then the output they print), run in a
sandbox that holds the files the guide names and compared line by line.
`/data/` and `/mnt/` in the docs are folders of the sandbox; an output
line `...` stands for any number of lines. ```sh blocks are for what
cannot run in a test (installing, systemctl, docker); the last test keeps
them to those."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ckptfs

from . import tf_bundle_writer
from .conftest import FIXTURES, REPO, force_unmount, is_mounted, write_cut_gguf
from .hostile.keras import keras_zip

DOCS = sorted((REPO / "docs").glob("*.md"))
MARK = "@@ckptfs-doc-command"
#: the first word of a command an ```sh block may show (run by CI or by nobody here)
NOT_RUN_HERE = {"make", "pip", "sudo", "apt-get", "systemctl", "docker", "journalctl", "python", ".venv/bin/python"}


def _blocks(kind: str) -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        start = None
        for i, line in enumerate(lines):
            if start is None and line.strip() == f"```{kind}":
                start = i
            elif start is not None and line.strip() == "```":
                found.append((f"{doc.name}:{start + 1}", lines[start + 1:i]))
                start = None
    return found


def _session(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of each `$ ` line."""
    session: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            session.append((line[2:], []))
        elif session and session[-1][0].endswith("\\"):
            session[-1] = (session[-1][0][:-1] + line.strip(), [])
        else:
            assert session, f"output before any command: {line!r}"
            session[-1][1].append(line)
    return session


def _matches(expected: list[str], actual: list[str]) -> bool:
    pattern = "\n".join(".*?" if line == "..." else re.escape(line.rstrip()) for line in expected)
    return re.fullmatch(pattern, "\n".join(line.rstrip() for line in actual), re.DOTALL) is not None


def _broken_safetensors(path: Path) -> None:
    header = {"lm_head.weight": {"dtype": "F32", "shape": [64, 1024], "data_offsets": [0, 262144]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(131072))


def _fp8_pair(plain: Path, fp8: Path) -> None:
    """A float32 layer and the same with its weight in FP8 (blocks of 128 x 128, cut at the edges; cli.md's diff)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    weight, norm = torch.randn(200, 64, generator=generator), torch.ones(64)
    scale = torch.stack([weight[:128].abs().max(), weight[128:].abs().max()]).reshape(2, 1) / 448
    stored = (weight / scale.repeat_interleave(128, 0)[:200]).to(torch.float8_e4m3fn)
    save_file({"proj.weight": weight, "norm.weight": norm}, plain)
    save_file({"proj.weight": stored, "proj.weight_scale_inv": scale, "norm.weight": norm}, fp8)


@pytest.fixture
def sandbox(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(FIXTURES / "nemo" / "tiny.nemo", data / "model.nemo")
    shutil.copyfile(FIXTURES / "lightning" / "tiny.ckpt", data / "tiny.ckpt")
    shutil.copyfile(FIXTURES / "pt2" / "tiny.pt2", data / "tiny.pt2")  # layout.md, torch.export archives
    shutil.copytree(FIXTURES / "hf" / "bert_tiny_sharded", data / "bert")
    shutil.copytree(FIXTURES / "dcp" / "fsdp2_2rank", data / "fsdp")
    _broken_safetensors(data / "broken.safetensors")
    write_cut_gguf(data / "cut.gguf")  # troubleshooting.md
    _fp8_pair(data / "layer.safetensors", data / "layer-fp8.safetensors")  # cli.md
    keras_zip(data / "model.keras")  # layout.md, Keras models
    tf_bundle_writer.checkpoint_folder(data / "ckpt")  # layout.md, TensorFlow checkpoints
    # a bfloat16 tensor's .npy as a mount serves it (dtypes.md)
    (data / "weight.npy").write_bytes(ckptfs.open(data / "model.nemo").read("model_weights.ckpt/emb/weight.npy"))
    for name in ("m", "a", "b"):
        (tmp_path / "mnt" / name).mkdir(parents=True)
    yield tmp_path
    for mnt in (tmp_path / "mnt").iterdir():
        force_unmount(mnt)


@pytest.mark.parametrize("where, lines", _blocks("console"), ids=[w for w, _ in _blocks("console")])
def test_console_block_runs_as_shown(sandbox, where, lines):
    def here(text: str) -> str:
        return text.replace("/data/", f"{sandbox}/data/").replace("/mnt/", f"{sandbox}/mnt/")

    session = _session(lines)
    # each command's status stays in $? for the next, past the marker between them
    script = "status=0\n" + "".join(f"printf '%s\\n' '{MARK}'; (exit $status); {here(command)} 2>&1; status=$?\n"
                                   for command, _ in session)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", COLUMNS="80")
    env.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(["bash", "-c", script], cwd=sandbox / "data", capture_output=True, text=True, env=env,
                          timeout=120)
    outputs = done.stdout.split(f"{MARK}\n")[1:]
    assert len(outputs) == len(session), f"{where}: the session stopped early:\n{done.stdout}{done.stderr}"
    for (command, expected), output in zip(session, outputs):
        actual = output.splitlines()
        assert _matches([here(line) for line in expected], actual), \
            f"{where}: $ {command}\nexpected:\n" + "\n".join(expected) + "\ngot:\n" + "\n".join(actual)
    left = [m for m in (sandbox / "mnt").iterdir() if is_mounted(m)]
    assert not left, f"{where}: the session leaves {left} mounted"


#: architecture.md's Python is a sketch of the protocol, for contributors
PYTHON_BLOCKS = [(where, lines) for where, lines in _blocks("python") if not where.startswith("architecture.md")]


@pytest.mark.parametrize("where, lines", PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_runs(sandbox, where, lines):
    code = "\n".join(lines).replace("/data/", f"{sandbox}/data/")
    done = subprocess.run([sys.executable, "-c", code], cwd=sandbox / "data", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{where}:\n{done.stdout}{done.stderr}"


def test_commands_outside_console_blocks_are_only_what_cannot_run_in_a_test():
    for where, lines in _blocks("sh"):
        for line in "\n".join(lines).replace("\\\n", " ").splitlines():
            command = line.split("#")[0].strip()
            if command:
                assert command.split()[0] in NOT_RUN_HERE, f"{where}: {command!r} belongs in a ```console block"


def _synopsis() -> dict[str, str]:
    """docs/cli.md's synopsis: each command's line, with its continuation lines."""
    text = (REPO / "docs" / "cli.md").read_text()
    block = text.split("```\n", 2)[1]
    lines: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line.startswith("ckptfs "):
            name = line.split()[1]
            lines[name] = line
        elif line.startswith(" ") and name:
            lines[name] += " " + line.strip()
    return lines


def test_the_cli_synopsis_has_every_command_with_every_option():
    from ckptfs.commands import build_parser, manual

    synopsis = _synopsis()
    for name, _, sub in manual._subcommands(build_parser()):
        assert name in synopsis, f"docs/cli.md's synopsis lacks 'ckptfs {name}'"
        for action in manual._optionals(sub):
            if action.dest in ("help", "debug"):  # every command's, said once below the synopsis
                continue
            assert any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", synopsis[name]) for o in action.option_strings), \
                f"docs/cli.md's synopsis of 'ckptfs {name}' lacks {'/'.join(action.option_strings)}"


def test_help_lists_the_formats_of_the_registry():
    """--help and the man page (made from the same parser) name every
    registered format, the read-only ones as read-only, and the remote sources."""
    from ckptfs.formats import DIRECTORY_FORMATS, FILE_FORMATS, shown_as
    from ckptfs.sources.stores.base import native_schemes

    for command in ([], ["mount"]):
        done = subprocess.run([sys.executable, "-m", "ckptfs", *command, "--help"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())
        for fmt in (*FILE_FORMATS, *DIRECTORY_FORMATS):
            shown = shown_as(fmt)
            assert f"{shown}," in text or f"{shown};" in text, f"ckptfs {' '.join(command)} --help: {shown!r}"
        assert text.count("(read-only)") == sum(f.writes is None for f in (*FILE_FORMATS, *DIRECTORY_FORMATS))
        assert all(scheme in text for scheme in native_schemes())


#: how the docs may tell to install ckptfs: from a clone or a built wheel (it is on no package index)
INSTALL_FROM = re.compile(r"pip install (-e )?['\"]?(\.|\S+\.whl)(\[[a-z,]+\])?['\"]?(\s|$)")


def test_every_pip_install_of_ckptfs_is_from_a_clone_or_a_wheel():
    texts = {p.relative_to(REPO): p.read_text() for p in [REPO / "README.md", *DOCS, *(REPO / "ckptfs").rglob("*.py")]}
    for where, text in texts.items():
        for line in text.splitlines():
            for found in re.finditer(r"pip install (-\S+ )*(\S+)", line):
                word = found.group(2).strip("'\"`),")
                if "ckptfs" in word or word.startswith("."):
                    assert INSTALL_FROM.search(line[found.start():]), f"{where}: {line.strip()!r}"


def test_the_demo_prints_each_command_as_one_could_paste_it():
    """samples/demo.sh's `show` prints a command before it runs it: read
    back as a shell reads it, the printed line is the words it ran."""
    import shlex

    text = (REPO / "samples" / "demo.sh").read_text()
    functions = re.findall(r"^(quote|show)\(\) \{\n.*?^\}$", text, re.MULTILINE | re.DOTALL)
    assert functions == ["quote", "show"]
    defined = "".join(re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", text, re.MULTILINE | re.DOTALL).group(0)
                      for name in functions)
    words = ["printf", "%s|", "plain", "two words", "it's", "$HOME", "lr: 0.001", "", "a;b", "*.npy", "-c",
             "import numpy as np; print(np.load('/mnt/m/w.npy'))", "it's $HOME", "ü"]
    done = subprocess.run(["bash", "-c", defined + 'show "$@"', "bash", *words], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    printed, ran = done.stdout.lstrip("\n").split("\n", 1)
    assert printed.startswith("$ ") and shlex.split(printed[2:]) == words, printed
    assert ran == "|".join(words[2:]) + "|"
    assert printed.startswith("$ printf '%s|' plain 'two words' ")  # quotes only where a shell needs them
    assert """ -c "import numpy as np; print(np.load('/mnt/m/w.npy'))" """ in printed  # as one would write it
