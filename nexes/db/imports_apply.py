"""The SQL of an import job's two phases, each chunk one transaction with its checkpoint.

Stage: parsed rows are COPied into `import_row` (unlogged, re-derivable from the
stored upload) together with `staged_rows`, the checkpoint.
Apply: whole orders, a chunk of SOD numbers at a time in SOD order, are checked as
sets (rows with their own errors, unknown customers and SKUs, conflicting duplicates
of one SOD number in the file), the good ones are staged into `order_write` and
applied, every rejected order's rows are written to `import_error`, and the counts
and `applied_through` (the checkpoint) move in the same transaction.

Every job update is fenced by the lease: `WHERE lease_owner = %(owner)s`. A worker
that lost its lease (it stalled, and another took the job over) updates no row, and
its chunk is rolled back instead of committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg.rows import class_row

from nexes.db import order_write


class LeaseLost(RuntimeError):
    """Another worker owns the job now; this one must stop without committing."""


# A job is claimed at most 50 times; past that the sweep fails it (SWEEP_GIVE_UP), so
# a file that crashes every worker cannot loop forever.
CLAIM = """
UPDATE import_job
SET status = 'RUNNING', lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(lease)s),
    attempts = attempts + 1, started_at = coalesce(started_at, now())
WHERE id = %(job)s AND status IN ('QUEUED', 'RUNNING') AND NOT cancel_requested AND attempts < 50
  AND (lease_until IS NULL OR lease_until < now() OR lease_owner = %(owner)s)
RETURNING phase, staged_rows, applied_through, request_id, trace_context ->> 'traceparent' AS traceparent, format
"""

RENEW = """
UPDATE import_job SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = %(job)s AND lease_owner = %(owner)s AND status = 'RUNNING'
RETURNING cancel_requested
"""

RELEASE = "UPDATE import_job SET lease_until = now() WHERE id = %(job)s AND lease_owner = %(owner)s"


@dataclass(frozen=True)
class Claimed:
    """Where a claimed job stands: its phase and checkpoints, and the ids of the request
    that sent it."""

    phase: str
    staged_rows: int
    applied_through: str | None
    request_id: str | None
    traceparent: str | None
    format: str | None


def claim(conn: psycopg.Connection[Any], params: dict[str, Any]) -> Claimed | None:
    """Take the job's lease (`params`: job, owner, lease seconds); None when it is finished,
    cancelled, leased by another worker or out of attempts."""
    with conn.cursor(row_factory=class_row(Claimed)) as cur:
        return cur.execute(CLAIM, params).fetchone()


def renew(conn: psycopg.Connection[Any], params: dict[str, Any]) -> bool | None:
    """Extend the lease; whether a cancel was requested, or None when the lease is lost."""
    row = conn.execute(RENEW, params).fetchone()
    return None if row is None else bool(row[0])


def release(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """Let the lease run out now, so that a retry can take the job at once."""
    conn.execute(RELEASE, params)


JOB_STAGED_ROWS = "SELECT staged_rows FROM import_job WHERE id = %(job)s"


def job_staged_rows(conn: psycopg.Connection[Any], params: dict[str, Any]) -> int:
    """How many rows the job row says are staged."""
    row = conn.execute(JOB_STAGED_ROWS, params).fetchone()
    return int(row[0]) if row else 0


STAGED_COUNT = "SELECT count(*) FROM import_row WHERE job_id = %(job)s"


def staged_count(conn: psycopg.Connection[Any], params: dict[str, Any]) -> int:
    """How many rows import_row holds for the job."""
    row = conn.execute(STAGED_COUNT, params).fetchone()
    return int(row[0]) if row else 0


# Staging again from the start (import_row lost its rows): back to the `stage` phase;
# `applied_through` stays, so the apply then resumes after the last committed chunk.
RESET_STAGE = """
WITH job AS (
    UPDATE import_job SET staged_rows = 0, phase = 'stage' WHERE id = %(job)s AND lease_owner = %(owner)s
    RETURNING id
)
DELETE FROM import_row WHERE job_id IN (SELECT id FROM job)
"""


def reset_stage(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """Back to the `stage` phase with nothing staged (fenced by the lease)."""
    conn.execute(RESET_STAGE, params)


COPY_ROWS: LiteralString = (
    "COPY import_row (job_id, row_no, sod_number, created_at, customer_code, status, description, currency, "
    "line_no, sku, quantity, unit_price, errors, raw) FROM STDIN"
)

STAGED = """
UPDATE import_job SET staged_rows = staged_rows + %(n)s, format = %(format)s,
       lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = %(job)s AND lease_owner = %(owner)s AND staged_rows = %(before)s
