"""Print what the suite checks: one line per test function, with its markers and the
first line of its docstring (or its name in words). Diff two runs of it to see that a
change to the suite dropped nothing:

    python scripts/test_inventory.py > /tmp/before.txt   # on main
    python scripts/test_inventory.py > /tmp/after.txt    # on your branch
    diff /tmp/before.txt /tmp/after.txt

Reads the test files with `ast`; imports nothing of the project.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def markers(node: ast.FunctionDef) -> list[str]:
    """`slow`, `parametrize`, ... of the function's @pytest.mark.<name> decorators."""
    found = []
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute) and ast.unparse(target).startswith("pytest.mark."):
            found.append(target.attr)
    return found


def module_markers(tree: ast.Module) -> list[str]:
    """Markers of a module-level `pytestmark`."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            text = ast.unparse(node.value)
            return [m for m in ("slow", "fashion", "skipif") if f"mark.{m}" in text]
    return []


def inventory(tests: Path = TESTS) -> list[str]:
    lines = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        shared = module_markers(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = (ast.get_docstring(node) or "").strip().splitlines()
                what = doc[0] if doc else node.name[5:].replace("_", " ")
                marks = ",".join(sorted(set(shared + markers(node)) - {"parametrize"}))
                lines.append(f"{path.name}::{node.name} [{marks}] {what}")
    return lines


if __name__ == "__main__":
    sys.stdout.write("\n".join(inventory()) + "\n")
