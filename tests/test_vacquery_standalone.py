"""vacquery stands alone (issue 9 item 1): no module under vacquery/ imports vacd, at any level.

The rule covers imports at module level, inside functions and under `if`, relative imports
that climb out of the package, and `importlib.import_module("vacd…")` / `__import__`
calls: vacquery is the peer protocol library, and vacd is one of its users.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "vacquery"
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import anywhere in `tree`, absolute names only."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
            elif node.level > 1:  # `from .. import x` leaves the vacquery package
                found.append((node.lineno, "." * node.level + (node.module or "")))
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            argument = node.args[0] if node.args else None
            if name in DYNAMIC_IMPORTERS and isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.append((node.lineno, argument.value))
    return found


def vacd_imports(source: str, filename: str) -> list[str]:
    return [
        f"{filename}:{line}: imports {module}"
        for line, module in imported_names(ast.parse(source, filename))
        if module.split(".")[0] == "vacd" or module.startswith("..")
    ]


def test_no_module_under_vacquery_imports_vacd_even_inside_a_function() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 9  # the walk really found the package
    problems = [problem for path in modules
                for problem in vacd_imports(path.read_text(encoding="utf-8"), str(path.relative_to(REPOSITORY)))]
    assert problems == []


@pytest.mark.parametrize("source", [
    "def f():\n    from vacd.config import load_config\n",
    "def f():\n    import vacd.proxy\n",
    "if True:\n    from vacd import MANAGER_VERSION\n",
    "import importlib\nimportlib.import_module('vacd.accounting')\n",
    "__import__('vacd')\n",
    "from ..vacd import errors\n",
])
def test_the_rule_sees_every_kind_of_import_of_vacd(source: str) -> None:
    assert vacd_imports(source, "example.py") != []


def test_the_rule_lets_vacquery_import_itself_and_the_standard_library() -> None:
    source = "import json\nfrom vacquery.codec import decode\nfrom . import messages\ndef f():\n    import socket\n"
    assert vacd_imports(source, "example.py") == []


@pytest.mark.allow_commands(sys.executable)
def test_importing_every_vacquery_module_loads_no_vacd_module() -> None:
    names = sorted("vacquery." + path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    probe = f"import sys, json\nfor name in {names!r}:\n    __import__(name)\n" \
            "print(json.dumps(sorted(m for m in sys.modules if m == 'vacd' or m.startswith('vacd.'))))\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPOSITORY, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
