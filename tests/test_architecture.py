"""The package's import graph: no cycles, and import-linter's contracts (pyproject.toml) kept.

grimp counts every import: at module level, inside functions and under TYPE_CHECKING. A
function-level import hides a cycle from Python, not from this test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
# Cycles allowed for now, each by its modules (sorted) with its reason; at most two, and
# each must still exist (an exception that was fixed is removed from here).
ALLOWED_CYCLES: dict[frozenset[str], str] = {}
MAX_ALLOWED = 2


def import_cycles(graph: grimp.ImportGraph) -> Iterator[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on_stack:
                    low[module] = min(low[module], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        yield frozenset(component)


def describe(graph: grimp.ImportGraph, cycle: frozenset[str]) -> str:
    """Each import inside the cycle, with where it is, so the message says what to cut."""
    lines = [" <-> ".join(sorted(cycle))]
    for importer in sorted(cycle):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & cycle):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"    {importer} -> {imported} (line {detail['line_number']}: {detail['line_contents']})")
    return "\n".join(lines)


def test_import_cycles_are_the_listed_exceptions_only() -> None:
    graph = grimp.build_graph("nexes", cache_dir=None)
    cycles = set(import_cycles(graph))
    unexpected = [describe(graph, c) for c in sorted(cycles - ALLOWED_CYCLES.keys(), key=sorted)]
    assert not unexpected, "import cycles in nexes:\n" + "\n".join(unexpected)
    fixed = [sorted(c) for c in ALLOWED_CYCLES.keys() - cycles]
    assert not fixed, f"no longer cycles, remove them from ALLOWED_CYCLES: {fixed}"
    assert len(ALLOWED_CYCLES) <= MAX_ALLOWED


def test_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclepkg import b\n")
    (package / "b.py").write_text("def f():\n    from cyclepkg import c\n")
    (package / "c.py").write_text("import cyclepkg.a\n")
    (package / "d.py").write_text("import cyclepkg.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("cyclepkg", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert list(import_cycles(graph)) == [frozenset({"cyclepkg.a", "cyclepkg.b", "cyclepkg.c"})]


def test_import_contracts_are_kept() -> None:
    """The layers and forbidden contracts of [tool.importlinter], as `make lint` runs them."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
