"""Crash test: a 20k-row import under real Dramatiq workers that are SIGKILLed at random
moments, again and again, and restarted; recovery comes from the lease and the
scheduler's sweep. The result must equal a clean single run of the same file.

Test settings that make recovery fast (production: 20 s lease, 10 s sweep, 5,000
orders per chunk): NEXES_IMPORT_LEASE_SECONDS=2, NEXES_IMPORT_SWEEP_SECONDS=1 and
NEXES_IMPORT_CHUNK_ORDERS=25 (many small checkpoints, so a kill lands mid-job).
The workers, the scheduler and this test use a Redis database of their own (db 7), and
the broker NEXES_BROKER_URL names (Redis db 7, or RabbitMQ under `make test-rabbitmq`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.gen_import import generate_csv
from nexes.db.invariants import check_all
from nexes.settings import Settings
from tests.support.brokers import empty, send
from tests.support.databases import drop_database
from tests.support.processes import Processes
from tests.support.workers import environ, fresh, job_state, store

ORDERS = 6_800  # about 20,000 rows
KILLS = 10


@pytest.fixture(scope="module")
def import_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "orders.csv"
    rows = generate_csv(path, ORDERS, prefix="CRASH", seed=7)
    assert rows >= 20_000
    return path


def business_data(settings: Settings, before: dict[str, int]) -> dict[str, Any]:
    """What must not depend on crashes: orders, lines, stock deltas, ledger per line."""
    with psycopg.connect(settings.admin_url) as conn:
        orders = conn.execute(
            "SELECT o.sod_number, o.created_at, c.code, o.status::text, o.description, o.currency, o.total_amount "
            "FROM service_order AS o JOIN customer AS c ON c.id = o.customer_id "
            "WHERE o.sod_number LIKE 'CRASH-%' ORDER BY 1"
        ).fetchall()
        lines = conn.execute(
            "SELECT o.sod_number, l.line_no, s.sku, l.quantity, l.unit_price FROM service_order_line AS l "
            "JOIN service_order AS o ON o.id = l.order_id AND o.created_at = l.created_at "
            "JOIN stock_item AS s ON s.id = l.stock_item_id WHERE o.sod_number LIKE 'CRASH-%' ORDER BY 1, 2"
        ).fetchall()
        ledger = conn.execute(
            "SELECT sod_number, line_no, sum(quantity) FROM stock_movement WHERE sod_number LIKE 'CRASH-%' "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        on_hand = {sku: int(q) - before[sku] for sku, q in conn.execute("SELECT sku, on_hand FROM stock_item")}
        duplicates = conn.execute(
            "SELECT count(*) FROM (SELECT sod_number, line_no, stock_item_id, count(*) FROM stock_movement "
            "WHERE sod_number LIKE 'CRASH-%' AND kind = 'CONSUMPTION' GROUP BY 1, 2, 3 HAVING count(*) > 1) AS d"
        ).fetchone()
        assert check_all(conn) == []
    return {"orders": orders, "lines": lines, "ledger": ledger, "on_hand": on_hand, "dup": duplicates}


def on_hand_now(settings: Settings) -> dict[str, int]:
    with psycopg.connect(settings.admin_url) as conn:
        return {sku: int(q) for sku, q in conn.execute("SELECT sku, on_hand FROM stock_item")}


def activity_sampler(settings: Settings, needle: str, seen: threading.Event, stop: threading.Event) -> None:
    """Watch pg_stat_activity for the worker's SQL carrying the upload's request id."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        while not stop.is_set() and not seen.is_set():
            row = conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE usename = 'nexes_worker' AND query LIKE %s LIMIT 1",
                [f"%request_id='{needle}'%"],
            ).fetchone()
            if row:
                seen.set()
            time.sleep(0.02)


@pytest.fixture
def databases(template_settings: Settings) -> Iterator[tuple[Settings, Settings]]:
    names = ("nexes_t_crash", "nexes_t_crash_clean")
    yield fresh(template_settings, names[0]), fresh(template_settings, names[1])
    for name in names:
        drop_database(template_settings.admin_url, name)


def test_import_survives_repeated_sigkills_and_equals_a_clean_run(
    databases: tuple[Settings, Settings], import_file: Path, tmp_path: Path
) -> None:
    crashed, clean = databases
    empty(crashed)

    # The reference: the same file, one clean run, in a database seeded the same way.
    from nexes.jobs.imports_runner import run

    clean_before = on_hand_now(clean)
    clean_job = store(clean, import_file, "clean-run")
    assert run(clean_job, clean) == "SUCCEEDED"
    expected = business_data(clean, clean_before)
    assert len(expected["orders"]) == ORDERS

    request_id = "crash-test-upload-0001"
    before = on_hand_now(crashed)
    job_id = store(crashed, import_file, request_id)
    procs = Processes(environ("nexes_t_crash"), tmp_path)
    seen_sql, stop_sampling = threading.Event(), threading.Event()
    sampler = threading.Thread(target=activity_sampler, args=(crashed, request_id, seen_sql, stop_sampling))
    sampler.start()
    recoveries: list[float] = []
    kills = 0
    rng = random.Random(4)
    try:
        procs.start_scheduler()
        procs.start_worker()
        from nexes.jobs.imports import run_import

        send(crashed, run_import.message_with_options(args=(job_id,), nexes_request_id=request_id))
        deadline = time.monotonic() + 600
        claimed_attempts = 0  # the job's claim count when it was last seen claimed (or killed)
        killed_at: float | None = None
        while time.monotonic() < deadline:
            status, attempts, _, _ = job_state(crashed, job_id)
            if status not in ("QUEUED", "RUNNING"):
                break
            if attempts > claimed_attempts:  # a worker has (re)claimed the job: it is running
                if killed_at is not None:
                    recoveries.append(time.monotonic() - killed_at)
                    killed_at = None
                claimed_attempts = attempts
                if kills < KILLS:
                    time.sleep(rng.uniform(0.05, 0.8))  # a random moment of its work
                    procs.kill_worker()
                    kills += 1
                    killed_at = time.monotonic()
                    claimed_attempts = job_state(crashed, job_id)[1]
                    procs.start_worker()
                    continue
            time.sleep(0.05)
        status, attempts, staged, processed = job_state(crashed, job_id)
    finally:
        stop_sampling.set()
        sampler.join()
        procs.stop()
        empty(crashed)

    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    assert status == "SUCCEEDED", (status, logs[-3000:])
    assert kills == KILLS, f"the job finished after {kills} kills"
    assert recoveries and max(recoveries) < 60, recoveries
    assert processed == staged >= 20_000
    actual = business_data(crashed, before)
    assert actual["dup"] == (0,)
    for key in ("orders", "lines", "ledger", "on_hand"):
        assert actual[key] == expected[key], key
    # The upload's request id reached the worker's logs (JSON lines) and its SQL.
    assert f'"request_id":"{request_id}"' in logs
    assert seen_sql.is_set()
    print(f"recoveries after SIGKILL: max {max(recoveries):.1f}s, mean {sum(recoveries) / len(recoveries):.1f}s")
