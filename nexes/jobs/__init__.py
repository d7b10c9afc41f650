"""Dramatiq actors. `dramatiq nexes.jobs` imports this package to run workers: it loads
every actor module, and those configure the broker (nexes.jobs.runtime)."""

from __future__ import annotations

from nexes.jobs import imports, maintenance, search
from nexes.jobs.runtime import broker

__all__ = ["broker", "imports", "maintenance", "search"]
