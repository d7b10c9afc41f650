"""The request id as `application_name`, so that a statement's text repeats and can be prepared.

psycopg prepares by query text. The request comment of `nexes.db.connect.tagged` makes
every statement's text unique, so with it nothing is ever prepared (issue 21). Here the
request id travels as data instead: each statement is sent in one pipeline behind

    SELECT set_config('application_name', '<request id> <pool name>', true)

with no Sync between them, so both run in one transaction (an implicit one under
autocommit, or the caller's) and cost no extra round trip. `true` makes the setting
local to that transaction: the server puts the pool's own name back at its end, reports
no change (so PgBouncer 1.18, which tracks application_name, sees none and replays
nothing), and pg_stat_activity and the log's `%a` show the request id for exactly as long
as its statement runs. pg_stat_activity keeps 63 bytes of it (the request id comes first);
the log keeps all of it.

The trace context goes the same way, as the transaction-local custom setting
`nexes.traceparent` (`current_setting('nexes.traceparent', true)`), since a comment would
defeat preparing and application_name has no room left for it.

In a pipeline the caller opened, each statement is queued behind its own set_config.
What is not tagged: a COPY or a stream that opens its transaction (a COPY later in a
transaction runs under the tag its first statement set), and anything outside a request
or job. Figures and the choice between the
comment, application_name and both: README.md, "Prepared statements and the request id".
"""

from __future__ import annotations

import time
from typing import Any, cast

from psycopg import AsyncCursor, pq
from psycopg._queries import PostgresQuery
from psycopg.abc import Params, Query
from psycopg.rows import Row

from nexes.db.connect.tagged import TaggedCursor, TaggedQuery, copy_span
from nexes.observability import TRACEPARENT, current_traceparent, record_sql, request_id_var, valid_request_id
from nexes.settings import Settings

SET_NAME = "SELECT set_config('application_name', %s, true)"
SET_NAME_AND_TRACE = "SELECT set_config('application_name', %s, true), set_config('nexes.traceparent', %s, true)"
# For a GenericPlan statement on a preparing connection, in the same statement (values are
# bound: the texts stay two).
SET_GENERIC = ", set_config('plan_cache_mode', 'force_generic_plan', true)"
# Any other statement in a transaction or pipeline the caller opened, behind one that set it.
SET_AUTO = ", set_config('plan_cache_mode', 'auto', true)"


class GenericPlan(bytes):
    """A statement whose generic plan serves every value as well as a custom plan would: a
    keyset page by an index, whatever its bounds (no LIKE prefix, whose index range needs
    the value when planning).

    PostgreSQL 15 keeps re-planning a prepared statement over quarterly partitions, because
    each custom plan, pruned to a partition or two, looks cheaper than the generic one; so
    preparing saved only parsing: the deep page took 2.4 ms either way, 0.3 ms with its
    generic plan (pruned when it runs). Prepared (NEXES_PREPARE=on), such a statement runs
    with plan_cache_mode = force_generic_plan, for its transaction only."""

    __slots__ = ()


_IDLE, _INTRANS = pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS
# psycopg's own default: a statement is prepared on its 5th run on a connection, so one-off
# statements (an unusual filter) never fill the server's memory with plans.
PREPARE_THRESHOLD = 5


def tag_statement(base: str, *, generic: bool | None = False) -> tuple[str, list[str]] | None:
    """The set_config statement and its values for the current request or job, or None outside
    one; `generic`: with plan_cache_mode = force_generic_plan too (None: back to auto)."""
    request_id = valid_request_id(request_id_var.get())
    if request_id is None:
        return None
    name = f"{request_id} {base}"
    traceparent = current_traceparent()
    extra = SET_GENERIC if generic else SET_AUTO if generic is None else ""
    if traceparent is None or not TRACEPARENT.fullmatch(traceparent):
        return SET_NAME + extra, [name]
    return SET_NAME_AND_TRACE + extra, [name, traceparent]


class NamedCursor(TaggedCursor[Row]):
    """Sends each statement behind the set_config of its request, in one pipeline; no comment."""

    _query_cls = PostgresQuery  # type: ignore[assignment]  # the plain one: no comment

    async def execute(self, query: Query, params: Params | None = None, **kwargs: Any) -> Any:
        conn = self._conn
        tag = None
        status = conn.pgconn.transaction_status
        if conn._pipeline is not None or status in (_IDLE, _INTRANS):
            generic: bool | None = False
            if conn.prepare_threshold is not None:
                # A generic plan for a GenericPlan statement; for any other in the caller's
                # transaction or pipeline, custom plans again (an earlier statement there may
                # have asked for generic ones).
                if isinstance(query, GenericPlan):
                    generic = True
                elif conn._pipeline is not None or status == _INTRANS:
                    generic = None
            tag = tag_statement(conn.info.parameter_status("application_name") or "", generic=generic)
        if tag is None:
            return await super().execute(query, params, **kwargs)
        if conn._pipeline is not None:
            # The caller's pipeline: queued behind its own tag, sent with its Sync (the same
            # transaction); timed by the caller, which waits for the results.
            await AsyncCursor(conn).execute(*tag)
            return await super().execute(query, params, **kwargs)
        # Not TaggedCursor.execute, nor the instrumentor's traced execute behind it: in a
        # pipeline they return before the server answers, so their span and Server-Timing
        # figure would time only the sending. The statement's span is the hand-made one
        # COPY uses (nexes.db.connect.tagged), around the whole pipeline.
        started = time.perf_counter()
        try:
            with copy_span(query, self):
                async with conn.pipeline():
                    await AsyncCursor(conn).execute(*tag)  # a plain cursor: not counted as a statement
                    await AsyncCursor.execute(self, cast(Any, query), params, **kwargs)
        finally:
            record_sql(time.perf_counter() - started)
        return self


class NamedCommentedCursor(NamedCursor[Row]):
    """Both: the set_config, and the comment (whose text defeats preparing); for measuring."""

    _query_cls = TaggedQuery


CURSORS: dict[str, type[AsyncCursor[Any]]] = {
    "comment": TaggedCursor,
    "application_name": NamedCursor,
    "both": NamedCommentedCursor,
}


def pool_kwargs(settings: Settings) -> dict[str, Any]:
    """The connection options of the SPA's pools: NEXES_PREPARE and NEXES_SQL_TAG."""
    return {
        "prepare_threshold": PREPARE_THRESHOLD if settings.prepare else None,
        "cursor_factory": CURSORS[settings.sql_tag],
    }
