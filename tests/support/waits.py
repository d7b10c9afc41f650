"""Waiting for something to become true: one loop, and the waits built on it."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` every `interval` s until it returns something truthy or `timeout` s
    have passed (it is called at least once); returns its last result.

    An exception of a type in `ignoring` counts as "not yet"; if the last call raised one,
    running out of time raises it again.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except ignoring:
            if time.monotonic() > deadline:
                raise
        else:
            if result or time.monotonic() > deadline:
                return result
        time.sleep(interval)


async def eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T], timeout: float = 15.0, interval: float = 0.1
) -> T:
    """`wait_for` for a test's event loop: `check` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


def wait_until_served(url: str, timeout: float = 15.0, interval: float = 0.25, connect_timeout: int = 0) -> None:
    """Until a query succeeds at `url`: after a failed server login PgBouncer refuses that
    (database, role) pool for `server_login_retry` seconds, and a restarted server takes a
    while to accept connections. Raises the last error if it never does."""

    def answers() -> bool:
        with psycopg.connect(url, prepare_threshold=None, connect_timeout=connect_timeout or None) as conn:
            conn.execute("SELECT 1")
        return True

    wait_for(answers, timeout, interval, ignoring=(psycopg.Error,))


def waiting_for_lock(conn: psycopg.Connection, pid: int) -> bool:
    """Whether backend `pid` waits for a lock right now."""
    row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return row == ("Lock",)


def wait_for_lock_wait(conn: psycopg.Connection, pid: int, what: str, timeout: float = 10.0) -> None:
    """Until backend `pid` waits for a lock; fails the test with `what` if it never does."""
    assert wait_for(lambda: waiting_for_lock(conn, pid), timeout, 0.02), what
