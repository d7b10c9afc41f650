"""The cursor every pooled connection uses: it tags each statement with the request.

The tag is `observability.sql_comment()`, prefixed (not appended) so that it
survives `track_activity_query_size` truncation in pg_stat_activity. It is added
after psycopg has converted the query's placeholders (the comment holds no `%`
and no `$`), so psycopg's cache of converted queries keeps working: with the
request id in the text before conversion, every statement would be a miss.
Every way a statement leaves this cursor (execute, executemany, stream, copy)
goes through `_convert_query`, so none escapes the tag.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

from psycopg import AsyncCopy, AsyncCursor, Cursor
from psycopg._queries import PostgresQuery
from psycopg.abc import Params, Query
from psycopg.rows import Row

from nexes.observability import record_sql, sql_comment


class TaggedQuery(PostgresQuery):
    """A converted query with the request's comment in front (unchanged outside a request)."""

    def convert(self, query: Query, vars: Params | None) -> None:
        super().convert(query, vars)
        comment = sql_comment()
        if comment:
            self.query = comment.encode() + self.query


class TaggedCursor(AsyncCursor[Row]):
    """Adds the request comment and records each statement's time for Server-Timing."""

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

    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> Any:
        record_sql(0.0)
        return super().copy(statement, params, **kwargs)


class SyncTaggedCursor(Cursor[Row]):
    """The same tag for the workers' blocking connections (the request id of the job)."""

    _query_cls = TaggedQuery


__all__ = ["AsyncCopy", "SyncTaggedCursor", "TaggedCursor", "TaggedQuery"]
