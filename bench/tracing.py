"""What SQL tracing costs per statement (`python -m bench.run tracing`).

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
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from psycopg import AsyncConnection, AsyncCursor
from psycopg.abc import Params, Query
from psycopg.rows import Row

from bench.run import report
from nexes import observability
from nexes import settings as settings_module
from nexes.db.connect.conninfo import for_role
from nexes.db.connect.tagged import TaggedCursor, TaggedQuery
from nexes.db.connect.traced import trace_connection

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
                [sys.executable, "-m", "bench.tracing", mode],
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


if __name__ == "__main__":
    print(asyncio.run(_measure(sys.argv[1])))
