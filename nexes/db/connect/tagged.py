"""The cursor every pooled connection uses: it tags each statement with the request.

The tag is `observability.sql_comment()`, prefixed (not appended) so that it
survives `track_activity_query_size` truncation in pg_stat_activity. It is added
after psycopg has converted the query's placeholders (the comment holds no `%`
and no `$`), so psycopg's cache of converted queries keeps working: with the
request id in the text before conversion, every statement would be a miss.
Every way a statement leaves this cursor (execute, executemany, stream, copy)
goes through `_convert_query`, so none escapes the tag.

SQL spans are opentelemetry-instrumentation-psycopg's, attached per connection by the
pools (nexes.db.connect.traced). Two exceptions make their span here (`copy_span`):
COPY, since the instrumentor does not wrap `copy` (import staging, order writes, exports),
and a statement sent in a pipeline of its own behind its application_name tag
(nexes.db.connect.session_tag, NEXES_PREPARE), where the instrumentor's span would end
before the server answers. Either span is current while psycopg converts the statement,
as the instrumentor's spans are for every other statement.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from types import TracebackType
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from psycopg import AsyncCopy, AsyncCursor, Copy, Cursor
from psycopg._queries import PostgresQuery
from psycopg.abc import Params, Query
from psycopg.rows import Row
from psycopg.sql import Composable

from nexes.observability import record_sql, sql_comment, tracing_enabled

TRACER = trace.get_tracer(__name__)
_UNTRACED = nullcontext()


class TaggedQuery(PostgresQuery):
    """A converted query with the request's comment in front (unchanged outside a request).

    A subclass of psycopg's (private) query class, named by the cursors' `_query_cls`:
    psycopg has no public hook between converting a query and sending it."""

    def convert(self, query: Query, vars: Params | None) -> None:
        super().convert(query, vars)
        comment = sql_comment()
        if comment:
            self.query = comment.encode() + self.query


class CopySpan:
    """The client span of one COPY, current while it runs (a plain class: a generator-based
    context manager costs more than the span's attributes)."""

    __slots__ = ("span", "token")

    def __init__(self, query: Query, cursor: Any) -> None:
        text = query if isinstance(query, str) else None
        self.span = TRACER.start_span(_operation(text), kind=SpanKind.CLIENT)
        if self.span.is_recording():
            if text is None:
                text = _text(query, cursor)
                self.span.update_name(_operation(text))
            # The attribute names the instrumentor writes (its default semantic conventions).
            self.span.set_attributes({"db.system": "postgresql", "db.name": cursor.connection.info.dbname})
            if text is not None:
                self.span.set_attribute("db.statement", text)
        self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def __enter__(self) -> CopySpan:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(StatusCode.ERROR, type(exc).__name__)
        otel_context.detach(self.token)
        self.span.end()


def copy_span(query: Query, cursor: Any) -> CopySpan | nullcontext[None]:
    """A COPY's span (hand-made: the psycopg instrumentor does not trace `copy`); none when
    tracing is off, or outside any request or job."""
    if not tracing_enabled() or not trace.get_current_span().get_span_context().is_valid:
        return _UNTRACED
    return CopySpan(query, cursor)


def _text(query: Query, cursor: Any) -> str | None:
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    if isinstance(query, Composable):
        return query.as_string(cursor)
    return None  # a t-string Template: its text holds values


def _operation(text: str | None) -> str:
    """The span's name: the statement's first word (SELECT, WITH, COPY...), as sqlcommenter's peers do."""
    word = text.lstrip(" \n(").split(None, 1)[0] if text and text.strip(" \n(") else "SQL"
    return word.upper()[:16]


class TaggedCursor(AsyncCursor[Row]):
    """Adds the request comment, records each statement's time for Server-Timing, traces COPY."""

    _query_cls = TaggedQuery

    async def execute(self, query: Query, params: Params | None = None, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            # Any: this one signature stands for both of psycopg's overloads (with a Template, or not).
            return await super().execute(cast(Any, query), params, **kwargs)
        finally:
            record_sql(time.perf_counter() - started)

    async def stream(self, query: Query, params: Params | None = None, **kwargs: Any) -> AsyncIterator[Row]:
        record_sql(0.0)
        async for row in super().stream(query, params, **kwargs):
            yield row

    @asynccontextmanager
    async def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> AsyncIterator[AsyncCopy]:
        record_sql(0.0)
        with copy_span(statement, self):
            async with super().copy(statement, params, **kwargs) as copy:
                yield copy


class SyncTaggedCursor(Cursor[Row]):
    """The same tag and COPY spans for the workers' blocking connections (the request id of the job)."""

    _query_cls = TaggedQuery

    @contextmanager
    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> Iterator[Copy]:
        with copy_span(statement, self), super().copy(statement, params, **kwargs) as copy:
            yield copy


__all__ = ["AsyncCopy", "SyncTaggedCursor", "TaggedCursor", "TaggedQuery", "copy_span"]
