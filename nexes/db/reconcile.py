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


def _drift(
    *, truth: str, table: str, keys: tuple[str, ...], values: tuple[str, ...], kept_where: str, figure: str
) -> str:
    """`WITH ... drift AS (...)`: per key, truth minus kept for each value (missing = 0),
    where any differs, with `figure` (an expression over `{r}`, the row) of both sides
    as `expected` and `found`. Truth and kept are read in one statement's snapshot."""
    key_list = ", ".join(keys)
    deltas = ",\n           ".join(f"coalesce(t.{v}, 0) - coalesce(k.{v}, 0) AS {v}" for v in values)
    differs = " OR ".join(f"{v} <> 0" for v in values)
    return f"""
WITH truth AS ({truth}
), kept AS (
    SELECT {key_list}, {", ".join(values)} FROM {table} WHERE {kept_where}
), diff AS (
    SELECT {key_list},
           {deltas},
           coalesce({figure.format(r="t")}, 0) AS expected, coalesce({figure.format(r="k")}, 0) AS found
    FROM truth AS t FULL JOIN kept AS k USING ({key_list})
), drift AS (
    SELECT * FROM diff WHERE {differs}
)"""


def _correction(
    drift: str,
    *,
    table: str,
    keys: tuple[str, ...],
    values: tuple[str, ...],
    check: str | None,
    bucket: str,
    order: tuple[str, ...],
) -> str:
    """The drift recorded in `stat_drift` (unless `check` is None) and added to `table`, as
    a delta: writes that commit meanwhile moved both sides alike, so they are kept."""
    recorded = (
        f"""
, recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, '{check}', {bucket}, expected, found, true FROM drift
)"""
        if check
        else ""
    )
    adds = ",\n        ".join(f"{v} = c.{v} + excluded.{v}" for v in values)
    return f"""{drift}{recorded}
, fixed AS (
    INSERT INTO {table} AS c ({", ".join(keys)}, {", ".join(values)})
    SELECT {", ".join(keys)}, {", ".join(values)} FROM drift ORDER BY {", ".join(order)}
    ON CONFLICT ({", ".join(keys)}) DO UPDATE SET
        {adds}
)
SELECT count(*) FROM drift
"""


# Live and archived orders created in the slice [lo, hi) of UTC days.
SLICE_ORDERS = """
    SELECT created_at, status, currency, customer_id, total_amount FROM service_order
    WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC'
    UNION ALL
    SELECT created_at, status, currency, customer_id, total_amount FROM service_order_archive
    WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC'"""

# dashboard_stat for one slice of days.
SLICE = _correction(
    _drift(
        truth=f"""
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, currency,
           count(*) AS order_count, sum(total_amount) AS total_amount
    FROM ({SLICE_ORDERS}) AS o
    GROUP BY 1, 2, 3""",
        table="dashboard_stat",
        keys=("day", "status", "currency"),
        values=("order_count", "total_amount"),
        kept_where="day >= %(lo)s AND day < %(hi)s",
        figure="{r}.order_count",
    ),
    table="dashboard_stat",
    keys=("day", "status", "currency"),
    values=("order_count", "total_amount"),
    check="dashboard_stat",
    bucket="day || ' ' || status || ' ' || currency",
    order=("day", "status", "currency"),
)

# The same for customer_stat_month (orders that are not CANCELLED, per UTC month,
# currency and customer); a quarter slice holds whole months.
CUSTOMER_SLICE = _correction(
    _drift(
        truth=f"""
    SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
           count(*) AS order_count, sum(total_amount) AS total_amount
    FROM ({SLICE_ORDERS}) AS o
    WHERE status <> 'CANCELLED'
    GROUP BY 1, 2, 3""",
        table="customer_stat_month",
        keys=("month", "currency", "customer_id"),
        values=("order_count", "total_amount"),
        kept_where="month >= %(lo)s AND month < %(hi)s",
        figure="{r}.order_count",
    ),
    table="customer_stat_month",
    keys=("month", "currency", "customer_id"),
    values=("order_count", "total_amount"),
    check="customer_stat",
    bucket="month || ' ' || currency || ' customer ' || customer_id",
    order=("month", "currency", "customer_id"),
)

# customer_stat_cum (migration 0022) against what customer_stat_month implies (the view
# derives it in one pass over customer_stat_month, a row per customer and month). A
# missing row and a row of zeros are the same thing. Rows are locked in the order the
# triggers use.
CUM_KEYS = ("year", "currency", "customer_id")
CUM_COLUMNS = ("before_n", "before_a", *(f"{kind}{month:02d}" for month in range(1, 13) for kind in "na"))
# The drift CTE alone: the invariant check (nexes.db.invariants) lists it.
CUM_DRIFT = _drift(
    truth="SELECT * FROM customer_stat_cum_expected",
    table="customer_stat_cum",
    keys=CUM_KEYS,
    values=CUM_COLUMNS,
    kept_where="true",
    figure="{r}.before_n + {r}.n12",
)
CUMULATIVE = _correction(
    CUM_DRIFT,
    table="customer_stat_cum",
    keys=CUM_KEYS,
    values=CUM_COLUMNS,
    check="customer_stat_cum",
    bucket="year || ' ' || currency || ' customer ' || customer_id",
    order=("year", "customer_id", "currency"),
)
# The seed's fold after a load that deferred the table: the same correction, not drift.
CUM_FOLD = _correction(
    CUM_DRIFT,
    table="customer_stat_cum",
    keys=CUM_KEYS,
    values=CUM_COLUMNS,
    check=None,
    bucket="",
    order=("year", "customer_id", "currency"),
)

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
