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
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg

from nexes.db.partitions import next_quarter, previous_quarter, quarter_start, quarters

BOUNDS = """
SELECT least(o.lo, a.lo, s.lo), greatest(o.hi, a.hi, s.hi)
FROM (SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS lo, (max(created_at) AT TIME ZONE 'UTC')::date AS hi
      FROM service_order) AS o,
     (SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS lo, (max(created_at) AT TIME ZONE 'UTC')::date AS hi
      FROM service_order_archive) AS a,
     (SELECT min(day) AS lo, max(day) AS hi FROM dashboard_stat) AS s
"""


def _drift(
    *,
    truth: str,
    table: str,
    keys: tuple[str, ...],
    values: tuple[str, ...],
    kept_where: str,
    figure: str,
    amount: str,
) -> str:
    """`WITH ... drift AS (...)`: per key, truth minus kept for each value (missing = 0),
    where any differs, with `figure` (an expression over `{r}`, the row: the order count)
    of both sides as `expected` and `found`, and `amount` (the amount) as
    `expected_amount` and `found_amount`. Truth and kept are read in one statement's
    snapshot."""
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
           coalesce({figure.format(r="t")}, 0) AS expected, coalesce({figure.format(r="k")}, 0) AS found,
           coalesce({amount.format(r="t")}, 0) AS expected_amount, coalesce({amount.format(r="k")}, 0) AS found_amount
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
    a delta: writes that commit meanwhile moved both sides alike, so they are kept.

    Each drifting bucket gets a row of its order counts, and a second one, its bucket
    suffixed ` amount`, of its amounts when those differ (a count row whose expected
    equals found says that only the amount drifted)."""
    recorded = (
        f"""
, recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, '{check}', {bucket} || f.suffix, f.expected, f.found, true
    FROM drift, LATERAL (VALUES ('', expected, found), (' amount', expected_amount, found_amount))
                    AS f(suffix, expected, found)
    WHERE f.suffix = '' OR f.expected <> f.found
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
        amount="{r}.total_amount",
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
        amount="{r}.total_amount",
    ),
    table="customer_stat_month",
    keys=("month", "currency", "customer_id"),
    values=("order_count", "total_amount"),
    check="customer_stat",
    bucket="month || ' ' || currency || ' customer ' || customer_id",
    order=("month", "currency", "customer_id"),
)

# customer_stat_cum (migration 0022) against what customer_stat_month implies. The exact
# comparison (CUM_DRIFT: the expected table rebuilt with running totals, joined with the
# kept one) takes 24-34 s at 10M orders, so reconciliation first finds the customers
# whose rows break a local rule (CUM_SUSPECTS, 9 s), then compares and corrects those
# customers exactly (CUM_CORRECTION). Row by row, each rule is one the triggers keep:
#   - consecutive rows differ by one year, and the last is the horizon's;
#   - a row's `before` is the previous row's before + its year's total (0 for the first);
#   - the step from month m-1 to m (n_m - n_(m-1)) is that month's customer_stat_month row.
# Together they make every row equal to the expected one by induction over the years,
# so a customer none of them flags has no drift. A missing row and a row of zeros are
# the same thing. Rows are locked in the order the triggers use.
CUM_KEYS = ("year", "currency", "customer_id")
CUM_COLUMNS = ("before_n", "before_a", *(f"{kind}{month:02d}" for month in range(1, 13) for kind in "na"))


def _month_step(month: int) -> str:
    """customer_stat_cum's figures for one month (its cumulative columns' step), as rows."""
    n = f"n{month:02d}" + (f" - n{month - 1:02d}" if month > 1 else "")
    a = f"a{month:02d}" + (f" - a{month - 1:02d}" if month > 1 else "")
    return (
        f"SELECT customer_id, currency, make_date(year, {month}, 1) AS month, {n} AS kn, {a} AS ka\n"
        f"    FROM customer_stat_cum WHERE {n} <> 0 OR {a} <> 0"
    )


