"""Ask the workers to sync search now, after a committed write (the scheduled sweep
catches anything a lost message misses)."""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def request_sync() -> None:
    """Send the sync actor; never fails the caller (the outbox keeps the change)."""
    try:
        # Imported here: importing nexes.jobs configures the broker from the environment.
        from nexes.jobs.search import sync_search

        sync_search.send()
    except Exception as exc:
        log.warning("search: could not request a sync (%s); the sweep will catch up", exc)


def after_commit(result: T) -> T:
    """Request a sync without waiting for the broker (API side); returns `result` as is."""
    asyncio.get_running_loop().run_in_executor(None, request_sync)
    return result
