"""`nexes scheduler`: APScheduler enqueues the periodic actors; one scheduler is active.

Leadership is a Redis lock (redis-py's `Lock`) with a TTL that the leader keeps
extending; a second scheduler blocks on the lock and takes over once the first
stops extending it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from types import FrameType

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

from nexes.settings import Settings

log = logging.getLogger(__name__)
LOCK_NAME = "nexes:scheduler:leader"
LOCK_TTL = 30.0


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Wait to become the leader, then run the schedule until SIGTERM/SIGINT or `stop`."""
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before anything is logged: a SIGTERM just after "leader" must stop it cleanly too,
    # releasing the lock (seen in a test that stopped it at that moment).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    from nexes.jobs.runtime import redis_pool

    # Every lock call bounded by NEXES_REDIS_TIMEOUT: a silent Redis stops the scheduler with
    # redis.TimeoutError (its supervisor restarts it) instead of hanging it.
    client = redis.Redis(connection_pool=redis_pool(settings.redis_url, settings.redis_timeout))
    lock = client.lock(LOCK_NAME, timeout=LOCK_TTL, thread_local=False)
    log.info("scheduler waiting for leadership")
    while not stop.is_set():
        if lock.acquire(blocking=True, blocking_timeout=1.0):
            break
    else:
        return
    log.info("scheduler is the leader")
    scheduler = BackgroundScheduler(timezone="UTC")
    add_periodic_jobs(scheduler, settings)

    held_at = time.monotonic()  # when the lock was last known to be ours

    def keep_lead() -> None:
        # Redis away (a restart) is survived while the lock may still be ours; once it may
        # have expired, or another scheduler holds it (LockNotOwnedError: it expired during
        # an outage and a standby took it), this one stops rather than lead beside the new
        # leader and send every periodic job twice. Its supervisor starts it again, to wait.
        nonlocal held_at
        try:
            held = bool(lock.extend(LOCK_TTL, replace_ttl=True))
        except redis.exceptions.LockError:
            held = False
        except redis.exceptions.RedisError as exc:
            if time.monotonic() - held_at < LOCK_TTL:
                log.warning("scheduler could not renew its leadership (%s); retrying", type(exc).__name__)
                return
            held = False
        if not held:
            log.error("scheduler lost leadership; stopping")
            stop.set()
            return
        held_at = time.monotonic()

    scheduler.add_job(keep_lead, "interval", seconds=LOCK_TTL / 3, id="leadership")

    # The schedule runs on APScheduler's own thread; this one waits for the stop and shuts it
    # down. (A BlockingScheduler stopped from another thread raced its start: a SIGTERM just
    # after "leader" found it not running yet, or broke its first round of jobs.)
    scheduler.start()
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=False)
        with contextlib.suppress(redis.exceptions.LockError):  # expired or taken over
            lock.release()


def add_periodic_jobs(scheduler: BaseScheduler, settings: Settings) -> None:
    """Every periodic job, each sent to the workers on its cadence (docs/operations.md,
    "The schedule", says what each does late; tests/test_schedule.py holds this list)."""
    from nexes.jobs.maintenance import (  # the broker is set up on import
        archive_quarters,
        maintain_partitions,
        purge_imports,
        reconcile_stats,
        sweep_imports,
    )
    from nexes.jobs.search import sweep_search

    scheduler.add_job(maintain_partitions.send, "cron", hour=3, minute=0, id="partitions")
    scheduler.add_job(maintain_partitions.send, "date", id="partitions-at-start")
    scheduler.add_job(reconcile_stats.send, "cron", hour=2, minute=30, id="reconcile")
    scheduler.add_job(archive_quarters.send, "cron", hour=3, minute=30, id="archive")
    # Import recovery: a dead worker's job is sent again once its lease runs out.
    scheduler.add_job(sweep_imports.send, "interval", seconds=settings.import_sweep_seconds, id="import-sweep")
    scheduler.add_job(purge_imports.send, "cron", minute=15, id="import-purge")
    # Search: the outbox sweep catches what a lost trigger missed; the reconciliation
    # sends the search drift check when it is done.
    scheduler.add_job(sweep_search.send, "interval", seconds=settings.search_sweep_seconds, id="search-sweep")