_KEPT_MONTHS = "\n    UNION ALL ".join(_month_step(m) for m in range(1, 13))
# Twelve plain scans (UNION ALL) and a hash join on the month's date: a lateral unnest or
# a join on extracted numbers planned a memoize or sorts and took twice as long.
CUM_SUSPECTS = f"""
WITH chained AS (
    SELECT year, customer_id, before_n, before_a,
           lag(year) OVER w AS prev_year, lead(year) OVER w AS next_year,
           lag(before_n + n12) OVER w AS prev_n, lag(before_a + a12) OVER w AS prev_a
    FROM customer_stat_cum
    WINDOW w AS (PARTITION BY currency, customer_id ORDER BY year)
), unchained AS (
    SELECT c.customer_id FROM chained AS c, customer_stat_cum_horizon AS h
    WHERE c.before_n <> coalesce(c.prev_n, 0) OR c.before_a <> coalesce(c.prev_a, 0)
       OR c.year <> coalesce(c.prev_year + 1, c.year) OR (c.next_year IS NULL AND c.year <> h.year)
), kept AS (
    {_KEPT_MONTHS}
), months AS (
    SELECT customer_id, currency, month, order_count AS tn, (total_amount * 100)::bigint AS ta
    FROM customer_stat_month WHERE order_count <> 0 OR total_amount <> 0
), differs AS (
    SELECT customer_id FROM months FULL JOIN kept USING (customer_id, month, currency)
    WHERE coalesce(tn, 0) <> coalesce(kn, 0) OR coalesce(ta, 0) <> coalesce(ka, 0)
)
SELECT array(SELECT customer_id FROM unchained UNION SELECT customer_id FROM differs ORDER BY 1)
"""


# The exact drift of every customer: the invariant check lists it, and the seed's fold
# (after a load that deferred the table) applies it.
def _cum_drift(truth: str, kept_where: str) -> str:
    return _drift(
        truth=truth,
        table="customer_stat_cum",
        keys=CUM_KEYS,
        values=CUM_COLUMNS,
        kept_where=kept_where,
        figure="{r}.before_n + {r}.n12",
        amount="({r}.before_a + {r}.a12) / 100.0",  # kept in cents
    )


CUM_DRIFT = _cum_drift("SELECT * FROM customer_stat_cum_expected", "true")
CUM_FOLD = _correction(
    CUM_DRIFT,
    table="customer_stat_cum",
    keys=CUM_KEYS,
    values=CUM_COLUMNS,
    check=None,
    bucket="",
    order=("year", "customer_id", "currency"),
)
# The exact drift of the customers in %(customers)s, recorded and corrected.
CUM_CORRECTION = _correction(
    _cum_drift("SELECT * FROM customer_stat_cum_expected_for(%(customers)s)", "customer_id = ANY (%(customers)s)"),
    table="customer_stat_cum",
    keys=CUM_KEYS,
    values=CUM_COLUMNS,
    check="customer_stat_cum",
    bucket="year || ' ' || currency || ' customer ' || customer_id",
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


# Quarters for the per-line check, in the order to check them: the recent ones (where
# orders still change), then the least recently checked (never checked first).
LINE_ORDER = """
SELECT q.quarter, q.quarter >= %(recent)s AS recent
FROM unnest(%(quarters)s::date[]) AS q(quarter) LEFT JOIN reconcile_line_check AS c USING (quarter)
ORDER BY q.quarter >= %(recent)s DESC, c.checked_at NULLS FIRST, q.quarter DESC
"""
LINE_CHECKED = """
INSERT INTO reconcile_line_check (quarter, checked_at, run_id, mismatches) VALUES (%s, now(), %s, %s)
ON CONFLICT (quarter) DO UPDATE SET
    checked_at = excluded.checked_at, run_id = excluded.run_id, mismatches = excluded.mismatches
"""
# The lines of this many recent quarters (the current one included) are checked by every run.
RECENT_QUARTERS = 2


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
    line_quarters: int = 0  # quarters whose lines this run checked
    line_quarters_left: int = 0  # quarters left for the next runs (their turn comes by age)


class _Run:
    """One reconciliation: its id, its connections (one per pool thread) and its checks."""

    def __init__(self, conninfo: str, line_seconds: float | None, progress: Callable[[date], None] | None) -> None:
        self.run_id = uuid.uuid4()
        self.conninfo = conninfo
        self.line_seconds = line_seconds
        self.progress = progress
        self.started = time.monotonic()
        self.local = threading.local()
        self.opened: list[psycopg.Connection] = []
        self.lock = threading.Lock()
        self.optional_done = threading.Event()

    def connection(self) -> psycopg.Connection:
        # prepare_threshold=None: the worker runs this through PgBouncer in transaction mode.
        if getattr(self.local, "conn", None) is None:
            self.local.conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None)
            with self.lock:
                self.opened.append(self.local.conn)
        conn: psycopg.Connection = self.local.conn
        return conn

    def close(self) -> None:
        for conn in self.opened:
            conn.close()

    def stats(self, start: date) -> tuple[int, int]:
        """dashboard_stat and customer_stat_month of one quarter: buckets corrected."""
        conn = self.connection()
        bounds = {"lo": start, "hi": next_quarter(start), "run": self.run_id}
        found = conn.execute(SLICE, bounds).fetchone()
        customers = conn.execute(CUSTOMER_SLICE, bounds).fetchone()
        if self.progress:
            self.progress(start)
        return int(found[0]) if found else 0, int(customers[0]) if customers else 0

    def cumulative(self) -> int:
        """customer_stat_cum: rows corrected."""
        conn = self.connection()
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '10min'")
            (suspects,) = conn.execute(CUM_SUSPECTS).fetchone() or ([],)
            if not suspects:
                return 0
            fixed = conn.execute(CUM_CORRECTION, {"run": self.run_id, "customers": suspects}).fetchone()
        return int(fixed[0]) if fixed else 0

    def stock(self) -> tuple[int, int]:
        """(on-hand mismatches, items below zero)."""
        found = self.connection().execute(STOCK, {"run": self.run_id}).fetchone() or (0, 0)
        return int(found[0]), int(found[1])

    def lines(self, start: date, recent: bool) -> int | None:
        """The quarter's lines whose movements differ, or None when the run's time is up."""
        if not recent:
            late = self.line_seconds is not None and time.monotonic() - self.started > self.line_seconds
            if late and self.optional_done.is_set():
                return None
            self.optional_done.set()
        conn = self.connection()
        with conn.transaction():
            # A quarter's lines take longer than an ordinary statement may.
            conn.execute("SET LOCAL statement_timeout = '10min'")
            wrong = conn.execute(LINES, {"lo": start, "hi": next_quarter(start), "run": self.run_id}).fetchone()
            found = int(wrong[0]) if wrong else 0
            conn.execute(LINE_CHECKED, (start, self.run_id, found))
        return found


