"""Search's SQL: the outbox claim, order documents (fresh on the primary, streamed from a
replica for a reindex), reindex bookkeeping, sync lag, and the pg_trgm fallback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import args_row

# Advisory-lock namespace of the per-order sync lock (the two-int form keeps it apart
# from every single-bigint lock, such as the migrations').
ORDER_LOCK_SPACE = 0x5EA5
# The reindex gate, (REINDEX_GATE_SPACE, 0): held shared by every sync batch, alone by a
# reindex's finish (see SYNC_GATE).
REINDEX_GATE_SPACE = 0x5EA6


class DocRow(NamedTuple):
    """What the search index holds of one order."""

    id: int
    sod_number: str
    customer_name: str
    customer_code: str
    description: str
    status: str
    currency: str
    created_at: datetime
    total_amount: Decimal
    updated_at: datetime


DOC_ROW = args_row(DocRow)

CLAIM = "SELECT id, order_id FROM search_outbox ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
# Try-locks: an order another sync holds is skipped (its rows stay for later), never waited for.
LOCK_ORDERS = (
    "SELECT t.id FROM unnest(%(ids)s::bigint[]) AS t(id) "
    "WHERE pg_try_advisory_xact_lock(%(space)s, (t.id %% 2147483647)::int) ORDER BY t.id"
)
# The customer is looked up per order through its primary key, behind a fence (OFFSET 0
# keeps the subquery from being flattened into a plain join). The planner estimates the
# key-to-partition join at one row whatever the batch holds, and with a plain join it
# chose a nested loop over a sequential scan of customer: 25M rows filtered for a batch
# of 1,000 orders, 1.7-2.6 s instead of milliseconds (10M orders, 50k customers).
FRESH_DOCUMENTS = (
    "SELECT o.id, o.sod_number, c.name, c.code, o.description, o.status::text, o.currency, o.created_at, "
    "o.total_amount, o.updated_at FROM service_order_key AS k "
    "JOIN service_order AS o ON o.id = k.id AND o.created_at = k.created_at "
    "CROSS JOIN LATERAL (SELECT name, code FROM customer WHERE id = o.customer_id OFFSET 0) AS c "
    "WHERE k.id = ANY(%(ids)s)"
)
DELETE_HANDLED = "DELETE FROM search_outbox WHERE id = ANY(%(ids)s)"
# The finish takes the gate alone, so it waits for every sync that saw the run running, and
# the changes those syncs record are all there when it queues them again. An advisory lock,
# not FOR SHARE on the run's row: a share locker of a row others share-lock does not queue
# behind a waiting UPDATE (README.tuplock), so overlapping syncs kept the finish, and every
# heartbeat, waiting until they happened to leave a gap: over 60 s in a test, unbounded by
# lock_timeout (each new set of lockers is a new wait), so the worker's statement_timeout
# cut the reindex's stream short. The lock manager queues a later sync behind the waiting
# finish, and heartbeats take nothing a sync holds.
SYNC_GATE = "SELECT pg_advisory_xact_lock_shared(%(space)s, 0)"
FINISH_GATE = "SELECT pg_advisory_xact_lock(%(space)s, 0)"
# A statement of its own, after the gate: under READ COMMITTED its snapshot is taken once the
# gate is held, so a sync that waited behind a finish sees the run finished.
RUNNING_REINDEX = "SELECT id FROM search_reindex WHERE finished_at IS NULL"
RECORD_CHANGES = (
    "INSERT INTO search_reindex_change (reindex_id, order_id) SELECT %(run)s, unnest(%(ids)s::bigint[]) "
    "ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True)
class Claim:
    """Outbox rows of one sync transaction: every claimed row id per order it locked."""

    rows_by_order: dict[int, list[int]]


def claim(conn: psycopg.Connection[Any], limit: int) -> Claim:
    """Claim up to `limit` outbox rows and lock their orders (inside the caller's transaction)."""
    rows = conn.execute(CLAIM, {"limit": limit}).fetchall()
    by_order: dict[int, list[int]] = {}
    for row_id, order_id in rows:
        by_order.setdefault(order_id, []).append(row_id)
    if not by_order:
        return Claim({})
    locked = conn.execute(LOCK_ORDERS, {"ids": sorted(by_order), "space": ORDER_LOCK_SPACE}).fetchall()
    return Claim({order_id: by_order[order_id] for (order_id,) in locked})


def fresh_documents(conn: psycopg.Connection[Any], order_ids: Sequence[int]) -> list[DocRow]:
    """The current state of these live orders; a missing id was deleted or archived."""
    with conn.cursor(row_factory=DOC_ROW) as cur:
        return cur.execute(FRESH_DOCUMENTS, {"ids": list(order_ids)}).fetchall()


def delete_handled(conn: psycopg.Connection[Any], row_ids: Sequence[int]) -> int:
    """Delete the outbox rows the sync has written; rows added since stay."""
    return conn.execute(DELETE_HANDLED, {"ids": list(row_ids)}).rowcount


def running_reindex(conn: psycopg.Connection[Any]) -> int | None:
    """The unfinished reindex run, with the gate held shared until the caller commits (call it before
    writing to Typesense: a run that finishes after this waits, and one finished before it has swapped)."""
    conn.execute(SYNC_GATE, {"space": REINDEX_GATE_SPACE})
    row = conn.execute(RUNNING_REINDEX).fetchone()
    return int(row[0]) if row else None


def record_changes(conn: psycopg.Connection[Any], run: int, order_ids: Sequence[int]) -> None:
    """Remember the orders this sync wrote while reindex `run` builds its collection."""
    conn.execute(RECORD_CHANGES, {"run": run, "ids": list(order_ids)})


# --- reindex -------------------------------------------------------------------------

# A dead run may have swapped the alias already (its finish failed after the swap): the
# orders the sync wrote during it are queued again, as its finish would have, in case the
# collection behind the alias is the one it built. A sync of an unchanged order is harmless.
ABANDON_STALE = """
WITH stale AS (
    UPDATE search_reindex SET finished_at = now(), outcome = 'abandoned'
    WHERE finished_at IS NULL AND heartbeat_at < now() - make_interval(secs => %(stale)s) RETURNING id
), requeued AS (
    INSERT INTO search_outbox (order_id, op)
    SELECT order_id, 'upsert' FROM search_reindex_change WHERE reindex_id IN (SELECT id FROM stale)
)
DELETE FROM search_reindex_change WHERE reindex_id IN (SELECT id FROM stale)
"""
START_REINDEX = "INSERT INTO search_reindex (collection) VALUES (%(collection)s) ON CONFLICT DO NOTHING RETURNING id"
HEARTBEAT = "UPDATE search_reindex SET heartbeat_at = now(), documents = %(documents)s WHERE id = %(run)s"
FINISH_REINDEX = (
    "UPDATE search_reindex SET finished_at = now(), outcome = %(outcome)s, documents = %(documents)s "
    "WHERE id = %(run)s AND finished_at IS NULL RETURNING id"
)
REQUEUE_CHANGES = (
    "INSERT INTO search_outbox (order_id, op) SELECT order_id, 'upsert' FROM search_reindex_change "
    "WHERE reindex_id = %(run)s"
)
FORGET_CHANGES = "DELETE FROM search_reindex_change WHERE reindex_id = %(run)s"
CURRENT_LSN = "SELECT pg_current_wal_lsn()::text"
# On a standby: has it replayed that far? On a primary (no replicas configured): yes.
REPLAYED = "SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %(lsn)s::pg_lsn"
# Why a standby is behind: WAL not arriving (received stands still), or not replayed
# (received ahead: replay paused, or waiting out a recovery conflict).
STANDBY_POSITION = (
    "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
    "pg_is_wal_replay_paused(), pg_last_xact_replay_timestamp()::text"
)
REINDEX_DOCUMENTS = (
    "SELECT o.id, o.sod_number, c.name, c.code, o.description, o.status::text, o.currency, o.created_at, "
    "o.total_amount, o.updated_at FROM service_order AS o JOIN customer AS c ON c.id = o.customer_id"
)
# The live partitions' row estimates (reltuples is -1 until a partition is first analyzed).
ESTIMATE_ORDERS = (
    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits AS i "
    "JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = 'service_order'::regclass"
)
COUNT_ORDERS = "SELECT count(*) FROM service_order"


# A reindex asked for (by a bulk load, or by the drift check's counts) is started by the
# sweep when none runs and none started in the last `every` seconds: while Typesense is
# down or still loading, each attempt fails at once, and a sweep every few seconds would
# otherwise send a new one each time. A swapped reindex clears the flag.
# The flag is raised and cleared through two functions (migration 0030): the workers may
# call them, and write no maintenance_flag row themselves.
ASK_REINDEX = "SELECT search_reindex_ask()"
REINDEX_WANTED = """
SELECT EXISTS (SELECT 1 FROM maintenance_flag WHERE name = 'search_reindex_needed')
   AND NOT EXISTS (SELECT 1 FROM search_reindex
                   WHERE finished_at IS NULL OR started_at > now() - make_interval(secs => %(every)s))
"""
_REINDEX_DONE = "SELECT search_reindex_done()"


def reindex_done(conn: psycopg.Connection[Any]) -> None:
    """The asked-for reindex has run: the sweep stops asking for one."""
    conn.execute(_REINDEX_DONE)


def ask_reindex(conn: psycopg.Connection[Any]) -> None:
    conn.execute(ASK_REINDEX)


def reindex_wanted(conn: psycopg.Connection[Any], every: float) -> bool:
    """Whether the sweep should start the reindex that was asked for, now."""
    row = conn.execute(REINDEX_WANTED, {"every": every}).fetchone()
    return bool(row and row[0])


def start_reindex(conn: psycopg.Connection[Any], collection: str, *, stale_after: float) -> int | None:
    """Register a run (None while another live run holds the slot); takes over dead ones."""
    with conn.transaction():
        conn.execute(ABANDON_STALE, {"stale": stale_after})
        row = conn.execute(START_REINDEX, {"collection": collection}).fetchone()
    return int(row[0]) if row else None


def heartbeat(conn: psycopg.Connection[Any], run: int, documents: int) -> None:
    """Record progress; it never waits for syncs (they lock nothing of the run's row)."""
    conn.execute(HEARTBEAT, {"run": run, "documents": documents})


def finish_reindex(conn: psycopg.Connection[Any], run: int, documents: int, *, swapped: bool) -> int:
    """Close the run; when it swapped, queue every order the sync wrote meanwhile. Returns that count."""
    with conn.transaction():
        conn.execute(FINISH_GATE, {"space": REINDEX_GATE_SPACE})
        done = conn.execute(
            FINISH_REINDEX, {"run": run, "documents": documents, "outcome": "swapped" if swapped else "abandoned"}
        ).fetchone()
        if done is None or not swapped:
            conn.execute(FORGET_CHANGES, {"run": run})
            return 0
        queued = conn.execute(REQUEUE_CHANGES, {"run": run}).rowcount
        conn.execute(FORGET_CHANGES, {"run": run})
    return queued


def current_lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(CURRENT_LSN).fetchone()
    assert row is not None
    return str(row[0])


def replayed(conn: psycopg.Connection[Any], lsn: str) -> bool:
    row = conn.execute(REPLAYED, {"lsn": lsn}).fetchone()
    return bool(row and row[0])


def standby_position(conn: psycopg.Connection[Any]) -> str:
    """Where a standby stands, for an operator reading why it is behind."""
    row = conn.execute(STANDBY_POSITION).fetchone()
    if row is None:
        return "unknown"
    received, replayed_to, paused, last_replayed = row
    return (
        f"received up to {received}, replayed up to {replayed_to}"
        f"{' (replay paused)' if paused else ''}, last transaction replayed at {last_replayed}"
    )


def estimate_orders(conn: psycopg.Connection[Any]) -> int:
    """The planner's estimate of live orders (progress only; 0 when never analyzed)."""
    row = conn.execute(ESTIMATE_ORDERS).fetchone()
    return int(row[0]) if row else 0


class LatestReindex(NamedTuple):
    collection: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    documents: int
    estimated_total: int


# The latest reindex, and the live partitions' row estimate (ESTIMATE_ORDERS' figure, the
# one `nexes reindex` shows) to set its progress against.
LATEST_REINDEX = """
SELECT collection, started_at, finished_at, outcome, documents,
       (SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits AS i
        JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = 'service_order'::regclass)
FROM search_reindex ORDER BY id DESC LIMIT 1
"""


async def latest_reindex(conn: AsyncConnection[Any]) -> LatestReindex | None:
    """The latest reindex run (running or done), or None before the first."""
    async with conn.cursor(row_factory=args_row(LatestReindex)) as cur:
        await cur.execute(LATEST_REINDEX)
        return await cur.fetchone()


def stream_documents(conn: psycopg.Connection[Any], batch: int) -> Iterator[list[DocRow]]:
    """Every live order, through a server-side cursor, `batch` rows at a time (constant memory).
    The caller holds the transaction (one snapshot for the whole stream)."""
    with conn.cursor(name="nexes_reindex", row_factory=DOC_ROW) as cur:
        cur.itersize = batch
        cur.execute(REINDEX_DOCUMENTS)
        while rows := cur.fetchmany(batch):
            yield rows


# --- lag and drift -------------------------------------------------------------------

OLDEST_PENDING = (
    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(enqueued_at)), 0)::float8 FROM search_outbox"
)
QUEUE_REPAIRS = "INSERT INTO search_outbox (order_id, op) SELECT unnest(%(ids)s::bigint[]), 'upsert'"
ORDERS_EXIST = (
    "SELECT k.id FROM service_order_key AS k JOIN service_order AS o ON o.id = k.id AND o.created_at = k.created_at "
    "WHERE k.id = ANY(%(ids)s)"
)


