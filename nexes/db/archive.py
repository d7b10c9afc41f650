"""Archive of old quarters: detach from the live tables, attach to the archive tables.

Moving a quarter is metadata only, never a row copy:

1. `DETACH PARTITION ... CONCURRENTLY` takes the quarter out of `service_order`
   (then `service_order_line`) without blocking readers and writers of the live
   table. It cannot run inside a transaction block, so the connection is in
   autocommit. PostgreSQL itself leaves a validated CHECK constraint equal to the
   partition bound on the detached table.
2. A CHECK constraint equal to the bound is made sure of (added only when the
   detach did not leave one, which costs one scan of the standalone table).
3. `ATTACH PARTITION` to `service_order_archive` (`service_order_line_archive`)
   then finds the bound implied by that constraint and does not scan; the
   partition's own indexes match the archive's and are attached, not built.
   The same transaction queues the quarter's orders in `search_outbox`, so they
   leave the search index (see QUEUE_FOR_SEARCH).
4. The bound constraint, now redundant with the partition bound, is dropped.

Every step is derived from the catalog, never from memory, so a run that died
between any two steps is finished by the next one: a detach left "detach
pending" (`pg_inherits.inhdetachpending`, e.g. cancelled while it waited for
older transactions) is completed with `DETACH ... FINALIZE`; a standalone quarter
is attached; a leftover bound constraint is dropped. Orders move before their
lines, so a half-moved quarter never shows a live order without its lines.
Quarters keep their table names, which is how `partitions.ensure` knows never to
create them again in the live tables. `dashboard_stat` counts archived orders
too, so it is not touched. Detaching also cancels long queries on replicas
(docs/facts.md, PostgreSQL), which is why this runs at night, from the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from nexes.db.partitions import next_quarter

log = logging.getLogger(__name__)

LOCK_KEY = 0x6E65786573_0A  # "nexes" + archive; migrate uses 0x6E65786573
# Orders first, then lines: (live table, archive table).
TABLES = (("service_order", "service_order_archive"), ("service_order_line", "service_order_line_archive"))
ARCHIVE_OF = dict(TABLES)
NAME = re.compile(r"(service_order|service_order_line)_(\d{4})q([1-4])")
BOUND_NAME = "nexes_archive_bound"

PARTITIONS = r"""
SELECT c.relname::text, p.relname::text, coalesce(i.inhdetachpending, false)
FROM pg_class AS c
LEFT JOIN pg_inherits AS i ON i.inhrelid = c.oid
LEFT JOIN pg_class AS p ON p.oid = i.inhparent
WHERE c.relkind = 'r'
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'service_order'::regclass)
  AND c.relname ~ '^service_order(_line)?_[0-9]{4}q[1-4]$'
"""

DDL: dict[str, LiteralString] = {
    "finalize": "ALTER TABLE {live} DETACH PARTITION {part} FINALIZE",
    "detach": "ALTER TABLE {live} DETACH PARTITION {part} CONCURRENTLY",
    "attach": "ALTER TABLE {archive} ATTACH PARTITION {part} FOR VALUES FROM ({lo}) TO ({hi})",
}
ADD_BOUND: LiteralString = (
    "ALTER TABLE {part} ADD CONSTRAINT {bound} "
    "CHECK (created_at IS NOT NULL AND created_at >= {lo} AND created_at < {hi})"
)
DROP_BOUND: LiteralString = "ALTER TABLE {part} DROP CONSTRAINT {bound}"
# Archived orders leave the search index: the sync reads each queued order from
# service_order, finds it gone and deletes its document. The rows are written in the
# attach's transaction, before the ATTACH (the quarter is standalone then, so the scan
# holds no lock anyone waits for): a quarter is never in the archive unqueued, and one
# left detached by a dead run is queued when the next run attaches it. Not before the
# detach: a sync that ran first would find the orders still live and re-index them.
# One statement for the quarter (~500k orders at 10M); no trigger sees a detach.
QUEUE_FOR_SEARCH: LiteralString = "INSERT INTO search_outbox (order_id, op) SELECT id, 'delete' FROM {part}"

# Under TimeZone UTC (SET LOCAL by the caller) the deparsed bound is deterministic.
CHECKS = """
SELECT conname::text, pg_get_expr(conbin, conrelid)
FROM pg_constraint WHERE conrelid = %(table)s::regclass AND contype = 'c' AND convalidated
"""


@dataclass(frozen=True)
class Partition:
    """One quarter's table of `table` (a live table's name) and where it hangs now."""

    name: str
    table: str
    start: date
    parent: str | None
    pending: bool

    @property
    def end(self) -> date:
        return next_quarter(self.start)


def archive(
    admin: psycopg.Connection | str, *, after_years: int, now: datetime | None = None, dry_run: bool = False
) -> list[str]:
    """Move every quarter that ended more than `after_years` years ago to the archive; return the steps."""
    if after_years < 0:
        raise ValueError(f"after_years={after_years}: must be zero or more")
    if after_years == 0:
        log.info("archive: off (after_years=0)")
        return []
    cutoff = _years_before(now or datetime.now(UTC), after_years)
    with _connection(admin) as conn:
        if dry_run:
            return [f"{step} {part.name}" for part, step in _plan(conn, cutoff)]
        with _locked(conn):
            done = [_run(conn, part, step) for part, step in _plan(conn, cutoff)]
    log.info("archive: %d step(s), quarters ending before %s", len(done), cutoff.isoformat())
    return done


def _years_before(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year - years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year - years, day=28)


@contextlib.contextmanager
def _connection(admin: psycopg.Connection | str) -> Iterator[psycopg.Connection]:
    if isinstance(admin, str):
        with psycopg.connect(admin, autocommit=True, application_name="nexes-archive") as conn:
            yield conn
        return
    if not admin.autocommit:
        raise ValueError("archive needs an autocommit connection: DETACH CONCURRENTLY cannot run in a transaction")
    yield admin


@contextlib.contextmanager
def _locked(conn: psycopg.Connection) -> Iterator[None]:
    """One archive run at a time (a session lock: this is a direct connection, not PgBouncer)."""
    conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
    try:
        yield
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:  # a broken session released it already
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


def quarter_tables(conn: psycopg.Connection) -> list[Partition]:
    """Every quarterly table of orders and lines, live, detaching, detached or archived."""
    found = []
    for name, parent, pending in conn.execute(PARTITIONS):
        match = NAME.fullmatch(name)
        if match:
            start = date(int(match[2]), 3 * int(match[3]) - 2, 1)
            found.append(Partition(name, match[1], start, parent, pending))
    return found


def _plan(conn: psycopg.Connection, cutoff: datetime) -> list[tuple[Partition, str]]:
    """The steps left, in order: pending detaches first (one blocks every other detach of
    its table), then each due quarter's orders, then its lines."""
    parts = quarter_tables(conn)
    steps: list[tuple[Partition, str]] = []
    for part in parts:
        if part.pending:
            steps.append((part, "finalize"))
            if not _due(part, cutoff):
                log.warning("archive: %s was being detached but is not due; it is left detached", part.name)
    order = {live: i for i, (live, _) in enumerate(TABLES)}
    for part in sorted(parts, key=lambda p: (p.start, order[p.table])):
        if not _due(part, cutoff):
            if part.parent is None and not part.pending:
                log.warning("archive: %s is detached from %s but not due for the archive", part.name, part.table)
            continue
        steps.extend((part, step) for step in _steps(conn, part))
    return steps


