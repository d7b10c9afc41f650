"""Reconciliation: recompute dashboard_stat (and customer_stat_month) from the orders,
slice by slice, then customer_stat_cum from customer_stat_month; check stock.

Each slice is one quarter (a partition's range), in its own statement, so no query
holds a snapshot over the whole table. Truth and kept figures come from the same
snapshot, and the correction is applied as a delta (truth minus kept): writes that
commit meanwhile change both sides alike, so their own deltas survive and the
reconciliation is safe while imports run. Every difference is recorded in
`stat_drift`; stock (on_hand against the ledger, and each line's movements against
its quantity and status) is reported, never changed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import psycopg

from nexes.db.partitions import next_quarter, quarters

BOUNDS = """
SELECT least(o.lo, a.lo, s.lo), greatest(o.hi, a.hi, s.hi)
FROM (SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS lo, (max(created_at) AT TIME ZONE 'UTC')::date AS hi
      FROM service_order) AS o,
     (SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS lo, (max(created_at) AT TIME ZONE 'UTC')::date AS hi
      FROM service_order_archive) AS a,
     (SELECT min(day) AS lo, max(day) AS hi FROM dashboard_stat) AS s
"""

# Truth and kept figures for one slice of days; the differences, recorded and corrected.
SLICE = """
WITH truth AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, currency, count(*) AS n, sum(total_amount) AS amount
    FROM (SELECT created_at, status, currency, total_amount FROM service_order
          WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC'
          UNION ALL
          SELECT created_at, status, currency, total_amount FROM service_order_archive
          WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC') AS o
    GROUP BY 1, 2, 3
), kept AS (
    SELECT day, status, currency, order_count AS n, total_amount AS amount FROM dashboard_stat
    WHERE day >= %(lo)s AND day < %(hi)s
), diff AS (
    SELECT coalesce(t.day, k.day) AS day, coalesce(t.status, k.status) AS status,
           coalesce(t.currency, k.currency) AS currency,
           coalesce(t.n, 0) AS n, coalesce(t.amount, 0) AS amount,
           coalesce(k.n, 0) AS kept_n, coalesce(k.amount, 0) AS kept_amount
    FROM truth AS t FULL JOIN kept AS k USING (day, status, currency)
    WHERE coalesce(t.n, 0) <> coalesce(k.n, 0) OR coalesce(t.amount, 0) <> coalesce(k.amount, 0)
), recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'dashboard_stat', day || ' ' || status || ' ' || currency, n, kept_n, true FROM diff
), fixed AS (
    INSERT INTO dashboard_stat AS d (day, status, currency, order_count, total_amount)
    SELECT day, status, currency, n - kept_n, amount - kept_amount FROM diff
    ON CONFLICT (day, status, currency) DO UPDATE
    SET order_count = d.order_count + excluded.order_count, total_amount = d.total_amount + excluded.total_amount
)
SELECT count(*) FROM diff
"""

# The same for customer_stat_month (orders that are not CANCELLED, per UTC month,
# currency and customer); a quarter slice holds whole months.
CUSTOMER_SLICE = """
WITH truth AS (
    SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
           count(*) AS n, sum(total_amount) AS amount
    FROM (SELECT created_at, status, currency, customer_id, total_amount FROM service_order
          WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC'
          UNION ALL
          SELECT created_at, status, currency, customer_id, total_amount FROM service_order_archive
          WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC') AS o
    WHERE status <> 'CANCELLED'
    GROUP BY 1, 2, 3
), kept AS (
    SELECT month, currency, customer_id, order_count AS n, total_amount AS amount FROM customer_stat_month
    WHERE month >= %(lo)s AND month < %(hi)s
), diff AS (
    SELECT coalesce(t.month, k.month) AS month, coalesce(t.currency, k.currency) AS currency,
           coalesce(t.customer_id, k.customer_id) AS customer_id,
           coalesce(t.n, 0) AS n, coalesce(t.amount, 0) AS amount,
           coalesce(k.n, 0) AS kept_n, coalesce(k.amount, 0) AS kept_amount
    FROM truth AS t FULL JOIN kept AS k USING (month, currency, customer_id)
    WHERE coalesce(t.n, 0) <> coalesce(k.n, 0) OR coalesce(t.amount, 0) <> coalesce(k.amount, 0)
), recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'customer_stat', month || ' ' || currency || ' customer ' || customer_id, n, kept_n, true
    FROM diff
), fixed AS (
    INSERT INTO customer_stat_month AS m (month, currency, customer_id, order_count, total_amount)
    SELECT month, currency, customer_id, n - kept_n, amount - kept_amount FROM diff
    ORDER BY 1, 2, 3
    ON CONFLICT (month, currency, customer_id) DO UPDATE
    SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount
)
SELECT count(*) FROM diff
"""

# customer_stat_cum (migration 0022) against what customer_stat_month implies, as a
# delta like the slices above; the view derives it in one pass over customer_stat_month
# (a row per customer and month, not per order). Rows are keyed by year, currency and
# customer; a missing row and a row of zeros are the same thing.
CUM_COLUMNS = ("before_n", "before_a", *(f"{kind}{month:02d}" for month in range(1, 13) for kind in "na"))


def _cum_drift() -> str:
    diffs = ",\n".join(f"coalesce(e.{c}, 0) - coalesce(k.{c}, 0) AS {c}" for c in CUM_COLUMNS)
    differs = " OR ".join(f"{c} <> 0" for c in CUM_COLUMNS)
    return f"""
