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
from typing import LiteralString

import psycopg

from nexes.db.partitions import next_quarter, previous_quarter, quarter_start, quarters
from nexes.db.sql import load

BOUNDS: LiteralString = """
SELECT least(o.lo, a.lo, s.lo), greatest(o.hi, a.hi, s.hi)
FROM (SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS lo, (max(created_at) AT TIME ZONE 'UTC')::date AS hi
      FROM service_order) AS o,
     (SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS lo, (max(created_at) AT TIME ZONE 'UTC')::date AS hi
      FROM service_order_archive) AS a,
     (SELECT min(day) AS lo, max(day) AS hi FROM dashboard_stat) AS s
"""


# The statistics statements, written out in db/sql/reconcile.sql (per quarter: slice for
# dashboard_stat, customer_slice for customer_stat_month; cum_suspects and cum_correction
# for customer_stat_cum). Each computes, per key, truth minus kept in one statement's
# snapshot, records the drift in stat_drift (a row of order counts per drifting bucket,
# and a second, its bucket suffixed ` amount`, when the amounts differ) and adds it to
# the table as a delta: writes that commit meanwhile moved both sides alike, so they stay.
#
# customer_stat_cum (migration 0022) is checked against what customer_stat_month implies.
# The exact comparison (the expected table rebuilt with running totals, joined with the
# kept one) takes 24-34 s at 10M orders, so reconciliation first finds the customers
# whose rows break a local rule (cum_suspects, 9 s), then compares and corrects those
# customers exactly (cum_correction). Row by row, each rule is one the triggers keep:
#   - consecutive rows differ by one year, and the last is the horizon's;
#   - a row's `before` is the previous row's before + its year's total (0 for the first);
#   - the step from month m-1 to m (n_m - n_(m-1)) is that month's customer_stat_month row.
# Together they make every row equal to the expected one by induction over the years,
# so a customer none of them flags has no drift. A missing row and a row of zeros are
# the same thing. Rows are locked in the order the triggers use.
_QUERIES = load("reconcile")
SLICE = _QUERIES["slice"]
CUSTOMER_SLICE = _QUERIES["customer_slice"]
CUM_SUSPECTS = _QUERIES["cum_suspects"]
CUM_CORRECTION = _QUERIES["cum_correction"]

# Per quarter: every line's movements against what its order's status implies
# (minus its quantity, or 0 when CANCELLED); reported, never rewritten.
LINES: LiteralString = """
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

STOCK: LiteralString = """
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
