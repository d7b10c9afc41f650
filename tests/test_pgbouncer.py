"""PgBouncer in transaction mode: 1000 client connections on a few server connections,
and timeouts that still fire through it."""

from __future__ import annotations

import asyncio
import resource

import psycopg
import pytest

from nexes.db.connect.conninfo import for_role
from nexes.settings import Settings

CLIENTS = 1_000
QUERIES = 3
MAX_SERVER_CONNECTIONS = 40


@pytest.fixture
def many_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CLIENTS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))


async def test_1000_clients_through_pgbouncer_on_at_most_40_server_connections_with_no_errors(
    settings: Settings, many_files: None
) -> None:
    url = for_role(settings.primary_url, settings, "nexes_api", application_name="nexes-bouncer-test")
    dbname = psycopg.conninfo.conninfo_to_dict(settings.admin_url)["dbname"]
    errors: list[BaseException] = []
    peak = 0
    done = asyncio.Event()

    async def client(i: int, ready: asyncio.Barrier) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None)
        except BaseException as exc:
            errors.append(exc)
            await ready.wait()
            return
        async with conn:
            await ready.wait()  # all 1000 are connected at once before any query runs
            try:
                for q in range(QUERIES):
                    cur = await conn.execute("SELECT %s::int + %s::int, pg_sleep(0.005)", [i, q])
                    row = await cur.fetchone()
                    assert row is not None and row[0] == i + q
            except BaseException as exc:
                errors.append(exc)

    async def sample() -> None:
        nonlocal peak
        async with await psycopg.AsyncConnection.connect(settings.admin_url, autocommit=True) as admin:
            while not done.is_set():
                cur = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = 'nexes_api'", [dbname]
                )
                row = await cur.fetchone()
                peak = max(peak, row[0] if row else 0)
                await asyncio.sleep(0.05)

    ready = asyncio.Barrier(CLIENTS)
    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*(client(i, ready) for i in range(CLIENTS)))
    done.set()
    await sampler
    assert errors == []
    assert 0 < peak <= MAX_SERVER_CONNECTIONS


def test_statement_timeouts_fire_through_pgbouncer(settings: Settings) -> None:
    url = for_role(settings.primary_url, settings, "nexes_api")
    with psycopg.connect(url, prepare_threshold=None) as conn:
        (role_timeout,) = conn.execute("SHOW statement_timeout").fetchone() or ("",)
        assert role_timeout == f"{int(settings.roles['nexes_api'].statement_timeout)}s"
        conn.execute("SET LOCAL statement_timeout = '200ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(2)")