"""


def stage_rows(
    conn: psycopg.Connection[Any], params: dict[str, Any], rows: Sequence[Sequence[Any]], *, before: int, fmt: str
) -> None:
    """COPY `rows` (import_row's columns, job_id first) and move the staging checkpoint from
    `before`, in the caller's transaction; LeaseLost when another worker owns the job."""
    with conn.cursor().copy(COPY_ROWS) as copy:
        for row in rows:
            copy.write_row(row)
    moved = conn.execute(STAGED, {**params, "n": len(rows), "before": before, "format": fmt})
    if moved.rowcount != 1:
        raise LeaseLost(f"import {params['job']}: lease lost while staging")


STAGE_DONE = """
UPDATE import_job SET phase = 'apply', total_rows = staged_rows
WHERE id = %(job)s AND lease_owner = %(owner)s
"""


def stage_done(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """Every row is staged: on to the `apply` phase."""
    conn.execute(STAGE_DONE, params)


# Rows without a usable SOD number belong to no order: reported once, before the chunks.
# The errors are written only when the job's checkpoint moves (a resumed job has moved
# it already), so a job taken over or run again does not report them twice.
ORPHANS = """
WITH job AS (
    UPDATE import_job
    SET applied_through = '',
        failed = failed + (SELECT count(*) FROM import_row WHERE job_id = %(job)s AND sod_number IS NULL),
        processed_rows = processed_rows
            + (SELECT count(*) FROM import_row WHERE job_id = %(job)s AND sod_number IS NULL)
    WHERE id = %(job)s AND lease_owner = %(owner)s AND applied_through IS NULL
    RETURNING id
)
INSERT INTO import_error (job_id, row_no, sod_number, column_name, code, message, raw)
SELECT job.id, r.row_no, NULL, e.value ->> 'column', e.value ->> 'code', e.value ->> 'message', r.raw
FROM job, import_row AS r, jsonb_array_elements(coalesce(r.errors, '[]')) AS e
WHERE r.job_id = %(job)s AND r.sod_number IS NULL
ORDER BY r.row_no
"""


def report_orphans(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """Write the errors of rows without a SOD number, once per job."""
    conn.execute(ORPHANS, params)


APPLIED_THROUGH = "SELECT applied_through FROM import_job WHERE id = %(job)s"


def applied_through(conn: psycopg.Connection[Any], params: dict[str, Any]) -> str:
    """The apply checkpoint: the last SOD number applied ('' before the first chunk)."""
    row = conn.execute(APPLIED_THROUGH, params).fetchone()
    return str(row[0]) if row and row[0] is not None else ""


# The last SOD number of the next chunk (NULL when none is left).
NEXT_UPTO = """
SELECT max(sod_number) FROM (
    SELECT DISTINCT sod_number FROM import_row
    WHERE job_id = %(job)s AND sod_number > %(after)s
    ORDER BY sod_number LIMIT %(orders)s
) AS chunk
"""


def next_upto(conn: psycopg.Connection[Any], params: dict[str, Any], *, after: str, orders: int) -> str | None:
    """The last SOD number of the chunk of `orders` orders after `after`; None when none is left."""
    row = conn.execute(NEXT_UPTO, {**params, "after": after, "orders": orders}).fetchone()
    return None if row is None or row[0] is None else str(row[0])


CHUNK: list[LiteralString] = [
    """
    CREATE TEMP TABLE c_row ON COMMIT DROP AS
    SELECT r.row_no, r.sod_number, r.created_at, r.customer_code, r.status, r.description, r.currency,
           r.line_no, r.sku, r.quantity, r.unit_price, r.errors, r.raw,
           c.id AS customer_id, s.id AS stock_item_id
    FROM import_row AS r
    LEFT JOIN customer AS c ON c.code = r.customer_code
    LEFT JOIN stock_item AS s ON s.sku = r.sku
    WHERE r.job_id = %(job)s AND r.sod_number > %(after)s AND r.sod_number <= %(upto)s
    """,
    """
    CREATE TEMP TABLE c_err ON COMMIT DROP AS
    SELECT r.row_no, r.sod_number, e.value ->> 'column' AS column_name, e.value ->> 'code' AS code,
           e.value ->> 'message' AS message, r.raw
    FROM c_row AS r, jsonb_array_elements(r.errors) AS e
    WHERE r.errors IS NOT NULL
    """,
    """
    INSERT INTO c_err
    SELECT row_no, sod_number, 'customer_code', 'UNKNOWN_CUSTOMER', 'no customer has code ' || customer_code, raw
    FROM c_row WHERE customer_code IS NOT NULL AND customer_id IS NULL
    """,
    """
    INSERT INTO c_err
    SELECT row_no, sod_number, 'sku', 'UNKNOWN_SKU', 'no stock item has SKU ' || sku, raw
    FROM c_row WHERE sku IS NOT NULL AND stock_item_id IS NULL
    """,
    # One SOD number, different order fields or different versions of one line: which
    # one the operator meant is unknowable, so the whole SOD number is rejected.
    """
    INSERT INTO c_err
    SELECT r.row_no, r.sod_number, NULL, 'DUPLICATE_CONFLICT',
           'SOD number ' || r.sod_number || ' appears more than once in this file with different '
           || 'order fields or different versions of a line; keep one version', r.raw
    FROM c_row AS r
    WHERE r.sod_number IN (
        SELECT sod_number FROM c_row WHERE errors IS NULL GROUP BY sod_number
        HAVING count(DISTINCT (created_at, customer_code, status, description, currency)) > 1
        UNION
        SELECT sod_number FROM c_row WHERE errors IS NULL GROUP BY sod_number, line_no
        HAVING count(DISTINCT (sku, quantity, unit_price)) > 1)
      AND NOT EXISTS (SELECT 1 FROM c_err AS e WHERE e.row_no = r.row_no)
    """,
    # The order is the unit: every other row of a rejected order is reported too.
    """
    INSERT INTO c_err
    SELECT r.row_no, r.sod_number, NULL, 'ORDER_REJECTED',
           'order ' || r.sod_number || ' is rejected with its row ' || b.first_row || ' (' || b.first_code || ')',
           r.raw
    FROM c_row AS r
    JOIN (SELECT sod_number, min(row_no) AS first_row, (array_agg(code ORDER BY row_no))[1] AS first_code
          FROM c_err GROUP BY sod_number) AS b USING (sod_number)
    WHERE NOT EXISTS (SELECT 1 FROM c_err AS e WHERE e.row_no = r.row_no)
    """,
    order_write.STAGE_SCRIPT,
    """
    INSERT INTO stage_order
        (sod_number, created_at, created_at_given, customer_id, status, description, currency, mode)
    SELECT DISTINCT ON (sod_number) sod_number, created_at, true, customer_id, status, description, currency, 'upsert'
    FROM c_row AS r
    WHERE NOT EXISTS (SELECT 1 FROM c_err AS e WHERE e.sod_number = r.sod_number)
    ORDER BY sod_number, row_no
    """,
    """
    INSERT INTO stage_line (sod_number, line_no, stock_item_id, quantity, unit_price)
    SELECT DISTINCT ON (sod_number, line_no) sod_number, line_no, stock_item_id, quantity, unit_price
    FROM c_row AS r
    WHERE NOT EXISTS (SELECT 1 FROM c_err AS e WHERE e.sod_number = r.sod_number)
    ORDER BY sod_number, line_no, row_no
    """,
]

# After order_write.APPLY: what the database refused, reported on every row of the order.
CHUNK_RESULTS: list[LiteralString] = [
    """
    INSERT INTO c_err
    SELECT r.row_no, r.sod_number,
           CASE x.field WHEN 'createdAt' THEN 'created_at' WHEN 'status' THEN 'status'
                        WHEN 'sodNumber' THEN 'sod_number' END,
           x.code, x.message, r.raw
    FROM (SELECT sod_number, field, code, message FROM w_order WHERE outcome = 'rejected'
          UNION ALL
          SELECT sod_number, field, code, message FROM w_reject) AS x
    JOIN c_row AS r USING (sod_number)
    """,
    """
    INSERT INTO import_error (job_id, row_no, sod_number, column_name, code, message, raw)
    SELECT %(job)s, row_no, sod_number, column_name, code, message, raw FROM c_err ORDER BY row_no
    """,
]

CHECKPOINT = """
UPDATE import_job
SET inserted = inserted + (SELECT count(*) FROM w_order WHERE outcome = 'inserted'),
    updated = updated + (SELECT count(*) FROM w_order WHERE outcome = 'updated'),
    unchanged = unchanged + (SELECT count(*) FROM w_order WHERE outcome = 'unchanged'),
    failed = failed + (SELECT count(DISTINCT row_no) FROM c_err),
    processed_rows = processed_rows + (SELECT count(*) FROM c_row),
    applied_through = %(upto)s,
    lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = %(job)s AND lease_owner = %(owner)s AND applied_through = %(after)s
RETURNING cancel_requested
"""

# A finished job's audit row (import.finished, with its counts), written by the statement
# that finishes it: by the job's creator when its worker ends it, by the scheduler when
# the sweep does. One per job, whatever its size: the orders themselves write none.
FINISHED_AUDIT = """
INSERT INTO audit_event (actor, action, entity, entity_id, request_id, changes)
SELECT coalesce(%(actor)s::text, created_by, 'system:worker'), 'import.finished', 'ImportJob',
       audit_global_id('ImportJob', id), request_id,
       jsonb_build_object('status', status, 'totalRows', total_rows, 'processedRows', processed_rows,
                          'inserted', inserted, 'updated', updated, 'unchanged', unchanged, 'failed', failed,
                          'message', left(message, 300))
FROM finished
"""

FINISH = (
    """
WITH finished AS (
UPDATE import_job
SET status = (CASE WHEN %(status)s::text IS NOT NULL THEN %(status)s::text
                   WHEN failed > 0 THEN 'PARTIAL' ELSE 'SUCCEEDED' END)::import_status,
    phase = 'done', message = %(message)s, finished_at = now(), lease_owner = NULL, lease_until = NULL,
    lsn = pg_current_wal_lsn(), expires_at = now() + make_interval(days => %(retention)s)
WHERE id = %(job)s AND lease_owner = %(owner)s
RETURNING *
), audited AS ("""
    + FINISHED_AUDIT
    + """)
SELECT status::text FROM finished
"""
)

DROP_STAGED = "DELETE FROM import_row WHERE job_id = %(job)s"


def finish(
    conn: psycopg.Connection[Any], params: dict[str, Any], *, status: str | None, message: str | None, retention: int
) -> str | None:
    """End the job (`status`, or PARTIAL/SUCCEEDED from its counts) and drop its staged rows,
    in the caller's transaction; the final status, or None when the lease is lost."""
    values = {**params, "status": status, "message": message, "retention": retention, "actor": None}
    row = conn.execute(FINISH, values).fetchone()
    if row is None:
        return None
    conn.execute(DROP_STAGED, params)
    return str(row[0])


class StagedRowsLost(RuntimeError):
    """import_row lost the job's rows (a server crash empties an unlogged table, and so
    does a failover: a promoted replica has none): the job must stage again."""


def run_chunk_cold(conn: psycopg.Connection[Any], params: dict[str, Any]) -> int:
    """Apply one chunk of orders (SOD numbers in (after, upto]) in the caller's
    transaction, first part: the checks and the chunk's own rows (orders, lines,
    movements), nothing another chunk of the same job waits for, so chunks can run
    this part side by side. run_chunk_hot finishes the chunk. Returns the chunk's rows."""
    rows = conn.execute(CHUNK[0], params).rowcount
    if rows < 1:
        # NEXT_UPTO saw at least one row in (after, upto]: none now means the staged
        # rows are gone, and committing this chunk's checkpoint would skip its orders.
        raise StagedRowsLost(f"import job {params['job']}: no staged rows in ({params['after']!r}, {params['upto']!r}]")
    for statement in CHUNK[1:]:
        conn.execute(statement, params if "%(" in statement else None)
    conn.execute(order_write.APPLY_COLD_SCRIPT)
    return rows


def run_chunk_hot(conn: psycopg.Connection[Any], params: dict[str, Any]) -> bool:
    """The rest, after run_chunk_cold in the same transaction: the shared rows (stats,
    stock), the errors and the checkpoint, fenced by the lease; returns whether a cancel
    was requested. Chunks of one job run it in their order: the checkpoint needs the
    previous chunk's."""
    conn.execute(order_write.APPLY_HOT_SCRIPT)
    for statement in CHUNK_RESULTS:
        conn.execute(statement, params if "%(" in statement else None)
    row = conn.execute(CHECKPOINT, params).fetchone()
    if row is None:
        raise LeaseLost(f"import job {params['job']}: lease lost; chunk not committed")
    return bool(row[0])


# The scheduler's sweep: jobs whose worker died (lease ran out: sent again at most once
# per lease), and QUEUED jobs whose message may be lost (a dead worker had prefetched
# it: sent again at most once per three leases, so a job waiting behind others is not
# flooded with copies). A cancel asked of a dead job is
# done here. Returns the ids to send again; marks them sent.
SWEEP_CANCEL = (
    """
WITH finished AS (
UPDATE import_job
SET status = 'CANCELLED', phase = 'done', finished_at = now(), lease_owner = NULL, lease_until = NULL,
    message = 'cancelled on request; orders applied before stay', lsn = pg_current_wal_lsn(),
    expires_at = now() + make_interval(days => %(retention)s)
WHERE status = 'RUNNING' AND cancel_requested AND lease_until < now()
RETURNING *
), audited AS ("""
    + FINISHED_AUDIT
    + """)
SELECT id FROM finished
"""
)

SWEEP_GIVE_UP = (
    """
WITH finished AS (
UPDATE import_job
SET status = 'FAILED', phase = 'done', finished_at = now(), lease_owner = NULL, lease_until = NULL,
    message = 'gave up after ' || attempts || ' attempts; the worker logs (request id ' || coalesce(request_id, '-')
              || ') say why. Orders applied before stay.',
    lsn = pg_current_wal_lsn(), expires_at = now() + make_interval(days => %(retention)s)
WHERE status IN ('QUEUED', 'RUNNING') AND attempts >= 50 AND (lease_until IS NULL OR lease_until < now())
RETURNING *
), audited AS ("""
    + FINISHED_AUDIT
    + """)
SELECT id FROM finished
"""
)

SWEEP = """
UPDATE import_job SET enqueued_at = now()
WHERE id IN (
    SELECT id FROM import_job
    WHERE (status = 'RUNNING' AND lease_until < now()
           AND coalesce(enqueued_at, created_at) < now() - make_interval(secs => %(lease)s))
       OR (status = 'QUEUED' AND lease_until IS NULL
           AND coalesce(enqueued_at, created_at) < now() - make_interval(secs => 3 * %(lease)s))
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""

MARK_ENQUEUED = "UPDATE import_job SET enqueued_at = now() WHERE id = %(job)s"


class Swept(NamedTuple):
    cancelled: list[int]
    given_up: list[int]
    resend: list[int]


def sweep(conn: psycopg.Connection[Any], *, retention: int, lease: float, actor: str) -> Swept:
    """The sweep's three steps (each its own statement): cancel, give up (each ending writes
    its job's import.finished audit row, by `actor`), pick the jobs to send again."""
    days = {"retention": retention, "actor": actor}
    cancelled = [int(r[0]) for r in conn.execute(SWEEP_CANCEL, days)]
    given_up = [int(r[0]) for r in conn.execute(SWEEP_GIVE_UP, days)]
    resend = [int(r[0]) for r in conn.execute(SWEEP, {"lease": lease})]
    return Swept(cancelled, given_up, resend)


# Retention: finished jobs past expires_at, and abandoned uploads, go with their chunks
# and errors (ON DELETE CASCADE); staged rows of vanished jobs go too.
PURGE = """
WITH gone AS (
    DELETE FROM import_job
    WHERE id IN (SELECT id FROM import_job WHERE expires_at < now()
                 AND status IN ('UPLOADING', 'SUCCEEDED', 'PARTIAL', 'FAILED', 'CANCELLED')
                 ORDER BY id LIMIT %(limit)s)
    RETURNING id
), staged AS (
    DELETE FROM import_row WHERE job_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone
"""


def purge(conn: psycopg.Connection[Any], limit: int) -> int:
    """Delete up to `limit` expired jobs; how many went."""
    row = conn.execute(PURGE, {"limit": limit}).fetchone()
    return int(row[0]) if row else 0
