"""The tests' own layout: no test module imports another; shared fixtures live in
tests/conftest.py and shared helpers in tests/support/ (which imports no test module)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
SUPPORT_MODULES = sorted((TESTS / "support").glob("*.py"))


def is_test_module(name: str) -> bool:
    """Whether a dotted module name (absolute, or relative to tests/) names a test module."""
    parts = name.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and parts[0].startswith("test_")


def imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for every import in `tree`, at any depth; `from X import a, b`
    yields X.a and X.b too, since `from tests import test_x` imports a module."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}".lstrip(".")) for alias in node.names]
    return found


def imports_of_test_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.name}:{line}: {name}" for line, name in imported_modules(tree) if is_test_module(name)]


@pytest.mark.parametrize("path", TEST_MODULES + SUPPORT_MODULES, ids=lambda p: p.relative_to(TESTS).as_posix())
def test_no_test_module_or_helper_imports_a_test_module(path: Path) -> None:
    assert imports_of_test_modules(path) == []


def test_the_check_sees_every_form_of_importing_a_test_module(tmp_path: Path) -> None:
    path = tmp_path / "test_sample.py"
    path.write_text(
        "import tests.test_a\n"
        "from tests.test_b import helper\n"
        "from tests import test_c\n"
        "from .test_d import helper\n"
        "def f():\n"
        "    from tests.test_e import helper\n"
        "from tests.conftest import gql\n"
        "from tests.support.waits import wait_for\n"
    )
    found = {entry.split(": ")[1] for entry in imports_of_test_modules(path)}
    assert found == {
        "tests.test_a",
        "tests.test_b",
        "tests.test_b.helper",
        "tests.test_c",
        "test_d",
        "test_d.helper",
        "tests.test_e",
        "tests.test_e.helper",
    }


def test_the_db_fixture_is_defined_once_in_conftest() -> None:
    """A module with a database of its own overrides `db_settings`, never `db`."""
    defining = [
        path.name
        for path in [*TEST_MODULES, *SUPPORT_MODULES, TESTS / "conftest.py"]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "db"
    ]
    assert defining == ["conftest.py"]
