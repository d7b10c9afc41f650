"""The stack's services (infra/stack), stopped and started by tests."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

from tests.support.waits import wait_until_served

ROOT = Path(__file__).resolve().parents[2]


def stack(*args: str) -> None:
    """`infra/stack ARGS`, failing the test if it fails."""
    subprocess.run([str(ROOT / "infra" / "stack"), *args], check=True, cwd=ROOT, capture_output=True, timeout=180)


@contextmanager
def stopped(service: str, url: str) -> Iterator[None]:
    """`service` stopped for the block, then started and served again at `url` (PgBouncer
    holds back clients for a while after failed server logins), so the next test starts
    from a settled stack."""
    stack("down", service)
    try:
        yield
    finally:
        stack("up", service)
        wait_until_served(url, timeout=60, interval=0.5, connect_timeout=3)


def layout() -> Any:
    """infra/stack's Layout of the running stack (its state directory and ports), from the
    same variables the script reads; the script is loaded as a module (it has no .py)."""
    loader = SourceFileLoader("nexes_infra_stack", str(ROOT / "infra" / "stack"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(loader.name, module)
    loader.exec_module(module)
    return sys.modules[loader.name].layout_from_env()


def pid_of(name: str) -> int:
    """The pid infra/stack recorded for a service it runs (typesense2, rabbitmq, redis...)."""
    return int((layout().run / f"{name}.pid").read_text().split()[0])