async def outbox_lag(conn: AsyncConnection[Any]) -> tuple[int, float]:
    """Pending outbox rows, and the age in seconds of the oldest (0 when empty)."""
    cur = await conn.execute(OLDEST_PENDING)
    row = await cur.fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def outbox_lag_sync(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    row = conn.execute(OLDEST_PENDING).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def count_orders(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(COUNT_ORDERS).fetchone()
    return int(row[0]) if row else 0


SAMPLE_IDS = "SELECT id FROM service_order_key TABLESAMPLE BERNOULLI (%(pct)s) LIMIT %(n)s"
KEY_ESTIMATE = "SELECT greatest(reltuples, 1)::float8 FROM pg_class WHERE relname = 'service_order_key'"


def random_documents(conn: psycopg.Connection[Any], n: int) -> list[DocRow]:
    """About `n` random live orders as documents (a Bernoulli sample: cheap at any size)."""
    row = conn.execute(KEY_ESTIMATE).fetchone()
    pct = min(100.0, 400.0 * n / float(row[0])) if row else 100.0
    ids = [i for (i,) in conn.execute(SAMPLE_IDS, {"pct": pct, "n": n}).fetchall()]
    return fresh_documents(conn, ids)


def existing_orders(conn: psycopg.Connection[Any], ids: Sequence[int]) -> set[int]:
    """Which of these ids are live orders."""
    return {i for (i,) in conn.execute(ORDERS_EXIST, {"ids": list(ids)}).fetchall()}


def queue_repairs(conn: psycopg.Connection[Any], order_ids: Sequence[int]) -> int:
    """Queue these orders for the sync (which re-reads each: upsert, or delete when gone)."""
    return conn.execute(QUEUE_REPAIRS, {"ids": list(order_ids)}).rowcount


# --- the pg_trgm fallback ------------------------------------------------------------

# Each branch is index-driven (trigram GIN, or the (customer_id, created_at) index) and
# ordered and limited on its own, so the planner can stop early on common words; the
# union is bounded by `cap` per branch, which bounds `found` too.
FALLBACK = sql.SQL("""
WITH matched AS (
    (SELECT o.id, o.created_at FROM service_order AS o
     WHERE o.sod_number ILIKE %(like)s AND {conds} ORDER BY o.created_at DESC, o.id DESC LIMIT %(cap)s)
    UNION
    (SELECT o.id, o.created_at FROM service_order AS o
     WHERE o.description ILIKE %(like)s AND {conds} ORDER BY o.created_at DESC, o.id DESC LIMIT %(cap)s)
    UNION
    (SELECT o.id, o.created_at FROM service_order AS o
     WHERE o.customer_id IN (SELECT id FROM customer WHERE name %% %(q)s OR code ILIKE %(like)s
                             ORDER BY similarity(name, %(q)s) DESC LIMIT 200)
       AND {conds}
     ORDER BY o.created_at DESC, o.id DESC LIMIT %(cap)s)
)
SELECT m.id, greatest(similarity(o.sod_number, %(q)s), similarity(c.name, %(q)s),
                      word_similarity(%(q)s, o.description))::float8 AS score,
       o.sod_number, c.name, o.description
FROM (SELECT id, created_at FROM matched ORDER BY created_at DESC, id DESC LIMIT %(cap)s) AS m
JOIN service_order AS o ON o.id = m.id AND o.created_at = m.created_at
CROSS JOIN LATERAL (SELECT name FROM customer WHERE id = o.customer_id OFFSET 0) AS c  -- see FRESH_DOCUMENTS
ORDER BY m.created_at DESC, m.id DESC
""")
CONDITIONS = sql.SQL(
    "(cardinality(%(statuses)s::text[]) = 0 OR o.status::text = ANY(%(statuses)s::text[])) "
    "AND (%(from)s::timestamptz IS NULL OR o.created_at >= %(from)s::timestamptz) "
    "AND (%(to)s::timestamptz IS NULL OR o.created_at < %(to)s::timestamptz)"
)


class FallbackHit(NamedTuple):
    id: int
    score: float
    sod_number: str
    customer_name: str
    description: str


FALLBACK_HIT = args_row(FallbackHit)


def like_pattern(text: str) -> str:
    """`text` as a literal substring pattern for ILIKE."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def fallback_search(
    conn: AsyncConnection[Any],
    query: str,
    *,
    statuses: Sequence[str],
    created_from: datetime | None,
    created_to: datetime | None,
    cap: int,
) -> list[FallbackHit]:
    """Up to `cap` orders matching `query` by SOD infix, description substring, or a
    customer whose name is similar (typos) or whose code contains it; newest first."""
    params = {
        "q": query,
        "like": like_pattern(query),
        "cap": cap,
        "statuses": list(statuses),
        "from": created_from,
        "to": created_to,
    }
    async with conn.cursor(row_factory=FALLBACK_HIT) as cur:
        await cur.execute(FALLBACK.format(conds=CONDITIONS), params)
        return await cur.fetchall()