WITH diff AS (
    SELECT year, currency, customer_id,
{diffs}
    FROM customer_stat_cum_expected AS e FULL JOIN customer_stat_cum AS k USING (year, currency, customer_id)
), drift AS (
    SELECT * FROM diff WHERE {differs}
)"""


# The drift CTE alone: the invariant check (nexes.db.invariants) lists it.
CUM_DRIFT = _cum_drift()


def _cum_statement(*, record: bool) -> str:
    adds = ",\n".join(f"{c} = c.{c} + excluded.{c}" for c in CUM_COLUMNS)
    recorded = """, recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'customer_stat_cum', year || ' ' || currency || ' customer ' || customer_id,
           coalesce(e.before_n + e.n12, 0), coalesce(k.before_n + k.n12, 0), true
    FROM drift AS d
    LEFT JOIN customer_stat_cum_expected AS e USING (year, currency, customer_id)
    LEFT JOIN customer_stat_cum AS k USING (year, currency, customer_id)
)"""
    return f"""{CUM_DRIFT}{recorded if record else ""}, fixed AS (
    INSERT INTO customer_stat_cum AS c (year, currency, customer_id, {", ".join(CUM_COLUMNS)})
    SELECT * FROM drift ORDER BY 1, 3, 2  -- the triggers lock rows in this order too
    ON CONFLICT (year, currency, customer_id) DO UPDATE SET
{adds}
)
SELECT count(*) FROM drift
"""


CUMULATIVE = _cum_statement(record=True)
# The seed's fold after a load that deferred the table: the same correction, not drift.
CUM_FOLD = _cum_statement(record=False)

# Per quarter: every line's movements against what its order's status implies
# (minus its quantity, or 0 when CANCELLED); reported, never rewritten.
LINES = """
WITH lines AS (
    SELECT o.sod_number, l.line_no, CASE WHEN o.status = 'CANCELLED' THEN 0 ELSE -l.quantity END AS expected
    FROM (SELECT * FROM service_order_line UNION ALL SELECT * FROM service_order_line_archive) AS l
    JOIN (SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive) AS o
      ON o.id = l.order_id AND o.created_at = l.created_at
    WHERE l.created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND l.created_at < %(hi)s::date AT TIME ZONE 'UTC'
      AND o.created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND o.created_at < %(hi)s::date AT TIME ZONE 'UTC'
), checked AS (
    SELECT lines.*, coalesce(m.total, 0) AS total FROM lines
    LEFT JOIN LATERAL (SELECT sum(quantity) AS total FROM stock_movement AS s
                       WHERE s.sod_number = lines.sod_number AND s.line_no = lines.line_no) AS m ON true
), reported AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'line_ledger', sod_number || ' line ' || line_no, expected, total, false
    FROM checked WHERE total <> expected
    RETURNING 1
)
SELECT count(*) FROM reported
"""

STOCK = """
WITH ledger AS (
    SELECT stock_item_id, sum(quantity) AS total FROM stock_movement GROUP BY 1
), checked AS (
    SELECT s.sku, s.on_hand, coalesce(l.total, 0) AS total FROM stock_item AS s
    LEFT JOIN ledger AS l ON l.stock_item_id = s.id
), mismatched AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'on_hand', sku, total, on_hand, false FROM checked WHERE on_hand <> total
    RETURNING 1
), negative AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'negative_stock', sku, 0, on_hand, false FROM checked WHERE on_hand < 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM mismatched), (SELECT count(*) FROM negative)
"""


@dataclass(frozen=True)
class Report:
    run_id: uuid.UUID
    slices: int
    stat_corrections: int
    on_hand_mismatches: int
    negative_items: int
    line_mismatches: int
    customer_stat_corrections: int = 0
    customer_cum_corrections: int = 0


def reconcile(conninfo: str, *, progress: Callable[[date], None] | None = None, parallel: int = 2) -> Report:
    """Recompute dashboard_stat and customer_stat_month quarter by quarter, correcting and
    recording drift; check every line's ledger and the stock. Quarters are independent
    slices, so `parallel` connections work on them at once (one per core here)."""
    run_id = uuid.uuid4()
    local = threading.local()
    opened: list[psycopg.Connection] = []
    lock = threading.Lock()

    def connection() -> psycopg.Connection:
        # prepare_threshold=None: the worker runs this through PgBouncer in transaction mode.
        if getattr(local, "conn", None) is None:
            local.conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
            with lock:
                opened.append(local.conn)
        conn: psycopg.Connection = local.conn
        return conn

    def one_quarter(start: date) -> tuple[int, int, int]:
        conn = connection()
        bounds = {"lo": start, "hi": next_quarter(start), "run": run_id}
        stats = conn.execute(SLICE, bounds).fetchone()
        customers = conn.execute(CUSTOMER_SLICE, bounds).fetchone()
        with conn.transaction():
            # A quarter's lines take longer than an ordinary statement may.
            conn.execute("SET LOCAL statement_timeout = '10min'")
            wrong = conn.execute(LINES, bounds).fetchone()
        if progress:
            progress(start)
        return (int(stats[0]) if stats else 0, int(customers[0]) if customers else 0, int(wrong[0]) if wrong else 0)

    try:
        conn = connection()
        row = conn.execute(BOUNDS).fetchone()
        first, last = row if row else (None, None)
        slices = list(quarters(first, last)) if first and last else []
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(one_quarter, slices))
        with conn.transaction():
            # One pass over customer_stat_month, after the slices corrected it.
            conn.execute("SET LOCAL statement_timeout = '10min'")
            cumulative = conn.execute(CUMULATIVE, {"run": run_id}).fetchone() or (0,)
        with conn.transaction():
            stock = conn.execute(STOCK, {"run": run_id}).fetchone() or (0, 0)
    finally:
        for opened_conn in opened:
            opened_conn.close()
    return Report(
        run_id,
        len(slices),
        sum(r[0] for r in results),
        int(stock[0]),
        int(stock[1]),
        sum(r[2] for r in results),
        sum(r[1] for r in results),
        int(cumulative[0]),
    )
