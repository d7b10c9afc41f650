"""The one write path for orders: stage, then apply set-based, in the caller's transaction.

Mutations stage one order, imports a chunk of thousands; both then run the same
statements, so stock is moved by one piece of SQL only. The caller fills two temp
tables (`stage_order`, `stage_line`: valid rows, one per order and per order line)
and calls `apply` inside a transaction; each staged order gets an outcome in
`w_order`: inserted, updated, unchanged, or rejected with a code and a message.

How exactly-once holds, whatever is retried:
- Every staged order takes its `service_order_key` row in one INSERT ... ON CONFLICT
  DO UPDATE (sorted by SOD number, so concurrent batches cannot deadlock), which
  creates the key of a new order and locks, and bumps the revision of, an existing one.
- Under that lock, each line's stock correction is its target (minus its quantity, or
  0 when the order is CANCELLED or the line is gone) minus the sum of the movements it
  already has. A retry of a committed change finds nothing left to move; a rolled-back
  one left nothing behind. Movements are keyed order:<sod>:<line>:<revision>:<item>.
- Rows, movements, on-hand, dashboard deltas (and, by trigger, the search outbox and
  the monthly rollup) are all written in the caller's one transaction.
- Hot rows (customer stats, stock items, dashboard buckets) are locked last (APPLY_HOT)
  and in key order, so they are held briefly and never in crossing orders.

Lookups of existing orders join the partitioned tables on (id, created_at): nested
loops with run-time partition pruning. Hash joins would scan every partition, so they
are switched off (SET LOCAL) around those statements only (NESTED_ON / NESTED_OFF);
joins between the small temp tables keep their hash joins.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, LiteralString

import psycopg
from psycopg.pq import TransactionStatus

STAGE: list[LiteralString] = [
    """
    CREATE TEMP TABLE stage_order (
        sod_number       text PRIMARY KEY,
        created_at       timestamptz NOT NULL,
        created_at_given boolean NOT NULL DEFAULT true,
        customer_id      bigint NOT NULL,
        status           order_status NOT NULL,
        description      text NOT NULL,
        currency         char(3) NOT NULL,
        expected_updated_at timestamptz,
        -- create: an existing order that differs is DUPLICATE_CONFLICT; upsert: it is updated.
        mode             text NOT NULL CHECK (mode IN ('create', 'upsert'))
    ) ON COMMIT DROP
    """,
    """
    CREATE TEMP TABLE stage_line (
        sod_number    text NOT NULL,
        line_no       smallint NOT NULL,
        stock_item_id bigint NOT NULL,
        quantity      integer NOT NULL,
        unit_price    numeric(12, 2) NOT NULL,
        PRIMARY KEY (sod_number, line_no)
    ) ON COMMIT DROP
    """,
]

NESTED_ON: LiteralString = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
NESTED_OFF: LiteralString = "SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on"

APPLY: list[LiteralString] = [
    # The planner's cost for the nested loops over every partition passes the JIT
    # thresholds; compiling took 710 of w_order's 813 ms per 5,000-order chunk at 10M
    # (bench/README.md), for joins that run in milliseconds.
    "SET LOCAL jit = off",
    # customer_stat_month and customer_stat_cum are folded below, among the hot rows (their
    # triggers stand aside: 0024, 0027).
    "SET LOCAL nexes.customer_stat_by_caller = on",
    "ANALYZE stage_order",
    "ANALYZE stage_line",
    # Orders whose created_at no live partition holds are refused before any key is made.
    """
    CREATE TEMP TABLE w_reject ON COMMIT DROP AS
    SELECT s.sod_number, 'CREATED_AT_OUT_OF_RANGE'::text AS code, 'createdAt'::text AS field,
           'created_at ' || to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           || ' falls in no live quarter (older than the oldest, archived, or too far ahead)' AS message
    FROM stage_order AS s
    WHERE s.created_at_given AND NOT EXISTS (
        SELECT 1 FROM w_bounds AS b WHERE s.created_at >= b.lo AND s.created_at < b.hi)
      AND NOT EXISTS (SELECT 1 FROM service_order_key AS k WHERE k.sod_number = s.sod_number)
    """,
    """
    CREATE TEMP TABLE w_key ON COMMIT DROP AS
    WITH k AS (
        INSERT INTO service_order_key AS k (sod_number, created_at)
        SELECT s.sod_number, s.created_at FROM stage_order AS s
        WHERE NOT EXISTS (SELECT 1 FROM w_reject AS r WHERE r.sod_number = s.sod_number)
        ORDER BY s.sod_number
        ON CONFLICT (sod_number) DO UPDATE SET revision = k.revision + 1
        RETURNING k.sod_number, k.id, k.created_at, k.revision, (k.xmax = 0) AS inserted
    )
    SELECT * FROM k
    """,
    "ANALYZE w_key",
    NESTED_ON,
    """
    CREATE TEMP TABLE w_order ON COMMIT DROP AS
    SELECT s.sod_number, k.id, k.inserted, k.revision,
           CASE WHEN s.created_at_given THEN s.created_at ELSE k.created_at END AS created_at,
           k.created_at AS key_created_at,
           s.customer_id, s.status, s.description, s.currency, s.expected_updated_at, s.mode,
           coalesce((SELECT sum(l.quantity * l.unit_price) FROM stage_line AS l WHERE l.sod_number = s.sod_number), 0)
               ::numeric(14, 2) AS total_amount,
           o.id IS NOT NULL AS live,
           o.customer_id AS old_customer_id, o.status AS old_status, o.description AS old_description,
           o.currency AS old_currency, o.total_amount AS old_total, o.updated_at AS old_updated_at,
           NULL::text AS outcome, NULL::text AS code, NULL::text AS field, NULL::text AS message
    FROM stage_order AS s
    JOIN w_key AS k USING (sod_number)
    LEFT JOIN service_order AS o ON NOT k.inserted AND o.id = k.id AND o.created_at = k.created_at
    """,
    NESTED_OFF,
    "ANALYZE w_order",
    # The existing lines of the existing orders, to compare and to correct.
    NESTED_ON,
    """
    CREATE TEMP TABLE w_old_line ON COMMIT DROP AS
    SELECT w.sod_number, l.line_no, l.stock_item_id, l.quantity, l.unit_price
    FROM w_order AS w
    JOIN service_order_line AS l ON l.order_id = w.id AND l.created_at = w.key_created_at
    WHERE w.live
    """,
    NESTED_OFF,
    """
    UPDATE w_order SET outcome = 'rejected', code = 'BAD_USER_INPUT', field = 'createdAt',
           message = 'created_at differs from the existing order''s ('
               || to_char(key_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
               || '); an order''s created_at never changes'
    WHERE NOT inserted AND created_at <> key_created_at
    """,
    """
    UPDATE w_order SET outcome = 'rejected', code = 'DUPLICATE_CONFLICT', field = 'sodNumber',
           message = sod_number || ' belongs to an archived order; archived orders are read-only'
    WHERE outcome IS NULL AND NOT inserted AND NOT live
    """,
    """
    UPDATE w_order AS w SET outcome = 'unchanged'
    WHERE outcome IS NULL AND live
      AND (customer_id, status, description, currency) = (old_customer_id, old_status, old_description, old_currency)
      AND NOT EXISTS (
          (SELECT line_no, stock_item_id, quantity, unit_price FROM stage_line AS l WHERE l.sod_number = w.sod_number
           EXCEPT
           SELECT line_no, stock_item_id, quantity, unit_price FROM w_old_line AS o WHERE o.sod_number = w.sod_number)
          UNION ALL
          (SELECT line_no, stock_item_id, quantity, unit_price FROM w_old_line AS o WHERE o.sod_number = w.sod_number
           EXCEPT
           SELECT line_no, stock_item_id, quantity, unit_price FROM stage_line AS l WHERE l.sod_number = w.sod_number))
    """,
    """
    UPDATE w_order SET outcome = 'rejected', code = 'DUPLICATE_CONFLICT', field = 'sodNumber',
           message = sod_number || ' exists with different content; use updateServiceOrder to change it'
    WHERE outcome IS NULL AND live AND mode = 'create'
    """,
    """
    UPDATE w_order SET outcome = 'rejected', code = 'CONFLICT', field = 'expectedUpdatedAt',
           message = sod_number || ' was updated at '
               || to_char(old_updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
               || ', after the expected time; read it again and retry'
    WHERE outcome IS NULL AND live AND expected_updated_at IS NOT NULL AND expected_updated_at <> old_updated_at
    """,
    # The allowed steps: adjacent ones forward, or any non-final state to CANCELLED (docs/design.md §3).
    """
    UPDATE w_order SET outcome = 'rejected', code = 'INVALID_TRANSITION', field = 'status',
           message = CASE WHEN old_status IN ('COMPLETED', 'CANCELLED')
                          THEN sod_number || ' is ' || old_status || ', which is final; it cannot change'
                          ELSE sod_number || ' cannot go from ' || old_status || ' to ' || status
                               || ' (DRAFT > OPEN > IN_PROGRESS > COMPLETED, or a non-final state > CANCELLED)' END
    WHERE outcome IS NULL AND live
      AND (old_status IN ('COMPLETED', 'CANCELLED')
           OR (old_status <> status AND (old_status::text, status::text) NOT IN (
               ('DRAFT', 'OPEN'), ('OPEN', 'IN_PROGRESS'), ('IN_PROGRESS', 'COMPLETED'),
               ('DRAFT', 'CANCELLED'), ('OPEN', 'CANCELLED'), ('IN_PROGRESS', 'CANCELLED'))))
    """,
    """
    UPDATE w_order SET outcome = CASE WHEN inserted THEN 'inserted' ELSE 'updated' END WHERE outcome IS NULL
    """,
    # A rejected new order must not keep the key it just made.
    """
    DELETE FROM service_order_key AS k USING w_order AS w
    WHERE w.inserted AND w.outcome = 'rejected' AND k.sod_number = w.sod_number
    """,
    """
    INSERT INTO service_order
        (id, created_at, sod_number, customer_id, status, description, currency, total_amount, updated_at)
    SELECT id, created_at, sod_number, customer_id, status, description, currency, total_amount, now()
    FROM w_order WHERE outcome = 'inserted'
    ORDER BY created_at
    """,
    """
    INSERT INTO service_order_line (order_id, created_at, line_no, stock_item_id, quantity, unit_price)
    SELECT w.id, w.created_at, l.line_no, l.stock_item_id, l.quantity, l.unit_price
    FROM w_order AS w JOIN stage_line AS l USING (sod_number)
    WHERE w.outcome = 'inserted'
    ORDER BY w.created_at
    """,
    NESTED_ON,
    """
    UPDATE service_order AS o
    SET customer_id = w.customer_id, status = w.status, description = w.description, currency = w.currency,
        total_amount = w.total_amount, updated_at = greatest(now(), w.old_updated_at + interval '1 microsecond')
    FROM w_order AS w
    WHERE w.outcome = 'updated' AND o.id = w.id AND o.created_at = w.created_at
    """,
    NESTED_OFF,
    NESTED_ON,
    """
    DELETE FROM service_order_line AS l
    USING w_order AS w
    WHERE w.outcome = 'updated' AND l.order_id = w.id AND l.created_at = w.created_at
      AND NOT EXISTS (SELECT 1 FROM stage_line AS s WHERE s.sod_number = w.sod_number AND s.line_no = l.line_no)
    """,
    NESTED_OFF,
    """
    INSERT INTO service_order_line AS t (order_id, created_at, line_no, stock_item_id, quantity, unit_price)
    SELECT w.id, w.created_at, l.line_no, l.stock_item_id, l.quantity, l.unit_price
    FROM w_order AS w JOIN stage_line AS l USING (sod_number)
    WHERE w.outcome = 'updated'
    ON CONFLICT (order_id, line_no, created_at) DO UPDATE
    SET stock_item_id = excluded.stock_item_id, quantity = excluded.quantity, unit_price = excluded.unit_price
    WHERE (t.stock_item_id, t.quantity, t.unit_price)
          IS DISTINCT FROM (excluded.stock_item_id, excluded.quantity, excluded.unit_price)
    """,
    # Stock: per (order, line, item), target minus what its movements already sum to.
    # New orders have no movements yet (their key was made in this transaction).
    NESTED_ON,
    """
    CREATE TEMP TABLE w_move ON COMMIT DROP AS
    SELECT sod_number, line_no, stock_item_id,
           sum(target) - sum(current) AS delta, sum(current) AS current, sum(target) AS target
    FROM (
        SELECT w.sod_number, l.line_no, l.stock_item_id,
               CASE WHEN w.status = 'CANCELLED' THEN 0 ELSE -l.quantity END::bigint AS target, 0::bigint AS current
        FROM w_order AS w JOIN stage_line AS l USING (sod_number)
        WHERE w.outcome IN ('inserted', 'updated')
        UNION ALL
        SELECT m.sod_number, m.line_no, m.stock_item_id, 0, m.quantity
        FROM w_order AS w JOIN stock_movement AS m ON m.sod_number = w.sod_number AND m.sod_number IS NOT NULL
        WHERE w.outcome = 'updated'
    ) AS t
    GROUP BY 1, 2, 3
    HAVING sum(target) <> sum(current)
    """,
    NESTED_OFF,
    # A plain INSERT, not ON CONFLICT DO NOTHING: the key's revision is bumped under its
    # row lock in this transaction, so no earlier movement can hold these keys, and a
    # conflict would be a bug to fail on, not a movement to skip. (The speculative
    # insertion of ON CONFLICT also probes the unique index twice per row.) In key order,
    # the new keys are appended to the indexes' right edge.
    """
    INSERT INTO stock_movement (stock_item_id, quantity, kind, sod_number, line_no, idempotency_key)
    SELECT m.stock_item_id, m.delta,
           CASE WHEN m.current = 0 THEN 'CONSUMPTION' WHEN m.target = 0 THEN 'RETURN' ELSE 'CORRECTION' END,
           m.sod_number, m.line_no,
           'order:' || m.sod_number || ':' || m.line_no || ':' || w.revision || ':' || m.stock_item_id
    FROM w_move AS m JOIN w_order AS w USING (sod_number)
    ORDER BY m.sod_number, m.line_no
    """,
    """
    CREATE TEMP TABLE w_item ON COMMIT DROP AS
    SELECT stock_item_id AS id, sum(delta)::bigint AS delta FROM w_move GROUP BY 1
    """,
]

# Hot rows last, each table in key order, and the tables always in this order:
# customer stats (customer_stat_month, then customer_stat_cum), stock items, dashboard buckets.
# Rows any concurrent writer may want are locked from here to the commit only; import
# chunks applied side by side run APPLY concurrently and this part one at a time.
APPLY_HOT: list[LiteralString] = [
    # The customers' monthly deltas, folded into customer_stat_month and then, once, into
    # customer_stat_cum: under nexes.customer_stat_by_caller the triggers of both stand
    # aside (0024, 0027), so nothing counts twice.
    """
    CREATE TEMP TABLE w_customer_stat ON COMMIT DROP AS
    SELECT month, currency, customer_id, sum(n)::bigint AS n, sum(amount) AS amount
    FROM (
        SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
               1 AS n, total_amount AS amount
        FROM w_order WHERE outcome IN ('inserted', 'updated') AND status <> 'CANCELLED'
        UNION ALL
        SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date, old_currency, old_customer_id,
               -1, -old_total
        FROM w_order WHERE outcome = 'updated' AND old_status <> 'CANCELLED'
    ) AS delta
    GROUP BY 1, 2, 3
    HAVING sum(n) <> 0 OR sum(amount) <> 0
    """,
    """
    INSERT INTO customer_stat_month AS m (month, currency, customer_id, order_count, total_amount)
    SELECT month, currency, customer_id, n, amount FROM w_customer_stat
    ORDER BY 1, 2, 3
    ON CONFLICT (month, currency, customer_id) DO UPDATE
    SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount
    """,
    """
    SELECT customer_stat_cum_add(ARRAY(
        SELECT ROW(month, currency, customer_id, n, amount)::customer_stat_month FROM w_customer_stat))
    """,
    "SET LOCAL nexes.customer_stat_by_caller = off",
    # NO KEY UPDATE, the lock UPDATE takes anyway. It did not conflict with the KEY SHARE
    # locks the foreign keys of lines and movements took (FOR UPDATE deadlocked with them);
    # since 0028 their references are checked per statement, without row locks.
    """
    SELECT s.id FROM stock_item AS s WHERE s.id IN (SELECT id FROM w_item WHERE delta <> 0)
    ORDER BY s.id FOR NO KEY UPDATE
    """,
    """
    UPDATE stock_item AS s SET on_hand = s.on_hand + d.delta, updated_at = now()
    FROM w_item AS d
    WHERE s.id = d.id AND d.delta <> 0
    """,
    """
    INSERT INTO dashboard_stat AS d (day, status, currency, order_count, total_amount)
    SELECT day, status, currency, sum(n), sum(amount)
    FROM (
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, currency, 1 AS n, total_amount AS amount
        FROM w_order WHERE outcome IN ('inserted', 'updated')
        UNION ALL
        SELECT (created_at AT TIME ZONE 'UTC')::date, old_status, old_currency, -1, -old_total
        FROM w_order WHERE outcome = 'updated'
    ) AS delta
    GROUP BY 1, 2, 3
    HAVING sum(n) <> 0 OR sum(amount) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (day, status, currency) DO UPDATE
    SET order_count = d.order_count + excluded.order_count, total_amount = d.total_amount + excluded.total_amount
    """,
]

# The live quarters' bounds, parsed from the partition definitions of service_order.
BOUNDS: LiteralString = """
CREATE TEMP TABLE w_bounds ON COMMIT DROP AS
SELECT (m[1])::timestamptz AS lo, (m[2])::timestamptz AS hi
FROM pg_inherits AS i
JOIN pg_class AS c ON c.oid = i.inhrelid,
     regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS m
WHERE i.inhparent = 'service_order'::regclass AND NOT i.inhdetachpending
"""

RESULTS: LiteralString = """
SELECT sod_number, outcome, code, field, message, id, created_at FROM w_order
UNION ALL
SELECT sod_number, 'rejected', code, field, message, NULL, NULL FROM w_reject
ORDER BY 1
"""

ORDER_COLUMNS = (
    "sod_number",
    "created_at",
    "created_at_given",
    "customer_id",
    "status",
    "description",
    "currency",
    "expected_updated_at",
    "mode",
)
LINE_COLUMNS = ("sod_number", "line_no", "stock_item_id", "quantity", "unit_price")


# Without parameters, psycopg sends all statements in one simple-protocol round trip.
APPLY_SCRIPT: LiteralString = ";\n".join([BOUNDS, *APPLY, *APPLY_HOT])
APPLY_COLD_SCRIPT: LiteralString = ";\n".join([BOUNDS, *APPLY])
APPLY_HOT_SCRIPT: LiteralString = ";\n".join(APPLY_HOT)
APPLY_HOT_COMMIT_SCRIPT: LiteralString = ";\n".join([*APPLY_HOT, "COMMIT"])
STAGE_SCRIPT: LiteralString = ";\n".join(STAGE)


def apply(conn: psycopg.Connection[Any]) -> None:
    """Apply what is staged (in the caller's transaction); the outcome of each order is
    left in w_order and w_reject (imports read them set-based; see RESULTS)."""
    conn.execute(APPLY_SCRIPT)


async def apply_cold_async(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    """Apply what is staged but the hot rows (in a `hot_rows_last` transaction, which
    applies them as it commits); one result row per order:
    (sod_number, outcome, code, field, message, id, created_at)."""
    await conn.execute(APPLY_COLD_SCRIPT)
    cur = await conn.execute(RESULTS)
    return await cur.fetchall()


@asynccontextmanager
async def hot_rows_last(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A transaction (on an autocommit connection) that ends with APPLY_HOT and its COMMIT
    in one message, so the hot rows are held for the server's time alone.

    Every order of the day, status and currency updates one dashboard_stat row, so
    mutations queue on it; held across the round trips that followed (results, audit,
    the payload's reads, COMMIT), each waiting for a busy API event loop, it made every
    mutation hold it for 0.1-1 s and locked out the rest (the switchover drill, bench/
    README.md). Whatever the block does runs before; an error rolls it all back."""
    await conn.execute("BEGIN")
    try:
        yield
        await conn.execute(APPLY_HOT_COMMIT_SCRIPT)
    except BaseException:
        # A statement of the script failed (the rest of it, COMMIT included, was skipped)
        # or the block raised: roll back; a broken connection is the pool's to discard.
        if conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
        raise


COPY_ORDERS: LiteralString = (
    "COPY stage_order (sod_number, created_at, created_at_given, customer_id, status, description, currency, "
    "expected_updated_at, mode) FROM STDIN"
)
COPY_LINES: LiteralString = "COPY stage_line (sod_number, line_no, stock_item_id, quantity, unit_price) FROM STDIN"
