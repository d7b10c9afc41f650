"""Every benchmark module imports: `python -m bench.run X` loads its module only when X is
asked for, so a name moved between bench modules would otherwise break a benchmark
without failing any test (bench.telemetry once imported a constant bench.run had lost)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def test_the_bench_modules_are_found() -> None:
    assert {"run", "api", "auth", "bulkhead", "telemetry", "drills"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_a_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
