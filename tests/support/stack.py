"""The stack's services (infra/stack), stopped and started by tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
