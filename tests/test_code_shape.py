"""The shape issue 28 asked the code to keep: no function of ckptfs/ so
long that it does more than one job (build_parser once took 209 lines)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ckptfs"
#: the most lines a function or method may span, decorators excluded
LONGEST = 80


def long_functions(root: Path, longest: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= longest:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_no_function_of_ckptfs_spans_80_lines():
    assert long_functions(PACKAGE, LONGEST) == []


def test_a_long_function_is_named_with_its_file_and_line(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST))
    (package / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(package, LONGEST) == [f"pkg/long.py:5 long: {LONGEST + 1} lines"]


def test_a_function_just_under_the_bound_passes(tmp_path):
    (tmp_path / "ok.py").write_text("def ok():\n" + "\n".join(f"    x{i} = {i}" for i in range(LONGEST - 2)) + "\n")
    assert long_functions(tmp_path, LONGEST) == []
