"""Search actors: the outbox sync (after writes, and swept on a schedule), the reindex,
and the daily drift check. All take no arguments and re-read everything: safe twice.
Writers ask for a sync with request_sync (after_commit on the API's event loop)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import dramatiq
import typesense

from nexes.db.connect.worker import worker_pool
from nexes.jobs.runtime import settings

log = logging.getLogger(__name__)
QUEUE = "search"
T = TypeVar("T")
_client: typesense.Client | None = None
_client_lock = threading.Lock()


def client() -> typesense.Client:
    """The worker process's client for syncs: short timeouts, since a sync holds its claim
    transaction open while it writes (the worker role's idle-in-transaction timeout is 60 s)."""
    global _client
    with _client_lock:
        if _client is None:
            from nexes.search.client import sync_client

            _client = sync_client(settings, timeout=10.0, retries=1)
        return _client


# No retries: a failed sync leaves its rows in the outbox, and the next trigger or the
# sweep (every NEXES_SEARCH_SWEEP_SECONDS) runs it again.
@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=120_000)
def sync_search() -> None:
    """Drain the search outbox into Typesense."""
    from nexes.search.sync import drain

    report = drain(worker_pool(settings), client(), settings.typesense_collection, batch=settings.search_sync_batch)
    if report.batches:
        log.info(
            "search sync: %d upserted, %d deleted, %d failed, %d outbox rows done",
            report.upserted,
            report.deleted,
            report.failed,
            report.rows,
        )


def request_sync() -> None:
    """Ask the workers to sync search now, after a committed write; never fails the caller
    (the outbox keeps the change, and the scheduled sweep catches a lost message)."""
    try:
        sync_search.send()
    except Exception as exc:
        log.warning("search: could not request a sync (%s); the sweep will catch up", exc)


def after_commit(result: T) -> T:
    """request_sync without waiting for the broker (API side); returns `result` as is."""
    asyncio.get_running_loop().run_in_executor(None, request_sync)
    return result


REINDEX_EVERY = 300.0  # seconds between attempts at an asked-for reindex (db.search.REINDEX_WANTED)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=120_000)
def sweep_search() -> None:
    """The scheduled sweep: drain, and start a reindex that was asked for."""
    from nexes.db.search import reindex_wanted

    sync_search()
    with worker_pool(settings).connection() as conn:
        wanted = reindex_wanted(conn, REINDEX_EVERY)
    if wanted:
        reindex_search.send()


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=30_000, max_backoff=600_000, time_limit=6 * 3_600_000)
def reindex_search() -> None:
    """Build a new collection from a replica and swap the alias (a no-op while another runs)."""
    from nexes.search.client import sync_client
    from nexes.search.reindex import ReindexBusy, reindex

    try:
        reindex(settings, sync_client(settings), progress=_progress_log())
    except ReindexBusy:
        log.info("reindex: another run is in progress; nothing to do")


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=60_000, max_backoff=3_600_000, time_limit=600_000)
def check_search_drift() -> None:
    """Compare Typesense with PostgreSQL and queue repairs, then sync them."""
    from nexes.search.drift import check

    with worker_pool(settings).connection() as conn:
        report = check(conn, client(), settings.typesense_collection)
    if report.queued:
        sync_search.send()


def _progress_log(every: float = 10.0) -> Callable[[int, int], None]:
    """The reindex's progress in the worker's log, every `every` seconds (`nexes reindex`
    draws a bar instead; /api/health shows the run's count)."""
    last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= every:
            last = time.monotonic()
            log.info("reindex: %d of about %d documents (%.0f%%)", done, total, 100 * done / max(total, 1))

    return progress
