"""A scheduler leading in a thread of the test's own process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from nexes.jobs import scheduler
from nexes.settings import Settings
from tests.support.waits import wait_for


@contextmanager
def leading_scheduler(settings: Settings) -> Iterator[tuple[redis.Redis, threading.Thread]]:
    """(Redis, the leader's thread) once the leader holds the lock; afterwards the leader is
    stopped and the lock deleted, whoever holds it."""
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(scheduler.LOCK_NAME)
    stop = threading.Event()
    leader = threading.Thread(target=scheduler.run, args=(settings, stop), daemon=True)
    leader.start()
    try:
        assert wait_for(lambda: client.get(scheduler.LOCK_NAME) is not None), "the scheduler did not take the lead"
        yield client, leader
    finally:
        stop.set()
        leader.join(timeout=20)
        client.delete(scheduler.LOCK_NAME)
