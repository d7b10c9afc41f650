"""The streaming replica: the app's lag monitor sped up, replay paused, replay caught up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import psycopg

from nexes.settings import Settings
from tests.support.databases import superuser_url
from tests.support.waits import eventually, wait_for


def fast(settings: Settings, **changes: object) -> Settings:
    """The monitor probing every 0.2 s, a 1 s lag threshold (unless told otherwise)."""
    return replace(settings, **{"replica_probe_interval": 0.2, "replica_max_lag": 1.0, **changes})  # type: ignore[arg-type]


@contextmanager
def replay_paused(settings: Settings) -> Iterator[None]:
    url = superuser_url(settings.replica_admin_urls[0])  # cluster-wide; "postgres" always exists
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")


def monitor_of(c: httpx.AsyncClient) -> Any:
    """The replica monitor of the app behind a `client_for` client."""
    return c.app.state.monitor  # type: ignore[attr-defined]


async def health_detail(c: httpx.AsyncClient) -> dict[str, Any]:
    """GET /api/health/detail (admin) after a monitor round of now: health shows the
    monitor's last round, so a test that just changed something runs one first."""
    await monitor_of(c).refresh()
    answer = await c.get("/api/health/detail")
    assert answer.status_code in (200, 503), answer.text
    body: dict[str, Any] = answer.json()
    return body


async def wait_for_state(c: httpx.AsyncClient, state: str, timeout: float) -> float:
    """Until the app's monitor calls the first replica `state`; returns the seconds that took."""
    started = time.monotonic()
    if not await eventually(lambda: monitor_of(c).status[0].state == state, timeout, 0.05):
        raise AssertionError(f"replica stayed {monitor_of(c).status[0].state}, wanted {state}")
    return time.monotonic() - started


def wait_for_replica(settings: Settings, timeout: float = 30.0) -> None:
    """Until the replica has replayed everything the primary has written so far (the app
    reads from it). The database may be new: a replica behind (replay waits on a
    conflicting query up to max_standby_streaming_delay) may not have created it yet."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone() or ("",)
    url = (settings.replica_admin_urls or settings.replica_urls)[0]
    deadline = time.monotonic() + timeout
    try:
        replica = wait_for(
            lambda: psycopg.connect(url, autocommit=True), timeout, 0.1, ignoring=(psycopg.OperationalError,)
        )
    except psycopg.OperationalError as exc:
        raise AssertionError(f"the replica has not made the database in {timeout:.0f} s: {exc}") from exc
    with replica:

        def replayed() -> bool:
            return replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone() == (True,)

        remaining = max(0.0, deadline - time.monotonic())
        assert wait_for(replayed, remaining, 0.05), f"the replica did not catch up in {timeout:.0f} s"


async def replica_in_rotation(c: httpx.AsyncClient, settings: Settings, timeout: float = 60.0) -> None:
    """Until the app's monitor has the replica back in rotation: analyst work (exports,
    reports) never runs on the primary, and a replica still replaying a heavy test's WAL
    on a loaded machine is out of rotation (lagging) for as long as it is behind."""
    wait_for_replica(settings, timeout)
    monitor = monitor_of(c)
    deadline = time.monotonic() + timeout
    while not monitor.usable(0) and time.monotonic() < deadline:
        await monitor.refresh()
        await asyncio.sleep(0.2)
    assert monitor.usable(0), f"the replica stayed out of rotation: {monitor.describe(0)}"
