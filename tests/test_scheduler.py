"""The scheduler: exactly one is active; a second waits and takes over when the first stops."""

from __future__ import annotations

import threading
import time

import redis

from nexes.jobs import scheduler
from nexes.settings import Settings


def wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_second_scheduler_waits_until_the_first_stops(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(scheduler.LOCK_NAME)
    first_stop, second_stop = threading.Event(), threading.Event()
    first = threading.Thread(target=scheduler.run, args=(settings, first_stop), daemon=True)
    first.start()
    assert wait_for(lambda: client.get(scheduler.LOCK_NAME) is not None)
    leader_token = client.get(scheduler.LOCK_NAME)

    second = threading.Thread(target=scheduler.run, args=(settings, second_stop), daemon=True)
    second.start()
    time.sleep(1.5)
    assert second.is_alive()
    assert client.get(scheduler.LOCK_NAME) == leader_token  # the first still leads; the second waits

    first_stop.set()
    first.join(timeout=20)
    assert not first.is_alive()
    assert wait_for(lambda: client.get(scheduler.LOCK_NAME) not in (None, leader_token))  # the second took over
    second_stop.set()
    second.join(timeout=20)
    assert not second.is_alive()
    assert client.get(scheduler.LOCK_NAME) is None  # released on a clean stop
