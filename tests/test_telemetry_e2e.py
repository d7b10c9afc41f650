"""Telemetry of a full run, every part in its own process as production runs it: `nexes
serve`, a `dramatiq nexes.jobs` worker, `nexes scheduler` and `nexes` commands.

- Traces over OTLP, as production sends them to Jaeger: each process is configured by
  nothing but the standard OTEL_EXPORTER_OTLP_ENDPOINT and exports to a real OTLP/HTTP
  receiver (tests/support/otlp.py decodes the protobuf with opentelemetry-proto). One
  import started with a `traceparent` arrives as one trace: POST /api/imports -> enqueue
  -> worker -> each chunk's SQL.
- Logs: every line of every process is JSON with the request's and job's ids (Dramatiq's
  supervisor's own start-up lines excepted), and no line carries a secret of the settings.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
import pytest
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from bench.write_path import DRAMATIQ, start_process, stop_process
from nexes import settings as settings_module
from nexes.db.connect.traced import SCOPE
from nexes.db.imports_apply import CHECKPOINT
from nexes.db.seed import seed
from nexes.settings import Settings
from tests.support.auth import bearer_for
from tests.support.brokers import empty
from tests.support.databases import TEMPLATE_DB, drop_database, environ_for, recreate_database
from tests.support.imports import CSRF, csv_bytes, job_key, line
from tests.support.otlp import Received, Receiver, otlp_receiver
from tests.support.processes import free_port
from tests.support.waits import wait_for

DB = "nexes_t_otlp"
REDIS_DB = 14
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
ORDERS = 60
CHUNK_ORDERS = 25  # three chunks
# Written into the settings of every process; no log line may carry one. The stack trusts
# local connections, so the role passwords are sent and ignored.
SECRETS = {
    "NEXES_JWT_SECRET": "jwt-" + secrets.token_hex(16),
    "NEXES_CURSOR_SECRET": "cursor-" + secrets.token_hex(16),
    **{f"NEXES_{role}_PASSWORD": f"{role.lower()}-" + secrets.token_hex(8) for role in ("API", "WORKER", "MONITOR")},
}
OWNER_PASSWORD = "owner-" + secrets.token_hex(8)


def environ(endpoint: str) -> dict[str, str]:
    env = environ_for(DB)
    url = urlsplit(env["NEXES_REDIS_URL"])
    admin = urlsplit(env["NEXES_ADMIN_URL"])
    assert admin.scheme.startswith("postgres") and "@" in admin.netloc and ":" not in admin.netloc.split("@")[0]
    user, host = admin.netloc.split("@")
    env.update(
        SECRETS,
        NEXES_ADMIN_URL=admin._replace(netloc=f"{user}:{OWNER_PASSWORD}@{host}").geturl(),
        NEXES_REDIS_URL=url._replace(path=f"/{REDIS_DB}").geturl(),
        NEXES_IMPORT_CHUNK_ORDERS=str(CHUNK_ORDERS),
        NEXES_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",  # ms: export soon after a span ends
    )
    return env


@dataclass(frozen=True)
class Run:
    settings: Settings
    url: str  # the API's public address
    ops: str  # its ops listener (/metrics)
    worker_metrics: str  # the worker's metrics address
    receiver: Receiver
    logs: Path


@pytest.fixture(scope="module")
def running(template_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The receiver, then a worker (2 processes), the scheduler and the API exporting to it."""
    recreate_database(template_settings.admin_url, DB, template=TEMPLATE_DB)
    logs = tmp_path_factory.mktemp("otlp")
    with otlp_receiver() as receiver:
        env = environ(receiver.endpoint)
        settings = settings_module.load(env)
        seed(settings.admin_url, 20, defer=False)
        empty(settings)
        metrics_port = free_port()
        worker_env = {
            **env,
            "NEXES_WORKER_METRICS_PORT": str(metrics_port),
            "NEXES_WORKER_STATE_DIR": str(tmp_path_factory.mktemp("worker-state")),
        }
        worker = start_process([*DRAMATIQ[:-4], "--processes", "2", "--threads", "2"], worker_env, logs / "worker")
        scheduler = start_process([sys.executable, "-m", "nexes.cli", "scheduler"], env, logs / "scheduler")
        port, ops_port = free_port(), free_port()
        env = {**env, "NEXES_OPS_LISTEN": f"127.0.0.1:{ops_port}"}
        api = start_process([sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)], env, logs / "api")
        url = f"http://127.0.0.1:{port}"
        try:
            assert wait_for(lambda: _answers(url), timeout=60, interval=0.2), (logs / "api").read_text()[-2000:]
            yield Run(settings, url, f"http://127.0.0.1:{ops_port}", f"http://127.0.0.1:{metrics_port}", receiver, logs)
        finally:
            stop_process(api, timeout=30)
            stop_process(scheduler, timeout=30)
            stop_process(worker, timeout=30)
            empty(settings)
            drop_database(template_settings.admin_url, DB)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _under(span: Received, ancestor: Received, spans: list[Received]) -> bool:
    by_id = {s.span_id: s for s in spans}
    parent = span.parent_id
    while parent:
        if parent == ancestor.span_id:
            return True
        parent = by_id[parent].parent_id if parent in by_id else ""
    return False


