"""OpenTelemetry on the real stack: HTTP -> GraphQL -> SQL, and API -> Dramatiq -> SQL.

Spans are exported to `InMemorySpanExporter` (opentelemetry.sdk.trace.export.in_memory_span_exporter):
the SDK's own exporter, which keeps finished spans in memory behind the same batch processor
that OTLP uses in production; it is not a mock of any service. PostgreSQL, PgBouncer and
Redis are real; the worker is a real Dramatiq worker, run in this process on the real
broker NEXES_BROKER_URL names (Redis, or RabbitMQ under `make test-rabbitmq`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import dramatiq
import httpx
import orjson
import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from psycopg.conninfo import conninfo_to_dict
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from nexes import observability
from nexes.db.connect.traced import SCOPE
from nexes.http import app as app_module
from nexes.settings import Settings
from tests.support.brokers import queued
from tests.support.databases import wait_until_database_served
from tests.support.imports import CSRF, csv_bytes, job_key, line, wait_for_job

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@pytest.fixture(scope="module", autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK, installed before this module's apps open their pools (so their SQL is traced)."""
    if observability.tracing_enabled():
        pytest.skip("tracing was installed before this module (OTEL_* set?): its spans are not ours to read")
    exporter = InMemorySpanExporter()
    observability.install_tracing("nexes-test", exporter)
    yield exporter


