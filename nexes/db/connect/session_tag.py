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

import contextlib
import time
from collections.abc import Sequence
from typing import Any, cast

from psycopg import AsyncConnection, AsyncCursor, pq
from psycopg import errors as e
from psycopg._preparing import Prepare
from psycopg._queries import PostgresQuery
from psycopg.abc import Params, PQGen, Query
from psycopg.generators import fetch_many, send
from psycopg.pq.abc import PGresult
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
_SYNC, _FATAL = pq.ExecStatus.PIPELINE_SYNC, pq.ExecStatus.FATAL_ERROR
TEXT = pq.Format.TEXT
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
            tag = _tag_for(conn, query, in_caller_transaction=conn._pipeline is not None or status == _INTRANS)
        if tag is None:
            return await super().execute(query, params, **kwargs)
        if conn._pipeline is not None:
            # The caller's pipeline: queued behind its own tag, sent with its Sync (the same
            # transaction); timed by the caller, which waits for the results.
            await AsyncCursor(conn).execute(*tag)
            return await super().execute(query, params, **kwargs)
        # prepare= or binary= given: psycopg's own pipeline, which takes them. Not for their
        # defaults: AsyncConnection.execute passes prepare=None, and that one round trip in
        # psycopg's pipeline cost 18% of a page's CPU (bench/README.md, "Sixth session").
        if kwargs.get("prepare") is not None or kwargs.get("binary") is not None:
            started = time.perf_counter()
            try:
                with copy_span(query, self):
                    async with conn.pipeline():
                        await AsyncCursor(conn).execute(*tag)  # a plain cursor: not counted as a statement
                        await AsyncCursor.execute(self, cast(Any, query), params, **kwargs)
            finally:
                record_sql(time.perf_counter() - started)
            return self
        await together(conn, [(self, query, params)], tags=[tag])
        return self


def _tag_for(conn: AsyncConnection[Any], query: Query, *, in_caller_transaction: bool) -> tuple[str, list[str]] | None:
    """The set_config to send before `query` on `conn`: a generic plan for a GenericPlan
    statement on a preparing connection; for any other sharing a transaction with others,
    custom plans again (an earlier statement there may have asked for generic ones)."""
    generic: bool | None = False
    if conn.prepare_threshold is not None:
        if isinstance(query, GenericPlan):
            generic = True
        elif in_caller_transaction:
            generic = None
    # The pool's own name (no spaces): in a transaction, the server reports the tagged name
    # set by the statement before, "<request id> <pool's name>", whose last word it is.
    base = (conn.info.parameter_status("application_name") or "").rsplit(" ", 1)[-1]
    return tag_statement(base, generic=generic)


Statement = tuple[AsyncCursor[Any], Query, Params | None]


def _cursor_tag(
    conn: AsyncConnection[Any], cursor: AsyncCursor[Any], query: Query, shared: bool
) -> tuple[str, list[str]] | None:
    """The tag before `query` on `cursor`: an application_name cursor's, else none (the
    others carry their comment in their text)."""
    return _tag_for(conn, query, in_caller_transaction=shared) if isinstance(cursor, NamedCursor) else None


async def together(
    conn: AsyncConnection[Any],
    statements: Sequence[Statement],
    *,
    tags: Sequence[tuple[str, list[str]] | None] | None = None,
) -> None:
    """Run `statements` (each on its cursor, of `conn`) in one round trip: one libpq pipeline
    and one Sync, so one implicit transaction under autocommit (or the caller's). Each
    cursor gets its own statement's results, as after its execute; the first error is raised.

    On the application_name cursors (NamedCursor), each statement goes behind the set_config
    of its request (`_tag_for`, or `tags`, one per statement, when the caller made them
    already); the others carry their comment in their text.

    What psycopg's pipeline does for a few statements, without its queues and a turn of the
    event loop per command: under load its machinery cost 85 us of CPU a statement, against
    60 us for the statement alone (issue 21). Statements are prepared as psycopg would (its
    cache of prepared statements, by text), and psycopg's own generators do the waiting.

    Not TaggedCursor.execute, nor the instrumentor's traced execute behind it: one span (the
    hand-made one COPY uses, nexes.db.connect.tagged) covers the round trip, whose time is
    the first statement's for Server-Timing (each statement is counted)."""
    if conn._pipeline is not None or conn.pgconn.transaction_status not in (_IDLE, _INTRANS):
        for cursor, query, params in statements:  # nothing to gain: one at a time
            await cursor.execute(cast(Any, query), params)
        return
    started = time.perf_counter()
    try:
        with copy_span(statements[0][1], statements[0][0]):
            async with conn.lock:
                await conn.wait(_together_gen(conn, statements, tags))
    except e._NO_TRACEBACK as ex:
        raise ex.with_traceback(None) from None
    finally:
        record_sql(time.perf_counter() - started)
        for _ in statements[1:]:
            record_sql(0.0)


