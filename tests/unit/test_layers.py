"""The layers hold: import-linter's contracts, and the few function-level imports that cross them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = [*sorted((ROOT / "clip_runner").rglob("*.py")), *sorted((ROOT / "clip_http").rglob("*.py")),
           ROOT / "service.py"]
MAX_FUNCTION_LEVEL_IMPORTS = 10


def function_level_imports() -> list[tuple[str, int, str]]:
    """(file, line, the line's text) of every import inside a function body, in library code."""
    found = []
    for path in LIBRARY:
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        found.append((path.relative_to(ROOT).as_posix(), inner.lineno, lines[inner.lineno - 1]))
    return found


def test_function_level_imports_are_few_and_each_says_why() -> None:
    found = function_level_imports()
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, found
    unexplained = [f"{file}:{line}" for file, line, text in found if "  # " not in text]
    assert not unexplained, f"a lazy import crosses a boundary: say which, on its line ({unexplained})"


def test_the_import_contracts_are_kept() -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_a_change_that_breaks_a_boundary_fails(tmp_path: Path) -> None:
    """The contracts can fail: the serving side importing training code is caught."""
    tree = tmp_path / "tree"
    for package in ("clip_runner", "clip_http"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    batcher = tree / "clip_runner" / "serving" / "batcher.py"
    batcher.write_text(batcher.read_text() + "\nfrom ..training import finetune  # noqa: E402,F401\n")
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tree)})
    assert done.returncode != 0
    assert "Nothing on the serving side imports compile or training code" in done.stdout
    assert "clip_runner.serving.batcher -> clip_runner.training.finetune" in done.stdout


def test_listing_the_store_loads_no_torch() -> None:
    """`python -m models list` only reads entries: the store's read side, without torch."""
    probe = ("import runpy, sys; sys.argv = ['models', 'list']\n"
             "try:\n    runpy.run_module('models', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print([m for m in ('torch', 'open_clip', 'openvino') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
