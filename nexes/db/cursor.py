"""The cursor every pooled connection uses: it tags each statement with the request.

The tag is `observability.sql_comment()`, prefixed (not appended) so that it
survives `track_activity_query_size` truncation in pg_stat_activity.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncCopy, AsyncCursor, Cursor, sql
from psycopg.abc import Params, Query
from psycopg.rows import Row

from nexes.observability import record_sql, sql_comment


def tagged(query: Any) -> Any:
    """`query` with the request's comment in front (unchanged outside a request)."""
    comment = sql_comment()
    if not comment:
        return query
    if isinstance(query, str):
        return comment + query
    if isinstance(query, bytes):
        return comment.encode() + query
    if isinstance(query, sql.Composable):
        return sql.Composed([sql.SQL(comment), query])
    return query


class TaggedCursor(AsyncCursor[Row]):
    """Adds the request comment and records each statement's time for Server-Timing."""

    async def execute(self, query: Query, params: Params | None = None, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().execute(tagged(query), params, **kwargs)
        finally:
            record_sql(time.perf_counter() - started)

    async def stream(self, query: Query, params: Params | None = None, **kwargs: Any) -> AsyncIterator[Row]:
        record_sql(0.0)
        async for row in super().stream(tagged(query), params, **kwargs):
            yield row

    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> Any:
        record_sql(0.0)
        return super().copy(tagged(statement), params, **kwargs)


class SyncTaggedCursor(Cursor[Row]):
    """The same tag for the workers' blocking connections (request id of the job)."""

    def execute(self, query: Query, params: Params | None = None, **kwargs: Any) -> Any:
        return super().execute(tagged(query), params, **kwargs)

    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> Any:
        return super().copy(tagged(statement), params, **kwargs)


__all__ = ["AsyncCopy", "SyncTaggedCursor", "TaggedCursor", "tagged"]
