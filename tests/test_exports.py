"""GET /api/exports/service-orders.csv on the real replica: the import's format, filters,
round trip through the importer, and a client that hangs up cancels the query."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from typing import Any

import httpx
import psycopg

from nexes.imports.parse import COLUMNS
from nexes.jobs import imports_runner as import_runner
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.databases import superuser_url
from tests.support.imports import close_worker_pool, job_row, store_async
from tests.support.replicas import replica_in_rotation
from tests.support.waits import eventually, wait_for

URL = "/api/exports/service-orders.csv"


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_the_export_has_the_imports_columns_one_row_per_line_and_utc_times(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    await replica_in_rotation(app_client, seeded)
    resp = await app_client.get(URL, params=[("status", "OPEN"), ("status", "DRAFT")])
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = rows_of(resp.content.decode("utf-8"))
    assert tuple(rows[0]) == COLUMNS
    with psycopg.connect(seeded.admin_url) as conn:
        (lines,) = conn.execute(
            "SELECT count(*) FROM service_order o JOIN service_order_line l "
            "ON l.order_id = o.id AND l.created_at = o.created_at WHERE o.status IN ('OPEN', 'DRAFT')"
        ).fetchone() or (0,)
    assert len(rows) - 1 == lines > 0
    assert all(r[3] in ("OPEN", "DRAFT") for r in rows[1:])
    assert all(r[1].endswith("Z") and "T" in r[1] for r in rows[1:])


async def test_bad_parameters_are_bad_user_input(app_client: httpx.AsyncClient) -> None:
    for params in ({"status": "LOST"}, {"createdFrom": "2024-01-01T00:00:00"}, {"colour": "red"}):
        resp = await app_client.get(URL, params=params)
        assert resp.status_code == 400, params
        assert resp.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_an_export_imports_back_with_no_changes(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    await replica_in_rotation(app_client, seeded)  # an export runs only on a replica in rotation
    resp = await app_client.get(URL)
    assert resp.status_code == 200
    orders = {r[0] for r in rows_of(resp.text)[1:]}
    job = await store_async(seeded, resp.content, "export.csv")
    try:
        outcome = await asyncio.to_thread(import_runner.run, job, seeded)
    finally:
        close_worker_pool()
    with psycopg.connect(seeded.admin_url, autocommit=True) as db:
        row = job_row(db, job)
    assert outcome and row["status"] == "SUCCEEDED", row
    assert (row["inserted"], row["updated"], row["failed"]) == (0, 0, 0)
    assert row["unchanged"] == len(orders)


async def test_a_client_that_hangs_up_leaves_no_query_on_the_replica(seeded: Settings) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(seeded.admin_url)["dbname"]
    replica = superuser_url(seeded.replica_admin_urls[0])
    # A lock on the primary replays on the standby: the COPY waits there, visibly.
    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent and not gone.is_set():
            await asyncio.sleep(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    lock = psycopg.connect(superuser_url(seeded.admin_url, dbname))
    try:  # the lock is released whatever fails below: a held lock would stall every later test
        lock.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
        _flush_wal(superuser_url(seeded.admin_url, dbname))
        _wait_for_replayed_lock(superuser_url(seeded.replica_admin_urls[0], dbname))
        async with client_for(seeded) as client:
            app = client.app  # type: ignore[attr-defined]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": URL,
                "raw_path": URL.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"nexes.test"), (b"authorization", client.headers["authorization"].encode())],
                "client": ("127.0.0.1", 1),
                "server": ("nexes.test", 80),
                "app": app,
            }
            task = asyncio.ensure_future(app(scope, receive, send))
            running = await _copy_running(replica)
            assert running, f"the export never reached the replica: {task.done() and task.exception()!r}"
            started = time.monotonic()
            gone.set()
            await asyncio.wait_for(task, 10)
            deadline = time.monotonic() + 5
            while await _copy_running(replica, wait=0) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not await _copy_running(replica, wait=0)
            assert time.monotonic() - started < 3
    finally:
        lock.rollback()
        lock.close()


def _flush_wal(url: str) -> None:
    """The lock's WAL record sits in a partly filled page that the WAL writer may hold back
    for up to 15 s on an idle server; a committed transaction with an xid flushes it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_current_xact_id()")


def _wait_for_replayed_lock(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:

        def held() -> bool:
            return bool(
                conn.execute(
                    "SELECT 1 FROM pg_locks WHERE relation = 'customer'::regclass AND mode = 'AccessExclusiveLock'"
                ).fetchone()
            )

        if not wait_for(held, 10, 0.05):
            raise AssertionError("the lock never reached the replica")


async def _copy_running(url: str, wait: float = 10) -> bool:
    """Whether the export's COPY runs on the replica, waiting up to `wait` s for it."""

    def copying() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'nexes_analyst' "
                "AND state = 'active' AND query LIKE '%COPY%'"
            ).fetchone()
        return bool(row and row[0])

    return await eventually(copying, wait, 0.05)