def _job_status(settings: Settings, job_id: int) -> str:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT status::text FROM import_job WHERE id = %s", [job_id]).fetchone()
    return str(row[0]) if row else ""


def test_an_import_started_with_a_traceparent_arrives_over_otlp_as_one_trace_down_to_each_chunks_sql(
    running: Run,
) -> None:
    settings, url, receiver, logs = running.settings, running.url, running.receiver, running.logs
    data = csv_bytes(*(line(f"SOD-OTLP-{i:06d}") for i in range(ORDERS)))
    # Sent without httpx's instrumentation, which tests/test_tracing.py may have installed in
    # this process: it would replace the caller's traceparent with one of its own.
    with suppress_http_instrumentation():
        answer = httpx.post(
            url + "/api/imports?filename=traced.csv",
            content=data,
            headers={**CSRF, **bearer_for(settings, "operator"), "traceparent": f"00-{TRACE_ID}-{CALLER}-01"},
            timeout=30,
        )
    assert answer.status_code == 202, answer.text
    job_id = job_key(answer.json()["id"])
    assert wait_for(lambda: _job_status(settings, job_id) == "SUCCEEDED", timeout=120, interval=0.3), (
        _job_status(settings, job_id),
        (logs / "worker").read_text()[-3000:],
    )

    def checkpoints() -> list[Received]:
        return [
            s
            for s in receiver.of_trace(TRACE_ID)
            if (s.attributes.get("db.statement") or "").strip() == CHECKPOINT.strip()
        ]

    # Exported in batches, a moment after each span ends.
    assert wait_for(lambda: len(checkpoints()) >= 3, timeout=30, interval=0.2), (
        [s.name for s in receiver.of_trace(TRACE_ID)],
        receiver.requests,
        {s.trace_id for s in receiver.spans},
    )
    time.sleep(0.5)  # the consumer span ends after the last chunk
    spans = receiver.of_trace(TRACE_ID)

    (server,) = [s for s in spans if s.kind == "SERVER" and s.name == "POST /api/imports"]
    assert server.parent_id == CALLER and server.service == "nexes-api"
    (send,) = [s for s in spans if s.kind == "PRODUCER" and s.name == "run_import send"]
    assert send.parent_id == server.span_id and send.service == "nexes-api"
    assert send.attributes["messaging.system"] == "dramatiq"
    (consumer,) = [s for s in spans if s.kind == "CONSUMER" and s.name == "run_import process"]
    assert consumer.parent_id == send.span_id and consumer.service == "nexes-worker"

    # The search sync the import asks for continues the trace too, with its Typesense (httpx) calls.
    worker_sql = [s for s in spans if s.kind == "CLIENT" and _under(s, consumer, spans) and "httpx" not in s.scope]
    assert worker_sql and all(s.attributes.get("db.system") == "postgresql" for s in worker_sql)
    # The instrumentor's spans, and COPY's own (the one statement it cannot reach).
    assert {s.scope for s in worker_sql} == {SCOPE, "nexes.db.connect.tagged"}
    assert {s.name for s in worker_sql if s.scope == "nexes.db.connect.tagged"} == {"COPY"}
    # Each chunk's statements, the checkpoint last, under the consumer span.
    assert len([s for s in worker_sql if s in checkpoints()]) == -(-ORDERS // CHUNK_ORDERS)
    # The API's own SQL (storing the upload) hangs under its server span.
    api_sql = [s for s in spans if s.kind == "CLIENT" and s.service == "nexes-api"]
    assert api_sql and all(_under(s, server, spans) for s in api_sql)
    assert {s.trace_id for s in spans} == {TRACE_ID}


# Dramatiq's supervisor formats its own few lines (start-up, shutdown); the README says so.
SUPERVISOR = "[dramatiq.MainProcess]"
FIELDS = {"ts", "level", "logger", "msg"}


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_every_process_logs_json_lines_with_their_ids_and_no_secret(running: Run, tmp_path: Path) -> None:
    url, receiver, logs = running.url, running.receiver, running.logs
    env = environ(receiver.endpoint)
    # A nexes command, at DEBUG (the libraries' records too): its logs on stderr, its answer on stdout.
    path = tmp_path / "cli.csv"
    path.write_bytes(csv_bytes(line("SOD-LOGS-000001")))
    cli = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "import", str(path), "--wait", "--timeout", "120"],
        env={**env, "NEXES_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    (logs / "cli").write_text(cli.stderr)
    # A request the API logs about (a refused token), and an import the worker logs about.
    refused = httpx.post(url + "/graphql", json={"query": "{ __typename }"}, headers={"Authorization": "Bearer x"})
    assert refused.status_code == 401
    assert wait_for(lambda: "scheduler is the leader" in (logs / "scheduler").read_text(), timeout=30)

    records: dict[str, list[dict[str, object]]] = {}
    for name in ("api", "worker", "scheduler", "cli"):
        entries = []
        for text in _lines(logs / name):
            if name == "worker" and SUPERVISOR in text:
                continue
            try:  # every other line is one JSON object
                entry = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise AssertionError(f"{name}: not a JSON line: {text}") from None
            assert entry.keys() >= FIELDS, text
            entries.append(entry)
        assert entries, name
        records[name] = entries
    running_job = [e for e in records["worker"] if str(e["msg"]).startswith("import ") and "running" in str(e["msg"])]
    assert running_job and {"request_id", "trace_id", "span_id", "job_id", "actor"} <= running_job[0].keys()
    assert running_job[0]["actor"] == "run_import"
    # APScheduler's two INFO lines per run of each job (sweeps every few seconds) are gone.
    assert not [e for e in records["scheduler"] if str(e["logger"]).startswith("apscheduler") and e["level"] == "INFO"]

    everything = "\n".join((logs / name).read_text() for name in ("api", "worker", "scheduler", "cli"))
    everything += cli.stdout
    for secret in (*SECRETS.values(), OWNER_PASSWORD):
        assert secret not in everything


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name` with (at least) `labels` in a Prometheus text page."""
    for found in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
        if labels.items() <= have.items():
            return float(found.group(2))
    return None


def _listening_on_loopback_only(port: int) -> bool:
    """Whether every listening socket on `port` is bound to 127.0.0.1 (/proc/net/tcp: LISTEN is 0A)."""
    local = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port
    ]
    return bool(local) and all(address.split(":")[0] == "0100007F" for address in local)


def test_metrics_cover_operations_errors_pools_imports_and_the_workers(running: Run) -> None:
    settings, url = running.settings, running.url
    admin = bearer_for(settings, "admin")
    named = "query TelemetryPage { serviceOrders(first: 2) { edges { node { sodNumber } } } }"
    assert "errors" not in httpx.post(url + "/graphql", json={"query": named}, headers=admin).json()
    refused = httpx.post(url + "/graphql", json={"query": "{ nosuch }"}, headers=admin).json()
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    data = csv_bytes(*(line(f"SOD-METRICS-{i:04d}") for i in range(30)))
    answer = httpx.post(url + "/api/imports?filename=m.csv", content=data, headers={**CSRF, **admin}, timeout=30)
    job_id = job_key(answer.json()["id"])
    assert wait_for(lambda: _job_status(settings, job_id) == "SUCCEEDED", timeout=120, interval=0.3)

    page = httpx.get(running.ops + "/metrics", timeout=5).text
    ok = _sample(page, "nexes_graphql_request_duration_seconds_count", operation="TelemetryPage", type="query")
    assert ok == 1.0 and _sample(page, "nexes_graphql_request_duration_seconds_bucket", le="0.001") is not None
    assert (_sample(page, "nexes_graphql_errors_total", code="BAD_USER_INPUT") or 0) >= 1
    assert _sample(page, "nexes_graphql_request_duration_seconds_count", outcome="BAD_USER_INPUT") == 1.0
    assert (_sample(page, "nexes_http_requests_total", route="/api/imports", status="202") or 0) >= 1
    # The pool gauges, written by the monitor's round: the SPA's pool opens full.
    size = _sample(page, "nexes_pool_connections", pool="api-primary", state="size")
    assert size == settings.api_pool_size

    # The jobs and search gauges come from the monitors' rounds (a scrape reads no database).
    def ops_page() -> str:
        return httpx.get(running.ops + "/metrics", timeout=5).text

    assert wait_for(lambda: (_sample(ops_page(), "nexes_import_jobs", state="SUCCEEDED") or 0) >= 1, timeout=40)
    page = ops_page()
    assert _sample(page, "nexes_import_jobs", state="RUNNING") == 0
    assert _sample(page, "nexes_import_lease_overdue_seconds") == 0
    assert (_sample(page, "nexes_partition_horizon_seconds") or 0) > 30 * 86400  # four quarters ahead
    assert _sample(page, "nexes_search_breaker_open") == 0
    assert _sample(page, "nexes_replica_in_rotation", replica="replica-0") == 1
    assert _sample(page, "nexes_search_outbox_pending") is not None

    # The worker: one scrape for both its processes, on loopback only.
    port = int(running.worker_metrics.rsplit(":", 1)[1])
    assert _listening_on_loopback_only(port)

    def worker_page() -> str:
        return httpx.get(running.worker_metrics + "/metrics", timeout=5).text

    assert wait_for(lambda: _sample(worker_page(), "nexes_pool_connections", pool="worker-primary") is not None, 20)
    page = worker_page()
    done = _sample(page, "nexes_worker_messages_total", queue="imports", actor="run_import", outcome="ok")
    assert done is not None and done >= 1
    assert (_sample(page, "nexes_import_rows_total", phase="applied") or 0) >= 30
    assert _sample(page, "nexes_worker_message_duration_seconds_count", actor="run_import") == done

    # /api/health/detail shows the workers' pools as they last reported them, with their age.
    def reported() -> list[dict[str, Any]]:
        detail = httpx.get(url + "/api/health/detail", headers=admin, timeout=5).json()
        return [w for w in detail["worker_pools"] if "worker-primary" in w["pools"]]

    assert wait_for(lambda: bool(reported()), timeout=20)
    workers = reported()
    assert all(0 <= w["age_seconds"] < 30 for w in workers), workers
    assert workers[0]["pools"]["worker-primary"]["pool_size"] >= 1
