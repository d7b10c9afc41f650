"""Dramatiq on either broker (NEXES_BROKER_URL): Redis, and RabbitMQ started by the stack.
Each test runs on both. A real worker process (`dramatiq nexes.jobs`) imports a stored
file; SIGKILLed twice mid-import it still ends SUCCEEDED with every order once and the
stock exact; a message queued while no worker runs survives a restart of the broker; and
/api/health reports the broker, with RabbitMQ stopped for real.

Recovery is made fast as in tests/test_import_crash.py (2 s lease, 1 s sweep, 25 orders a
chunk); the workers and this test use Redis db 7 for the scheduler's lock and rate limits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psycopg
import pytest

from bench.gen_import import generate_csv
from nexes.db.invariants import check_all
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.brokers import empty, send
from tests.support.databases import drop_database
from tests.support.processes import Processes
from tests.support.replicas import monitor_of
from tests.support.scheduler import leading_scheduler
from tests.support.stack import stack
from tests.support.waits import eventually, wait_for
from tests.support.workers import environ, fresh, job_state, store

ORDERS = 600
BROKERS = ("redis", "rabbitmq")


@pytest.fixture(scope="module")
def import_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("brokers") / "orders.csv"
    generate_csv(path, ORDERS, prefix="BRK", seed=11)
    return path


@pytest.fixture(params=BROKERS)
def broker_env(request: pytest.FixtureRequest, template_settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    """(broker, the workers' environment) on a fresh database, the broker's queues empty."""
    name = request.param
    db = f"nexes_t_broker_{name}"
    env = environ(db)
    if name == "rabbitmq":
        env["NEXES_BROKER_URL"] = request.getfixturevalue("rabbitmq")
    else:
        env.pop("NEXES_BROKER_URL", None)
    fresh(template_settings, db)
    settings = settings_of(env)
    empty(settings)
    yield name, env
    empty(settings)
    drop_database(template_settings.admin_url, db)


def enqueue(env: dict[str, str], job_id: int) -> None:
    """Send the import on the broker the environment names, as the API does."""
    from nexes.jobs.imports import run_import

    send(settings_of(env), run_import.message_with_options(args=(job_id,), nexes_request_id=f"broker-{job_id}"))


def settings_of(env: dict[str, str]) -> Settings:
    from nexes import settings as settings_module

    return settings_module.load(env)


def orders_once(settings: Settings) -> tuple[int, int]:
    """(orders imported, SOD numbers held more than once)."""
    with psycopg.connect(settings.admin_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT sod_number) FROM service_order WHERE sod_number LIKE 'BRK-%'"
        ).fetchone()
    assert row
    return int(row[0]), int(row[1])


def logs(log_dir: Path) -> str:
    """The tail of each process's log, for a failure's message."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(log_dir.glob("*.log")))


def finished(settings: Settings, job_id: int, timeout: float, log_dir: Path) -> str:
    done = wait_for(lambda: job_state(settings, job_id)[0] not in ("QUEUED", "RUNNING"), timeout=timeout, interval=0.2)
    assert done, f"the import was still {job_state(settings, job_id)} after {timeout:.0f}s\n{logs(log_dir)}"
    return job_state(settings, job_id)[0]


def invariants(settings: Settings) -> list[object]:
    with psycopg.connect(settings.admin_url) as conn:
        return list(check_all(conn))


def test_an_import_ends_once_and_exact_through_two_worker_sigkills(
    broker_env: tuple[str, dict[str, str]], import_file: Path, tmp_path: Path
) -> None:
    name, env = broker_env
    settings = settings_of(env)
    job_id = store(settings, import_file, f"broker-kill-{name}")
    procs = Processes(env, tmp_path)
    kills = 0
    try:
        procs.start_scheduler()
        procs.start_worker()
        enqueue(env, job_id)
        while kills < 2:
            attempts = job_state(settings, job_id)[1]
            assert wait_for(lambda a=attempts: job_state(settings, job_id)[1] > a, timeout=90, interval=0.05), (
                f"no worker took the job up after {kills} kill(s): {job_state(settings, job_id)}\n{logs(tmp_path)}"
            )
            time.sleep(0.3)  # into its work
            procs.kill_worker()
            kills += 1
            procs.start_worker()
        status = finished(settings, job_id, 180, tmp_path)
    finally:
        procs.stop()
    assert status == "SUCCEEDED", logs(tmp_path)
    assert orders_once(settings) == (ORDERS, 0)
    assert invariants(settings) == []


def test_a_queued_import_survives_a_restart_of_the_broker(
    broker_env: tuple[str, dict[str, str]], import_file: Path, tmp_path: Path
) -> None:
    name, env = broker_env
    settings = settings_of(env)
    job_id = store(settings, import_file, f"broker-restart-{name}")
    enqueue(env, job_id)
    time.sleep(1.2)  # Redis writes its append-only file every second
    stack("down", name)
    stack("up", name)
    procs = Processes(env, tmp_path)
    try:
        procs.start_worker()
        status = finished(settings, job_id, 180, tmp_path)
    finally:
        procs.stop()
    assert status == "SUCCEEDED", logs(tmp_path)
    assert orders_once(settings) == (ORDERS, 0)
    assert invariants(settings) == []


async def _short_status(client: httpx.AsyncClient) -> str | None:
    status = (await client.get("/api/health")).json()["status"]
    return status if status == "ok" else None


async def test_health_reports_rabbitmq_and_is_degraded_not_down_while_it_is_stopped(
    rabbitmq: str, seeded: Settings
) -> None:
    """The API's readiness names the broker whichever it is. RabbitMQ stopped for real: the
    detail says unreachable (a code, no address) and the short form "degraded" with 200,
    since reads and mutations go on (docs/operations.md, "The broker restarts"); started
    again, "ok" once a round reaches it."""
    settings = replace(seeded, broker_url=rabbitmq, redis_timeout=2.0)
    async with client_for(settings) as admin:
        monitor = monitor_of(admin)
        await monitor.refresh()
        detail = (await admin.get("/api/health/detail")).json()
        assert detail["broker"]["kind"] == "rabbitmq" and detail["broker"]["reachable"] is True, detail["broker"]
        assert detail["status"] == "ok", detail
        stack("down", "rabbitmq")
        try:
            await monitor.refresh()
            short = await admin.get("/api/health")
            down = (await admin.get("/api/health/detail")).json()["broker"]
        finally:
            stack("up", "rabbitmq")
        assert down["reachable"] is False
        assert down["error"]["code"] in ("CONNECTION_REFUSED", "CONNECTION_LOST"), down
        assert short.status_code == 200 and short.json() == {"status": "degraded"}

        async def round_then_status() -> str | None:
            await monitor.refresh()
            return await _short_status(admin)

        assert await eventually(round_then_status, 60, interval=1.0) == "ok"


def test_the_scheduler_keeps_its_lead_through_a_restart_of_redis(settings: Settings) -> None:
    """Redis (appendonly, fsync every second) stopped and started under a leading scheduler:
    the lock comes back from the append-only file, the leader renews it and goes on; it
    neither stops nor leaves the lead to a second scheduler."""
    from nexes.jobs import scheduler

    with leading_scheduler(settings) as (client, leader):
        token = client.get(scheduler.LOCK_NAME)
        time.sleep(1.2)  # the append-only file is written every second
        stack("down", "redis")
        stack("up", "redis")
        assert client.get(scheduler.LOCK_NAME) == token
        left = client.pttl(scheduler.LOCK_NAME)
        renewed = wait_for(lambda: client.pttl(scheduler.LOCK_NAME) > left, timeout=scheduler.LOCK_TTL / 3 + 10)
        assert renewed, "the leader did not renew its lock after the restart"
        assert leader.is_alive() and client.get(scheduler.LOCK_NAME) == token
