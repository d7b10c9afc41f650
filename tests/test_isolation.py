"""Isolation: while real Dramatiq workers are saturated by imports, the API keeps
answering reads and writes, on its own pools, without waiting on the workers'."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.gen_import import generate_csv
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.brokers import empty, send
from tests.support.databases import drop_database
from tests.support.processes import Processes
from tests.support.workers import environ, fresh, job_state, store

PAGE = "{ serviceOrders(first: 50) { edges { node { sodNumber status customer { name } lines { quantity } } } } }"
CREATE = """mutation($sod: String!) { createServiceOrder(input: {sodNumber: $sod, customerCode: "C000001",
  lines: [{sku: "SKU-00001", quantity: 1, unitPrice: "1.00"}]}) { serviceOrder { id } errors { code } } }"""


@pytest.fixture
def busy_db(template_settings: Settings) -> Iterator[Settings]:
    yield fresh(template_settings, "nexes_t_isolation")
    drop_database(template_settings.admin_url, "nexes_t_isolation")


async def test_api_answers_while_workers_are_saturated_by_imports(busy_db: Settings, tmp_path: Path) -> None:
    files = []
    for n in range(3):
        path = tmp_path / f"load-{n}.csv"
        generate_csv(path, 8_000, prefix=f"LOAD{n}", seed=n)
        files.append(path)
    env = environ("nexes_t_isolation")
    env["NEXES_IMPORT_CHUNK_ORDERS"] = "2000"
    empty(busy_db)
    from nexes.jobs.imports import run_import

    jobs = [store(busy_db, path, f"load-{n}") for n, path in enumerate(files)]
    procs = Processes(env, tmp_path)
    procs.start_worker()
    for job_id in jobs:
        send(busy_db, run_import.message(job_id))
    latencies: list[float] = []
    failures: list[object] = []
    worker_busy_samples = 0
    try:
        async with client_for(busy_db) as client:
            with psycopg.connect(busy_db.admin_url, autocommit=True) as su:
                deadline = time.monotonic() + 120
                n = 0
                while time.monotonic() < deadline and n < 300:
                    if not any(job_state(busy_db, job)[0] in ("QUEUED", "RUNNING") for job in jobs):
                        break
                    row = su.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'nexes_worker' AND state = 'active'"
                    ).fetchone()
                    worker_busy_samples += 1 if row and row[0] > 0 else 0
                    started = time.monotonic()
                    page, made = await asyncio.gather(gql(client, PAGE), gql(client, CREATE, {"sod": f"ISO-{n}"}))
                    latencies.append(time.monotonic() - started)
                    for body in (page, made):
                        if "errors" in body or (body["data"].get("createServiceOrder") or {}).get("errors"):
                            failures.append(body)
                    n += 1
    finally:
        procs.stop()
        empty(busy_db)
    assert failures == []
    assert worker_busy_samples >= 5, "the workers were really busy while the API was asked"
    assert len(latencies) >= 5
    # Generous: a collapse (waiting on a starved pool) would take the pool timeout (5 s).
    assert max(latencies) < 3.0, sorted(latencies)[-5:]
    assert all(job_state(busy_db, job)[0] == "SUCCEEDED" for job in jobs)
