"""Every Redis call has a timeout (NEXES_REDIS_TIMEOUT): the Dramatiq broker, the
scheduler's lock, the health probe and the revocation check each fail within it against a
Redis that accepts connections and never answers.

The silent server is a fake: a real TCP listener that accepts and stays silent, a fault
the real Redis cannot produce on demand (a stopped Redis refuses connections at once;
SIGSTOP-ing the stack's Redis would stall every other test).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from nexes.jobs import runtime, scheduler
from nexes.settings import Settings

TIMEOUT = 0.5
SLACK = 2.0  # the call may take the timeout and some scheduling time, never much more


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """redis:// URL of a listener that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def timed(call: object) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()  # type: ignore[operator]
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_the_broker_fails_within_the_timeout_against_a_silent_redis(silent_redis: str) -> None:
    broker = runtime.make_broker(silent_redis, TIMEOUT)
    error, took = timed(broker.client.ping)
    assert isinstance(error, redis.TimeoutError), error
    assert took < TIMEOUT + SLACK


def test_the_live_broker_has_the_settings_timeout(settings: Settings) -> None:
    kwargs = runtime.broker.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == runtime.settings.redis_timeout
    assert runtime.broker.client.ping() is True  # and the real Redis still answers through it


def test_the_scheduler_stops_with_a_timeout_error_instead_of_hanging(settings: Settings, silent_redis: str) -> None:
    stop = threading.Event()
    silent = replace(settings, redis_url=silent_redis, redis_timeout=TIMEOUT)
    outcome: list[tuple[BaseException | None, float]] = []
    thread = threading.Thread(target=lambda: outcome.append(timed(lambda: scheduler.run(silent, stop))), daemon=True)
    thread.start()
    thread.join(TIMEOUT + SLACK + 5)
    stop.set()
    assert outcome, "the scheduler hung on a silent Redis"
    error, took = outcome[0]
    assert isinstance(error, redis.TimeoutError), error
    assert took < TIMEOUT + SLACK


async def test_the_health_probe_reports_a_timeout_within_it(settings: Settings, silent_redis: str) -> None:
    from nexes.http.health import RedisCheck

    check = RedisCheck(replace(settings, redis_url=silent_redis, redis_timeout=TIMEOUT))
    started = time.monotonic()
    report = await check.probe()
    assert time.monotonic() - started < TIMEOUT + SLACK
    assert report["reachable"] is False
    assert "TIMEOUT" in str(report["error"]).upper(), report