def _due(part: Partition, cutoff: datetime) -> bool:
    return datetime.combine(part.end, time(), UTC) < cutoff


def _steps(conn: psycopg.Connection, part: Partition) -> list[str]:
    to_attach = ["bound", "attach", "unbound"]
    if part.parent == part.table:
        return to_attach if part.pending else ["detach", *to_attach]  # pending: "finalize" is planned first
    if part.parent is None:
        return to_attach
    if part.parent == ARCHIVE_OF[part.table] and _bound_constraints(conn, part):
        return ["unbound"]
    return []


def _run(conn: psycopg.Connection, part: Partition, step: str) -> str:
    names = {
        "part": sql.Identifier(part.name),
        "live": sql.Identifier(part.table),
        "archive": sql.Identifier(ARCHIVE_OF[part.table]),
        "lo": _literal(part.start),
        "hi": _literal(part.end),
    }
    if step == "bound":
        if _bound_constraints(conn, part):  # left by DETACH CONCURRENTLY: nothing to scan
            log.info("archive: %s already has its bound constraint", part.name)
        else:  # only after a plain DETACH by hand: one scan of this standalone table
            conn.execute(sql.SQL(ADD_BOUND).format(bound=sql.Identifier(BOUND_NAME), **names))
    elif step == "unbound":
        for constraint in _bound_constraints(conn, part):
            conn.execute(sql.SQL(DROP_BOUND).format(bound=sql.Identifier(constraint), **names))
    elif step == "attach" and part.table == "service_order":
        with conn.transaction():
            queued = conn.execute(sql.SQL(QUEUE_FOR_SEARCH).format(**names)).rowcount
            conn.execute(sql.SQL(DDL[step]).format(**names))
        log.info("archive: %d order(s) of %s queued to leave the search index", queued, part.name)
    else:
        conn.execute(sql.SQL(DDL[step]).format(**names))
    log.info("archive: %s %s", step, part.name)
    return f"{step} {part.name}"


def _literal(day: date) -> sql.Literal:
    return sql.Literal(f"{day.isoformat()} 00:00:00+00")


def _bound_constraints(conn: psycopg.Connection, part: Partition) -> list[str]:
    """The validated CHECK constraints equal to the quarter's bound: ours, or the one a
    concurrent detach adds (named by PostgreSQL, so found by its expression)."""
    expected = (
        f"((created_at IS NOT NULL) AND (created_at >= '{part.start.isoformat()} 00:00:00+00'::timestamp with time "
        f"zone) AND (created_at < '{part.end.isoformat()} 00:00:00+00'::timestamp with time zone))"
    )
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        rows = conn.execute(CHECKS, {"table": part.name}).fetchall()
    return [name for name, expr in rows if name == BOUND_NAME or expr == expected]
