"""The ddl queue (issue 16, least privilege): the DDL actors (partitions, archive) run only
on the worker given NEXES_ADMIN_URL; every other worker runs as nexes_worker and never
takes a ddl message, however it was started."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from nexes.db.partitions import PARTITIONED, next_quarter, partition_name, quarter_start
from nexes.settings import Settings
from tests.support.brokers import empty, send, waiting
from tests.support.databases import drop_database
from tests.support.waits import wait_for
from tests.support.workers import app_worker_environ, environ, fresh, start_worker, stop_worker

DB = "nexes_t_ops_ddl"


@pytest.fixture
def ddl_db(template_settings: Settings) -> Iterator[Settings]:
    settings = fresh(template_settings, DB)
    empty(settings)  # the workers' broker and their own Redis database
    yield settings
    from nexes.db.connect.worker import close_worker_pools

    close_worker_pools()
    drop_database(template_settings.admin_url, DB)


def furthest_quarter(settings: Settings) -> list[str]:
    """The partitions of the newest quarter `maintain_partitions` makes."""
    last = quarter_start(datetime.now(UTC).date())
    for _ in range(settings.partitions_ahead):
        last = next_quarter(last)
    return [partition_name(table, last) for table in PARTITIONED]


def existing(settings: Settings, names: list[str]) -> list[str]:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        return [n for n in names if conn.execute("SELECT to_regclass(%s)", [n]).fetchone() != (None,)]


def test_only_the_worker_with_the_owner_url_runs_ddl_and_it_creates_the_partition(
    ddl_db: Settings, tmp_path: Path
) -> None:
    from nexes.jobs.maintenance import maintain_partitions, sweep_imports

    names = furthest_quarter(ddl_db)
    with psycopg.connect(ddl_db.admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    send(ddl_db, maintain_partitions.message())
    send(ddl_db, sweep_imports.message())
    assert maintain_partitions.queue_name == "ddl" and sweep_imports.queue_name == "maintenance"

    ordinary = start_worker(app_worker_environ(DB), tmp_path / "worker.log")
    try:
        assert wait_for(lambda: waiting(ddl_db, "maintenance") == 0, timeout=60), "the maintenance job was not taken"
        time.sleep(2)  # a consumer of ddl would have taken its message by now
        assert waiting(ddl_db, "ddl") == 1
        assert existing(ddl_db, names) == []
    finally:
        stop_worker(ordinary)

    ddl = start_worker(environ(DB), tmp_path / "ddl-worker.log", "--ddl")
    try:
        assert wait_for(lambda: existing(ddl_db, names) == names, timeout=60), (tmp_path / "ddl-worker.log").read_text()
        assert wait_for(lambda: waiting(ddl_db, "ddl") == 0, timeout=10)
    finally:
        stop_worker(ddl)


def test_a_worker_without_the_owner_url_refuses_the_ddl_queue(ddl_db: Settings, tmp_path: Path) -> None:
    """Asked for the ddl queue alone, without NEXES_ADMIN_URL: `nexes worker --ddl` exits
    naming the variable, and plain dramatiq's worker process refuses to boot."""
    env = app_worker_environ(DB)
    refused = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "worker", "--ddl"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "NEXES_ADMIN_URL" in refused.stderr
    log = tmp_path / "dramatiq.log"
    plain = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "nexes.jobs", "--processes", "1", "--threads", "1", "--queues", "ddl"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: "needs NEXES_ADMIN_URL" in log.read_text(), timeout=60), log.read_text()
    finally:
        stop_worker(plain)
