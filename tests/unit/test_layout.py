"""README's "Layers" matches the tree: every module is named there, and every name there is a module."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("clip_runner", "clip_http")


def _layers_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("### Layers"):readme.index("### One `POST /encode_image`")]


def _library_files() -> list[Path]:
    """The tracked modules of the library packages (not their ``__init__.py``)."""
    tracked = subprocess.run(["git", "ls-files", *(f"{package}/*.py" for package in LIBRARY)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / path for path in tracked if not path.endswith("__init__.py")]


def test_every_module_is_named_in_the_layers_table_and_every_name_is_a_module() -> None:
    named = set(re.findall(r"`(?:[\w/]+/)?(\w+\.py)`", _layers_section())) - {"service.py"}
    assert named == {path.name for path in _library_files()}


def test_the_function_level_imports_are_the_ones_the_readme_counts_each_with_its_reason() -> None:
    crossings: set[tuple[str, int, str]] = set()  # a set: a nested function's imports are walked twice
    for path in [*_library_files(), ROOT / "service.py"]:
        source = path.read_text()
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                crossings |= {(path.name, node.lineno, lines[node.lineno - 1].strip()) for node in ast.walk(function)
                              if isinstance(node, ast.Import | ast.ImportFrom)}
    assert all("  # " in line for *_, line in crossings), crossings  # each says why on its line
    assert re.search(r"there are\s+nine,", _layers_section()) and len(crossings) == 9, sorted(crossings)
