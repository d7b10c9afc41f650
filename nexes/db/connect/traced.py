"""SQL spans: opentelemetry-instrumentation-psycopg, attached per pooled connection.

The pools call `trace_connection` (async) or `trace_sync_connection` as their `configure`
hook, so only Nexes' pools are traced: nothing patches `psycopg.connect` for the whole
process (the monitor's probes and the CLI's owner connections stay untraced), and a
process without an OTLP endpoint attaches nothing at all.

The instrumentor's sqlcommenter stays off (`enable_commenter=False`): it would add its
comment before psycopg converts the query, which defeats psycopg's conversion cache, and
only to sampled statements. Nexes' own comment (`nexes.db.connect.tagged`) is added
after conversion, to every statement. `instrument_connection` replaces the connection's
cursor class with one of its own made on `psycopg.AsyncCursor`, so the pool's tagged
cursor is put back in front of it: the instrumentor's span is then current while
psycopg converts the statement, and the comment's traceparent names that span.

COPY is the one statement the instrumentor does not see (it wraps execute, executemany
and callproc): the tagged cursors make COPY's span themselves.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from psycopg import AsyncConnection, Connection

from nexes.observability import tracing_enabled

# The instrumentation scope of the SQL spans (the instrumentor names its tracer after its module).
SCOPE = "opentelemetry.instrumentation.psycopg"


def _instrument(connection: Any) -> None:
    tagged = connection.cursor_factory
    PsycopgInstrumentor.instrument_connection(connection, enable_commenter=False)
    traced = connection.cursor_factory
    # The tagged cursor first: its _query_cls (the comment) and its COPY span, over the traced execute.
    connection.cursor_factory = type(tagged.__name__, (tagged, traced), {})


async def trace_connection(connection: AsyncConnection[Any]) -> None:
    """The async pools' `configure` hook: psycopg's instrumentor on this connection when tracing is on."""
    if tracing_enabled():
        _instrument(connection)


def trace_sync_connection(connection: Connection[Any]) -> None:
    """The workers' pool's `configure` hook (blocking connections), as `trace_connection`."""
    if tracing_enabled():
        _instrument(connection)