_Prepared = tuple[Prepare, bytes, Any]  # psycopg's decision, the statement's name, its cache key
_Queued = tuple[AsyncCursor[Any] | None, Query, PostgresQuery, _Prepared]


def _together_gen(
    conn: AsyncConnection[Any],
    statements: Sequence[Statement],
    tags: Sequence[tuple[str, list[str]] | None] | None,
) -> PQGen[None]:
    shared = len(statements) > 1 or conn.pgconn.transaction_status == _INTRANS
    converted = []
    for i, (cursor, query, params) in enumerate(statements):
        yield from cursor._start_query(query)
        tag = tags[i] if tags is not None else _cursor_tag(conn, cursor, query, shared)
        tag_query = None
        if tag is not None:
            tag_query = PostgresQuery(cursor._tx)
            tag_query.convert(*tag)
        converted.append((cursor, query, tag_query, cursor._convert_query(query, params)))
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    groups: list[list[PGresult]] = []
    try:
        queued: list[_Queued] = []
        for cursor, query, tag_query, pgq in converted:
            if tag_query is not None:
                queued.append((None, query, tag_query, _queue(conn, tag_query, TEXT)))
            queued.append((cursor, query, pgq, _queue(conn, pgq, cursor.format)))
        pgconn.pipeline_sync()
        yield from send(pgconn)
        while not groups or not groups[-1] or groups[-1][0].status != _SYNC:
            groups.append((yield from fetch_many(pgconn)))
    finally:
        # Left only once its Sync is read; else (a broken connection) the pool discards it.
        with contextlib.suppress(e.Error):
            if pgconn.pipeline_status != pq.PipelineStatus.OFF and not pgconn.is_busy():
                pgconn.exit_pipeline_mode()
    for owner, query, pgq, prepared in queued:
        results = _answered(conn, prepared, groups)
        if owner is None:  # a tag
            for result in results:
                if result.status == _FATAL:
                    raise e.error_from_result(result, encoding=conn.info.encoding)
            continue
        owner._query = pgq
        owner._check_results(results)
        owner._set_results(results)
        owner._last_query = query
    yield from conn._prepared.maintain_gen(conn)


def _queue(conn: AsyncConnection[Any], query: PostgresQuery, result_format: pq.Format) -> _Prepared:
    """`query` sent into the open pipeline: prepared first when psycopg's cache says so. The
    cache learns of it now, as in psycopg's pipeline, so that the same text later in the
    pipeline (two tags) is not prepared twice; it checks the results once they come."""
    pgconn = conn.pgconn
    prep, name = conn._prepared.get(query, None)
    if prep is Prepare.NO:
        pgconn.send_query_params(query.query, query.params, query.types, query.formats, result_format)
    else:
        if prep is Prepare.SHOULD:
            pgconn.send_prepare(name, query.query, param_types=query.types)
        pgconn.send_query_prepared(name, query.params, param_formats=query.formats, result_format=result_format)
    return prep, name, conn._prepared.maybe_add_to_cache(query, prep, name)


def _answered(conn: AsyncConnection[Any], prepared: _Prepared, groups: list[list[PGresult]]) -> list[PGresult]:
    """The results of one queued query, taken from the front of `groups` (its Parse's first,
    when it was prepared); a failed Parse is raised, and forgotten by psycopg's cache."""
    prep, name, key = prepared
    if prep is Prepare.SHOULD:
        parsed = groups.pop(0)
        if parsed and parsed[0].status == _FATAL:
            if key is not None:
                conn._prepared.validate(key, prep, name, parsed)
            raise e.error_from_result(parsed[0], encoding=conn.info.encoding)
    results = groups.pop(0)
    if key is not None:
        conn._prepared.validate(key, prep, name, results)
    return results


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