def finished(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    """Every ended span of `trace_id`, once the batch processor has exported them."""
    provider = trace.get_tracer_provider()
    assert provider.force_flush()  # type: ignore[attr-defined]
    return [s for s in exporter.get_finished_spans() if s.context and f"{s.context.trace_id:032x}" == trace_id]


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


def server_span(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER and s.name == name]
    return server


def descends_from(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans if s.context}
    parent = span.parent
    while parent is not None:
        if ancestor.context and parent.span_id == ancestor.context.span_id:
            return True
        above = by_id.get(parent.span_id)
        parent = above.parent if above else None
    return False


class Lines(logging.Handler):
    """The process's JSON log lines, formatted as they are emitted (in the emitting context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(observability.JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("tests.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)


async def probe(request: Request) -> JSONResponse:
    """A route of this test's, inside the app's real middleware: it logs one line and returns
    the text PostgreSQL received for a statement sent on the API's own pool."""
    logging.getLogger("tests.tracing").info("probe served")
    async with request.app.state.pools.primary.connection() as conn:
        row = await (await conn.execute("SELECT current_query()")).fetchone()
    return JSONResponse({"query": row[0]})


def with_probe(client: httpx.AsyncClient) -> httpx.AsyncClient:
    client.app.router.routes.append(Route("/test/probe", probe))  # type: ignore[attr-defined]
    return client


async def test_a_graphql_request_with_a_traceparent_is_a_server_span_with_sql_children_in_that_trace(
    app_client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    query = "query($sod: String!) { serviceOrder(sodNumber: $sod) { sodNumber } }"
    response = await app_client.post(
        "/graphql",
        json={"query": query, "variables": {"sod": "SOD-NONE-0001"}},
        headers={"traceparent": TRACEPARENT, "X-Request-ID": "trace-gql-1"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-gql-1"
    traced = finished(spans, TRACE_ID)
    server = server_span(traced, "POST /graphql")
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert response.headers["traceresponse"] == traceparent_of(server)
    sql = [s for s in traced if s.kind is SpanKind.CLIENT and (s.attributes or {}).get("db.system") == "postgresql"]
    assert sql, [s.name for s in traced]
    assert all(descends_from(s, server, traced) for s in sql)
    # Made by opentelemetry-instrumentation-psycopg, attached to the pool's connections.
    assert {s.instrumentation_scope.name for s in sql if s.instrumentation_scope} == {SCOPE}
    orphans = [s.name for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT and s.parent is None]
    assert orphans == [], "a client span with no parent is not sampled"


async def test_one_span_per_graphql_operation_named_after_it_with_type_cost_codes_and_roles(
    app_client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    query = """query OrdersPage { serviceOrders(first: 3) { edges { node { sodNumber customer { name } } } }
      nope: serviceOrder(sodNumber: "SOD-NONE-0002") { sodNumber } }"""
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    response = await app_client.post(
        "/graphql", json={"query": query}, headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}
    )
    assert response.status_code == 200 and "errors" not in response.json(), response.text
    traced = finished(spans, trace_id)
    server = server_span(traced, "POST /graphql")
    (operation,) = [s for s in traced if s.instrumentation_scope and s.instrumentation_scope.name == "nexes.graphql"]
    assert operation.name == "query OrdersPage"
    assert operation.parent is not None and server.context and operation.parent.span_id == server.context.span_id
    attributes = dict(operation.attributes or {})
    assert attributes["graphql.operation.type"] == "query" and attributes["graphql.operation.name"] == "OrdersPage"
    assert attributes["nexes.graphql.cost"] == response.json()["extensions"]["cost"]["requested"] > 0
    assert tuple(attributes["nexes.viewer.roles"]) == ("admin",)
    assert "nexes.graphql.error_codes" not in attributes
    sql = [s for s in traced if (s.attributes or {}).get("db.system") == "postgresql"]
    # Related rows per batch: the page and its customers, not one statement per order.
    assert 1 <= len(sql) <= 3 and all(s.parent and s.parent.span_id == operation.context.span_id for s in sql)  # type: ignore[union-attr]

    refused = await app_client.post(
        "/graphql", json={"query": "{ nosuchField }"}, headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}
    )
    assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    (failed,) = [
        s
        for s in finished(spans, trace_id)
        if s.instrumentation_scope
        and s.instrumentation_scope.name == "nexes.graphql"
        and s is not operation
        and s.name != "query OrdersPage"
    ]
    assert failed.name == "query"  # anonymous
    assert tuple((failed.attributes or {})["nexes.graphql.error_codes"]) == ("BAD_USER_INPUT",)


async def test_a_requests_log_lines_and_sql_comment_carry_its_request_id_and_trace(
    app_client: httpx.AsyncClient, spans: InMemorySpanExporter, json_lines: Lines, seeded: Settings
) -> None:
    # The probe opens a new connection through PgBouncer, which refuses a pool's logins for
    # server_login_retry after any failed one (databases other tests drop and re-create
    # share the server): wait that out first, as conftest does after a re-create.
    wait_until_database_served(str(conninfo_to_dict(seeded.admin_url)["dbname"]))
    client = with_probe(app_client)
    response = await client.get("/test/probe", headers={"traceparent": TRACEPARENT, "X-Request-ID": "trace-sql-1"})
    assert response.status_code == 200, response.text
    traced = finished(spans, TRACE_ID)
    server = server_span(traced, "GET /test/probe")
    (statement,) = [s for s in traced if s.kind is SpanKind.CLIENT and descends_from(s, server, traced)]
    # sqlcommenter: the statement's own span is the parent PostgreSQL's work hangs under.
    expected = f"/*request_id='trace-sql-1',traceparent='{traceparent_of(statement)}'*/ SELECT current_query()"
    assert response.json()["query"] == expected
    (logged,) = [entry for entry in json_lines.lines if entry["msg"] == "probe served"]
    assert server.context is not None
    assert (logged["request_id"], logged["trace_id"]) == ("trace-sql-1", TRACE_ID)
    assert logged["span_id"] == f"{server.context.span_id:016x}"


async def test_a_request_without_a_traceparent_starts_a_fresh_trace_its_logs_carry(
    app_client: httpx.AsyncClient, spans: InMemorySpanExporter, json_lines: Lines
) -> None:
    client = with_probe(app_client)
    first = await client.get("/test/probe")
    second = await client.get("/test/probe")
    trace_ids = [r.headers["traceresponse"].split("-")[1] for r in (first, second)]
    assert len(set(trace_ids)) == 2 and TRACE_ID not in trace_ids
    logged = [entry for entry in json_lines.lines if entry["msg"] == "probe served"]
    assert [entry["trace_id"] for entry in logged] == trace_ids
    assert [entry["request_id"] for entry in logged] == [r.headers["x-request-id"] for r in (first, second)]
    for trace_id in trace_ids:
        server = server_span(finished(spans, trace_id), "GET /test/probe")
        assert server.parent is None  # a root: the trace starts here


async def test_without_an_exporter_an_incoming_traceparent_is_only_continued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "tracing_enabled", lambda: False)  # as in a process with no OTLP endpoint
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(observability.current_traceparent())

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    middleware = app_module.TracingMiddleware(app)
    for headers in ([(b"traceparent", TRACEPARENT.encode())], [(b"traceparent", b"00-junk")], []):
        await middleware({"type": "http", "path": "/graphql", "headers": headers}, receive, send)
    assert seen == [TRACEPARENT, None, None]


async def test_an_import_carries_the_trace_to_its_job_its_message_and_the_workers_logs_and_sql(
    app_client: httpx.AsyncClient,
    seeded: Settings,
    spans: InMemorySpanExporter,
    json_lines: Lines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nexes.jobs.runtime
    from nexes.db.connect.worker import close_worker_pools
    from nexes.jobs import broker
    from nexes.jobs.search import sync_search

    for queue in ("imports", sync_search.queue_name):
        broker.flush(queue)
    data = csv_bytes(line("SOD-TRACE-000001"), line("SOD-TRACE-000002", sku="SKU-00002"))
    response = await app_client.post(
        "/api/imports?filename=traced.csv",
        content=data,
        headers={**CSRF, "traceparent": TRACEPARENT, "X-Request-ID": "trace-import-1"},
    )
    assert response.status_code == 202, response.text
    job_id = job_key(response.json()["id"])
    server = server_span(finished(spans, TRACE_ID), "POST /api/imports")
    sender = traceparent_of(server)

    with psycopg.connect(seeded.admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT trace_context, request_id FROM import_job WHERE id = %s", [job_id]).fetchone()
    assert row == ({"traceparent": sender}, "trace-import-1")
    (message,) = queued(broker, "imports", lambda m: m["actor_name"] == "run_import" and m["args"] == [job_id])
    (send,) = [s for s in finished(spans, TRACE_ID) if s.kind is SpanKind.PRODUCER and s.name == "run_import send"]
    assert send.parent is not None and traceparent_of(server) == f"00-{TRACE_ID}-{send.parent.span_id:016x}-01"
    assert message["options"]["nexes_traceparent"] == traceparent_of(send)
    assert message["options"]["nexes_request_id"] == "trace-import-1"

    monkeypatch.setattr(nexes.jobs.runtime, "settings", seeded)  # the actor reads its settings from there
    jobs_logger = logging.getLogger("nexes.jobs")
    jobs_logger.addHandler(json_lines)
    jobs_logger.setLevel(logging.INFO)
    worker = dramatiq.Worker(broker, queues={"imports"}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        status = wait_for_job(seeded, job_id)
    finally:
        worker.stop()
        close_worker_pools()
        jobs_logger.removeHandler(json_lines)
        jobs_logger.setLevel(logging.NOTSET)
    assert status == "SUCCEEDED"

    traced = finished(spans, TRACE_ID)
    (consumer,) = [s for s in traced if s.kind is SpanKind.CONSUMER and s.name == "run_import process"]
    assert consumer.parent is not None and traceparent_of(send) == f"00-{TRACE_ID}-{consumer.parent.span_id:016x}-01"
    worker_sql = [s for s in traced if s.kind is SpanKind.CLIENT and descends_from(s, consumer, traced)]
    assert len(worker_sql) >= 3 and "COPY" in {s.name for s in worker_sql}, [s.name for s in traced]
    (running, *_) = [entry for entry in json_lines.lines if entry["msg"].startswith(f"import {job_id}: running")]
    assert consumer.context is not None
    assert (running["request_id"], running["trace_id"]) == ("trace-import-1", TRACE_ID)
    assert running["span_id"] == f"{consumer.context.span_id:016x}"
    assert running["actor"] == "run_import" and running["job_id"] == message["message_id"]
    # The search sync the worker asks for afterwards continues the same trace.
    syncs = queued(broker, sync_search.queue_name, lambda m: m["actor_name"] == "sync_search")
    assert any(m["options"].get("nexes_traceparent", "").startswith(f"00-{TRACE_ID}-") for m in syncs)
    broker.flush(sync_search.queue_name)