def reconcile(
    conninfo: str,
    *,
    progress: Callable[[date], None] | None = None,
    parallel: int = 2,
    line_seconds: float | None = None,
    today: date | None = None,
) -> Report:
    """Recompute dashboard_stat and customer_stat_month quarter by quarter, correcting and
    recording drift; check customer_stat_cum, the stock and the lines' ledger. The checks
    are independent, so `parallel` connections work on them at once (one per core here).

    The per-line ledger check is the costly part (every line, and an index probe into
    the ledger each). It covers the RECENT_QUARTERS newest quarters and at least one
    more, then goes on with the least recently checked quarters only while the run is
    younger than `line_seconds`; None checks every quarter."""
    run = _Run(conninfo, line_seconds, progress)
    try:
        conn = run.connection()
        row = conn.execute(BOUNDS).fetchone()
        first, last = row if row else (None, None)
        slices = list(quarters(first, last)) if first and last else []
        recent = quarter_start(today or datetime.now(UTC).date())
        for _ in range(RECENT_QUARTERS - 1):
            recent = previous_quarter(recent)
        order = conn.execute(LINE_ORDER, {"quarters": slices, "recent": recent}).fetchall()
        # The pool takes tasks in this order: the statistics first, the lines last.
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            stat_results = [pool.submit(run.stats, start) for start in slices]
            cum_result = pool.submit(run.cumulative)
            stock_result = pool.submit(run.stock)
            line_results = [pool.submit(run.lines, start, is_recent) for start, is_recent in order]
            results = [r.result() for r in stat_results]
            cum_fixed = cum_result.result()
            on_hand, negative = stock_result.result()
            checked = [found for r in line_results if (found := r.result()) is not None]
    finally:
        run.close()
    return Report(
        run.run_id,
        len(slices),
        sum(r[0] for r in results),
        on_hand,
        negative,
        sum(checked),
        sum(r[1] for r in results),
        cum_fixed,
        line_quarters=len(checked),
        line_quarters_left=len(order) - len(checked),
    )
