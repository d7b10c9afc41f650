"""Dashboard figures from dashboard_stat (kept by the write path, checked by reconciliation)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row

from nexes.db.connect.session_tag import GenericPlan


@dataclass(frozen=True, slots=True)
class StatRow:
    status: str
    currency: str
    order_count: int
    total_amount: Decimal


# Whole months come from the monthly rollup, the days at either edge from dashboard_stat.
# Two small tables by their indexes, whatever the days: with its generic plan (prepared,
# NEXES_PREPARE=on) it plans in 0.01 ms and runs in 0.16, against 0.24 and 0.22 planned
# for its values each time (EXPLAIN ANALYZE at 10M orders).
BY_STATUS = """
SELECT status::text AS status, currency::text AS currency, sum(order_count)::bigint AS order_count,
       sum(total_amount) AS total_amount
FROM (
    SELECT status, currency, order_count, total_amount FROM dashboard_stat_month
    WHERE month >= %(month_lo)s::date AND month < %(month_hi)s::date
    UNION ALL
    SELECT status, currency, order_count, total_amount FROM dashboard_stat
    WHERE day >= %(day_from)s::date AND day <= %(day_to)s::date
      AND (day < %(month_lo)s::date OR day >= %(month_hi)s::date)
) AS figures
GROUP BY status, currency
HAVING sum(order_count) <> 0
ORDER BY status, currency
"""
BY_STATUS_QUERY = GenericPlan(BY_STATUS.encode())
FAR_PAST, FAR_FUTURE = date(1900, 1, 1), date(9000, 12, 31)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def month_span(day_from: date, day_to: date) -> tuple[date, date]:
    """[lo, hi): the whole months inside day_from..day_to (inclusive); lo >= hi when none."""
    lo = day_from if day_from.day == 1 else _next_month(day_from)
    hi = _next_month(day_to) if _next_month(day_to) - timedelta(days=1) == day_to else day_to.replace(day=1)
    return lo, max(lo, hi)


async def stats_by_status(conn: AsyncConnection[Any], day_from: date | None, day_to: date | None) -> list[StatRow]:
    """Counts and amounts per status and currency over whole UTC days (both ends inclusive)."""
    # A `to` past FAR_FUTURE is taken as none (an open end): no order is dated there, and
    # month_span's next month of December 9999 (a usual "no end" date) is past Python's
    # last date, which raised (INTERNAL) for every range ending or starting in it.
    day_from, day_to = day_from or FAR_PAST, min(day_to or FAR_FUTURE, FAR_FUTURE)
    if day_from > day_to:
        return []
    month_lo, month_hi = month_span(day_from, day_to)
    params = {"day_from": day_from, "day_to": day_to, "month_lo": month_lo, "month_hi": month_hi}
    async with conn.cursor(row_factory=class_row(StatRow)) as cur:
        await cur.execute(BY_STATUS_QUERY, params)
        return await cur.fetchall()
