"""What telemetry costs (issue 18): `python -m bench.run tracing | scrape | api-telemetry`.

tracing: CPU per SQL statement with tracing off, sampled and unsampled (below).
scrape: the time of one /metrics scrape of `nexes serve --workers 2` after some traffic.
api-telemetry: the 50-order page under wrk (bench.run's page and load), tracing off, tracing on
with every request sampled, and on with 5% sampled (exported over OTLP/HTTP to a receiver in
this process that drops what it gets), alternated round by round on three servers; metrics
are always on.

## tracing

CPU time of this process (time.process_time: no wait for the server counts) per
`SELECT %s` on one connection through PgBouncer, as nexes_api, with a request id set
(any database: the stack's own, not nexes_bench), in five modes, each in a fresh process
(the tracer provider is once per process):

- off: no OTLP endpoint, so no SDK and no instrumentation (the hook attaches nothing);
- instrumentor, sampled / unsampled: opentelemetry-instrumentation-psycopg attached by
  the pools' configure hook (nexes.db.connect.traced), under a sampled parent span, or
  under an unsampled one (a caller's traceparent with flags 00);
- hand-made, sampled / unsampled: the cursor Nexes used before (its own span class over
  every execute), copied below from commit 4296936 as the baseline.

The SDK exports to a null exporter behind the real batch processor. Each figure is the
best round of the best process (the two cores are shared with the stack and others).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import psycopg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from psycopg import AsyncConnection, AsyncCursor
from psycopg.abc import Params, Query
from psycopg.rows import Row

from bench.run import (
    DB,
    bench_env,
    bench_seed,
    cpu_seconds,
    ensure_wrk,
    process,
    report,
    superuser,
    wrk,
)
from bench.tokens import bearer
from nexes import observability
from nexes import settings as settings_module
from nexes.db.connect.conninfo import for_role
from nexes.db.connect.tagged import TaggedCursor, TaggedQuery
from nexes.db.connect.traced import trace_connection

# The 50-order page of the API benchmark's first read (bench.api), with each order's customer.
PAGE_FIELDS = "id sodNumber status createdAt totalAmount customer { name }"

MODES = ("off", "instrumentor-sampled", "instrumentor-unsampled", "handmade-sampled", "handmade-unsampled")
STATEMENTS = 4_000
ROUNDS = 5
TRACER = trace.get_tracer("bench.tracing")


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class HandmadeSpan:
    """The hand-made statement span as it was (nexes/db/connect/tagged.py at 4296936)."""

    __slots__ = ("span", "token")

    def __init__(self, query: Query, cursor: Any) -> None:
        text = query if isinstance(query, str) else None
        word = text.lstrip(" \n(").split(None, 1)[0] if text and text.strip(" \n(") else "SQL"
        self.span = TRACER.start_span(word.upper()[:16], kind=SpanKind.CLIENT)
        if self.span.is_recording():
            self.span.set_attributes({"db.system.name": "postgresql", "db.namespace": cursor.connection.info.dbname})
            if text is not None:
                self.span.set_attribute("db.query.text", text)
        self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def __enter__(self) -> HandmadeSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self.token)
        self.span.end()


class HandmadeCursor(AsyncCursor[Row]):
    _query_cls = TaggedQuery

    async def execute(self, query: Query, params: Params | None = None, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            if not observability.tracing_enabled() or not trace.get_current_span().get_span_context().is_valid:
                span: Any = nullcontext()
            else:
                span = HandmadeSpan(query, self)
            with span:
                return await super().execute(cast(Any, query), params, **kwargs)
        finally:
            observability.record_sql(time.perf_counter() - started)


async def _measure(mode: str) -> float:
    settings = settings_module.load()
    if mode != "off":
        observability.install_tracing("bench", NullExporter())
    cursor = HandmadeCursor if mode.startswith("handmade") else TaggedCursor
    conninfo = for_role(settings.primary_url, settings, "nexes_api", application_name="nexes-bench")
    conn = await AsyncConnection.connect(conninfo, autocommit=True, prepare_threshold=None, cursor_factory=cursor)
    await trace_connection(conn)  # what the pools' configure hook does (nothing when tracing is off)
    observability.request_id_var.set("bench-request-0001")
    if mode.endswith("unsampled"):  # a caller's traceparent with flags 00: the parent-based sampler drops
        parent = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0)))
        span_context: Any = trace.use_span(parent)
    elif mode.endswith("sampled"):
        span_context = TRACER.start_as_current_span("request")
    else:
        span_context = nullcontext()
    rounds = []
    with span_context:
        for _ in range(300):  # warm-up
            await conn.execute("SELECT %s::int", [1])
        for _ in range(ROUNDS):
            started = time.process_time()
            for i in range(STATEMENTS):
                await conn.execute("SELECT %s::int", [i])
            rounds.append((time.process_time() - started) / STATEMENTS * 1e6)
    await conn.close()
    return min(rounds)  # the least disturbed round: the machine is shared


def bench_tracing() -> None:
    """Each mode in a process of its own, three times, alternating; one JSON line per mode."""
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(3):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, "-m", "bench.telemetry", mode],
                check=True,
                capture_output=True,
                text=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            ).stdout
            results[mode].append(float(out.strip().splitlines()[-1]))
    off = min(results["off"])
    for mode in MODES:
        best = min(results[mode])
        report(bench="tracing", mode=mode, cpu_us_per_statement=round(best, 1), over_off_us=round(best - off, 1))


def bench_scrape(requests: int = 300, scrapes: int = 100) -> None:
    """`nexes serve --workers 2` on the stack's database, `requests` GraphQL requests spread
    over both workers, then `scrapes` scrapes of /metrics, timed one by one."""
    env = {**os.environ, "NEXES_OPS_LISTEN": f"127.0.0.1:{OPS_PORT}"}
    url = f"http://127.0.0.1:{SCRAPE_PORT}/graphql"
    auth = bearer(env, "admin")
    first = {"query": "{ __typename }"}
    cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(SCRAPE_PORT), "--workers", "2"]
    with process(cmd, env, url, first, headers=auth), httpx.Client(headers=auth, timeout=30) as client:
        for i in range(requests):
            name = f"Op{i % 20}"
            client.post(url, json={"query": f"query {name} {{ serviceOrders(first: 5) {{ edges {{ cursor }} }} }}"})
        client.post(url, json={"query": "{ nosuch }"})
        time.sleep(3)  # a monitor round in each worker: the pool and replica gauges
        times, size = [], 0
        for _ in range(scrapes):
            started = time.perf_counter()
            page = httpx.get(f"http://127.0.0.1:{OPS_PORT}/metrics", timeout=10)
            times.append((time.perf_counter() - started) * 1000)
            size = len(page.content)
    times.sort()
    report(
        bench="metrics-scrape",
        api_workers=2,
        scrapes=scrapes,
        median_ms=round(statistics.median(times), 2),
        p95_ms=round(times[int(len(times) * 0.95) - 1], 2),
        bytes=size,
        series=sum(1 for line in page.text.splitlines() if line and not line.startswith("#")),
    )


def bench_api_telemetry(seconds: int, rounds: int, orders: int) -> None:
    """Tracing off against tracing on, on the 50-order page; nexes_bench seeded with `orders`
    when it is missing (the page's keyset plan costs the same at any size)."""
    ensure_wrk()
    settings = settings_module.load()
    with psycopg.connect(superuser(settings.admin_url)) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
    if not exists:
        bench_seed(orders)
    # The rate limit raised, as bench/bulkhead.py does: a viewer's hourly points last seconds under wrk.
    base = {**bench_env(), "NEXES_API_POOL_SIZE": "20", "NEXES_RATE_LIMIT_VIEWER": "100000000"}
    base = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
    auth = bearer(base, "viewer")
    first = {"query": "{ serviceOrders(first: 50) { pageInfo { endCursor } } }"}
    with DroppingReceiver() as endpoint:
        servers = {
            "tracing-off": (OFF_PORT, {**base, "NEXES_OPS_LISTEN": f"127.0.0.1:{OFF_PORT + 10}"}),
            "tracing-on": (
                ON_PORT,
                {**base, "NEXES_OPS_LISTEN": f"127.0.0.1:{ON_PORT + 10}", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
            ),
            "tracing-5%": (
                RATIO_PORT,
                {
                    **base,
                    "NEXES_OPS_LISTEN": f"127.0.0.1:{RATIO_PORT + 10}",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": "0.05",
                },
            ),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        cmds = {
            name: [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port), "--workers", "1"]
            for name, (port, _) in servers.items()
        }
        urls = {name: f"http://127.0.0.1:{port}/graphql" for name, (port, _) in servers.items()}
        with contextlib.ExitStack() as stack:
            pids = {
                name: stack.enter_context(process(cmds[name], env, urls[name], first, headers=auth)).pid
                for name, (_, env) in servers.items()
            }
            answer = httpx.post(urls["tracing-off"], json=first, headers=auth).json()
            cursor = answer["data"]["serviceOrders"]["pageInfo"]["endCursor"]
            body = {
                "query": "query($a: String) { serviceOrders(first: 50, after: $a) "
                f"{{ edges {{ node {{ {PAGE_FIELDS} }} }} }} }}",
                "variables": {"a": cursor},
            }
            for _ in range(rounds):
                for name in servers:
                    runs[name].append(wrk(urls[name], body, seconds, authorization=auth["Authorization"]))
            # Steadier than req/s on a shared machine: the server's CPU per request, one client.
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            with httpx.Client(headers=auth, timeout=30) as client:
                for _ in range(rounds):
                    for name in servers:
                        cpu[name].append(_cpu_per_request(client, urls[name], body, pids[name], CPU_REQUESTS))
        exported = endpoint_requests[0]
    failed = {name: sum(r["gql_errors"] for r in results) for name, results in runs.items()}
    if any(failed.values()):
        raise RuntimeError(f"responses with GraphQL errors (not pages): {failed}; runs: {runs}")
    medians = {name: statistics.median(r["rps"] for r in results) for name, results in runs.items()}
    report(
        bench="api-page-50-telemetry",
        runs=runs,
        median_rps=medians,
        ratio_to_off={name: round(medians[name] / medians["tracing-off"], 3) for name in servers},
        server_cpu_us_per_request=cpu,
        median_cpu_us_per_request={name: statistics.median(values) for name, values in cpu.items()},
        otlp_requests=exported,
    )


CPU_REQUESTS = 600


def _cpu_per_request(client: httpx.Client, url: str, body: dict[str, Any], pid: int, requests: int) -> float:
    """µs of the server process's CPU (utime + stime) per request, `requests` sent one after another."""
    before = cpu_seconds(pid)
    for _ in range(requests):
        answer = client.post(url, json=body)
        assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    return round((cpu_seconds(pid) - before) / requests * 1e6, 1)


SCRAPE_PORT, OPS_PORT = 18010, 18011
OFF_PORT, ON_PORT, RATIO_PORT = 18012, 18013, 18014
endpoint_requests = [0]


class DroppingReceiver:
    """An OTLP/HTTP endpoint that answers 200 and drops the spans (counts the requests)."""

    def __enter__(self) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint_requests[0] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    print(asyncio.run(_measure(sys.argv[1])))
