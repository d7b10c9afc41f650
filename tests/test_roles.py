"""Timeouts and connection ceilings live on the roles and hold through PgBouncer."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from psycopg import errors

from nexes.db.connect.conninfo import for_role, with_database
from nexes.settings import Settings
from tests.support.databases import drop_database, recreate_database, superuser_url


def test_role_statement_timeout_cancels_a_longer_sleep_through_pgbouncer(settings: Settings) -> None:
    # A database of its own, so the short timeout (ALTER ROLE ... IN DATABASE) touches nothing else.
    name = f"nexes_t_timeout_{uuid.uuid4().hex[:6]}"
    recreate_database(settings.admin_url, name)
    try:
        with psycopg.connect(superuser_url(settings.admin_url, name), autocommit=True) as conn:
            conn.execute(f"ALTER ROLE nexes_api IN DATABASE {name} SET statement_timeout = '500ms'")
        url = for_role(with_database(settings.primary_url, name), settings, "nexes_api")
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            started = time.monotonic()
            with pytest.raises(errors.QueryCanceled, match="statement timeout"):
                conn.execute("SELECT pg_sleep(3)")
            assert time.monotonic() - started < 2.5
    finally:
        drop_database(settings.admin_url, name)


def test_api_role_default_statement_timeout_is_the_configured_one(settings: Settings) -> None:
    url = for_role(settings.primary_url, settings, "nexes_api")
    with psycopg.connect(url, prepare_threshold=None) as conn:
        (value,) = conn.execute("SHOW statement_timeout").fetchone() or ("",)
    assert value == f"{int(settings.roles['nexes_api'].statement_timeout)}s"


def test_analyst_role_cannot_write(settings: Settings) -> None:
    url = for_role(settings.replica_urls[0], settings, "nexes_analyst")
    primary = for_role(settings.primary_url, settings, "nexes_analyst")
    for target in (url, primary):
        with (
            psycopg.connect(target, prepare_threshold=None) as conn,
            pytest.raises((errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege)),
        ):
            conn.execute("INSERT INTO customer (code, name) VALUES ('X1', 'x')")


def _direct(settings: Settings, role: str) -> str:
    # The primary itself, not PgBouncer: the admin URL's server with the role's user.
    return for_role(settings.admin_url, settings, role)


async def test_worker_connection_limit_holds_and_api_still_connects(settings: Settings) -> None:
    limit = settings.roles["nexes_worker"].connection_limit
    with psycopg.connect(superuser_url(settings.admin_url)) as su:
        (current,) = su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'nexes_worker'").fetchone() or (
            0,
        )

    # 1. Directly, one connection past the role's CONNECTION LIMIT is refused.
    held = [psycopg.connect(_direct(settings, "nexes_worker")) for _ in range(limit - current)]
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            psycopg.connect(_direct(settings, "nexes_worker"))
    finally:
        for conn in held:
            conn.close()

    # 2. Through PgBouncer, twice the limit of worker clients queue and all succeed,
    #    while the API role connects and answers at once.
    worker_url = for_role(settings.primary_url, settings, "nexes_worker")
    api_url = for_role(settings.primary_url, settings, "nexes_api")
    peak = 0

    async def worker_client() -> None:
        async with await psycopg.AsyncConnection.connect(worker_url, prepare_threshold=None) as conn:
            await conn.execute("SELECT pg_sleep(0.5)")

    async def sample_server_connections() -> None:
        nonlocal peak
        # autocommit: pg_stat_activity is a snapshot per transaction.
        async with await psycopg.AsyncConnection.connect(superuser_url(settings.admin_url), autocommit=True) as su:
            for _ in range(40):
                cur = await su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'nexes_worker'")
                row = await cur.fetchone()
                peak = max(peak, row[0] if row else 0)
                await asyncio.sleep(0.05)

    async def api_client() -> float:
        await asyncio.sleep(0.2)  # while the workers queue
        started = time.monotonic()
        async with await psycopg.AsyncConnection.connect(api_url, prepare_threshold=None) as conn:
            await conn.execute("SELECT 1")
        return time.monotonic() - started

    results = await asyncio.gather(
        *(worker_client() for _ in range(2 * limit)),
        sample_server_connections(),
        api_client(),
        return_exceptions=True,
    )
    errors_seen = [r for r in results if isinstance(r, BaseException)]
    assert errors_seen == []
    assert 0 < peak <= limit
    api_seconds = results[-1]
    assert isinstance(api_seconds, float)
    assert api_seconds < 0.5  # it never waited behind the queued workers' sleeps
