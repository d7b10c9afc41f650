"""Imports the way operators run them, every part real and in its own process: the API
under uvicorn (`nexes serve`) and the CLI (`nexes import --wait`) store the file and
enqueue it on the broker (Redis, or RabbitMQ under `make test-rabbitmq`); a `dramatiq
nexes.jobs` worker imports it into PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from bench.write_path import DRAMATIQ, start_process, stop_process
from nexes import settings as settings_module
from nexes.db.connect.conninfo import environ_for_database
from nexes.db.seed import seed
from nexes.settings import Settings
from tests.support.auth import bearer_for
from tests.support.brokers import empty
from tests.support.databases import TEMPLATE_DB, drop_database, recreate_database
from tests.support.processes import free_port

DB = "nexes_t_import_e2e"
REDIS_DB = 12
HEADER = "sod_number,created_at,customer_code,status,description,currency,line_no,sku,quantity,unit_price"
CREATED = (datetime.now(UTC) - timedelta(days=5)).replace(microsecond=0).isoformat()
JOB = """query($id: ID!) { importJob(id: $id) {
  status processedRows totalRows inserted updated unchanged failed requestId startedAt finishedAt lsn
  errors(first: 10) { edges { node { rowNo sodNumber column code } } } } }"""
FINAL = ("SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED")


def environ() -> dict[str, str]:
    env = environ_for_database(os.environ, DB)
    url = urlsplit(env["NEXES_REDIS_URL"])
    env.update(NEXES_REDIS_URL=url._replace(path=f"/{REDIS_DB}").geturl(), NEXES_LOG_LEVEL="INFO")
    return env


@pytest.fixture(scope="module")
def running(template_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """The database seeded small, a worker and an API server on it; yields the API's URL."""
    recreate_database(template_settings.admin_url, DB, template=TEMPLATE_DB)
    env = environ()
    settings = settings_module.load(env)
    seed(settings.admin_url, 50, defer=False)
    empty(settings)
    logs = tmp_path_factory.mktemp("e2e")
    port = free_port()
    worker = start_process(DRAMATIQ, env, logs / "worker")
    env = {**env, "NEXES_OPS_LISTEN": f"127.0.0.1:{free_port()}"}  # /metrics' listener: a free port too
    api = start_process([sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)], env, logs / "api")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError((logs / "api").read_text()[-2000:])
        yield settings, url
    finally:
        stop_process(api, timeout=30)
        stop_process(worker, timeout=30)
        empty(settings)
        drop_database(template_settings.admin_url, DB)


def csv(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def row(sod: str, line: int = 1, sku: str = "SKU-00001", quantity: int = 2) -> str:
    return f"{sod},{CREATED},C000001,OPEN,Boiler service,EUR,{line},{sku},{quantity},49.90"


def cli_import(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nexes.cli", "import", str(path), "--wait", "--timeout", "120"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def orders(settings: Settings, prefix: str) -> dict[str, Any]:
    with psycopg.connect(settings.admin_url) as conn:
        found = conn.execute(
            "SELECT o.sod_number, sum(l.quantity) FROM service_order o JOIN service_order_line l "
            "ON l.order_id = o.id AND l.created_at = o.created_at WHERE o.sod_number LIKE %s GROUP BY 1",
            [prefix + "%"],
        ).fetchall()
    return dict(found)


def test_nexes_import_wait_exits_0_once_a_real_worker_has_imported_the_file(
    running: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, _ = running
    path = tmp_path / "good.csv"
    path.write_text(csv(row("E2E-CLI-1"), row("E2E-CLI-1", 2, "SKU-00002", 3), row("E2E-CLI-2")))
    done = cli_import(environ(), path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED: 2 inserted, 0 updated, 0 unchanged, 0 row(s) failed" in done.stdout
    assert orders(settings, "E2E-CLI-") == {"E2E-CLI-1": 5, "E2E-CLI-2": 2}


def test_nexes_import_wait_exits_1_when_rows_were_rejected(running: tuple[Settings, str], tmp_path: Path) -> None:
    settings, _ = running
    path = tmp_path / "partial.csv"
    path.write_text(csv(row("E2E-BAD-1", sku="NO-SUCH-SKU"), row("E2E-BAD-2")))
    done = cli_import(environ(), path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PARTIAL: 1 inserted" in done.stdout and "1 row(s) failed" in done.stdout
    assert orders(settings, "E2E-BAD-") == {"E2E-BAD-2": 2}


def test_an_upload_over_http_is_imported_by_the_worker_and_reported_over_graphql(
    running: tuple[Settings, str],
) -> None:
    settings, url = running
    data = csv(row("E2E-HTTP-1"), row("E2E-HTTP-2", quantity=0)).encode()
    headers = {"X-Nexes-CSRF": "1", "X-Request-ID": "e2e-upload-1"}
    with httpx.Client(base_url=url, timeout=30, headers=bearer_for(settings, "operator")) as client:
        answer = client.post("/api/imports?filename=http.csv", content=data, headers=headers)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = client.post("/graphql", json={"query": JOB, "variables": {"id": job_id}}).json()["data"]["importJob"]
            if job["status"] in FINAL:
                break
            time.sleep(0.3)
    assert job["status"] == "PARTIAL", job
    assert (job["processedRows"], job["totalRows"], job["inserted"], job["failed"]) == (2, 2, 1, 1)
    assert job["requestId"] == "e2e-upload-1" and job["lsn"]
    assert job["startedAt"] is not None and job["startedAt"] <= job["finishedAt"]
    (error,) = [e["node"] for e in job["errors"]["edges"]]
    assert (error["rowNo"], error["sodNumber"], error["column"], error["code"]) == (
        3,  # the file's line: the header is line 1
        "E2E-HTTP-2",
        "quantity",
        "BAD_USER_INPUT",
    )
    assert orders(settings, "E2E-HTTP-") == {"E2E-HTTP-1": 2}
