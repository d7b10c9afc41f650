"""Analyst reports, read from the summary tables the write path keeps (dashboard_stat,
dashboard_stat_month, customer_stat_month): a few thousand rows at most, whatever the
order count. Run under the analyst role on a replica (nexes.db.router.Router.analyst)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import args_row

Granularity = Literal["day", "week", "month"]


@dataclass(frozen=True)
class PeriodRow:
    period: date
    status: str
    currency: str
    order_count: int
    total_amount: Decimal


@dataclass(frozen=True)
class CustomerAmountRow:
    customer_id: int
    code: str
    name: str
    currency: str
    order_count: int
    total_amount: Decimal


@dataclass(frozen=True)
class AgingRow:
    bucket: str
    currency: str
    order_count: int
    total_amount: Decimal


BY_DAY = """
SELECT day, status::text, currency, order_count, total_amount FROM dashboard_stat
WHERE day BETWEEN %(from)s AND %(to)s AND order_count <> 0 ORDER BY 1, 2, 3
"""
BY_WEEK = """
SELECT date_trunc('week', day)::date, status::text, currency, sum(order_count)::bigint, sum(total_amount)
FROM dashboard_stat WHERE day BETWEEN %(from)s AND %(to)s
GROUP BY 1, 2, 3 HAVING sum(order_count) <> 0 ORDER BY 1, 2, 3
"""
# Whole months: the months that hold `from` and `to`, and every one between.
BY_MONTH = """
SELECT month, status::text, currency, order_count, total_amount FROM dashboard_stat_month
WHERE month BETWEEN date_trunc('month', %(from)s::date)::date AND %(to)s AND order_count <> 0 ORDER BY 1, 2, 3
"""
PERIOD_SQL: dict[str, str] = {"day": BY_DAY, "week": BY_WEEK, "month": BY_MONTH}

TOP_CUSTOMERS = """
SELECT c.id, c.code, c.name, t.currency, t.order_count, t.total_amount
FROM (SELECT customer_id, currency, sum(order_count)::bigint AS order_count, sum(total_amount) AS total_amount
      FROM customer_stat_month
      WHERE month BETWEEN date_trunc('month', %(from)s::date)::date AND %(to)s
        AND (%(currency)s::text IS NULL OR currency = %(currency)s::text)
      GROUP BY customer_id, currency
      ORDER BY sum(total_amount) DESC, customer_id LIMIT %(limit)s) t
JOIN customer c ON c.id = t.customer_id
ORDER BY t.total_amount DESC, c.id
"""

# Open orders (not COMPLETED or CANCELLED) by age in whole UTC days since created_at.
AGING = """
SELECT CASE WHEN age <= 7 THEN '0-7' WHEN age <= 30 THEN '8-30' WHEN age <= 90 THEN '31-90' ELSE '90+' END AS bucket,
       currency, sum(order_count)::bigint, sum(total_amount)
FROM (SELECT (now() AT TIME ZONE 'UTC')::date - day AS age, currency, order_count, total_amount
      FROM dashboard_stat WHERE status IN ('DRAFT', 'OPEN', 'IN_PROGRESS')) s
GROUP BY 1, 2 HAVING sum(order_count) <> 0
ORDER BY min(age), 2
"""


async def orders_by_period(
    conn: AsyncConnection[Any], granularity: Granularity, day_from: date, day_to: date
) -> list[PeriodRow]:
    """Orders and amounts per period, status and currency over [day_from, day_to]."""
    cur = conn.cursor(row_factory=args_row(PeriodRow))
    await cur.execute(PERIOD_SQL[granularity], {"from": day_from, "to": day_to})
    return await cur.fetchall()


async def top_customers(
    conn: AsyncConnection[Any], day_from: date, day_to: date, limit: int, currency: str | None
) -> list[CustomerAmountRow]:
    """The `limit` customers with the largest amounts (per currency) over the whole months of the range."""
    cur = conn.cursor(row_factory=args_row(CustomerAmountRow))
    params = {"from": day_from, "to": day_to, "limit": limit, "currency": currency}
    await cur.execute(TOP_CUSTOMERS, params)
    return await cur.fetchall()


async def aging(conn: AsyncConnection[Any]) -> list[AgingRow]:
    """Open orders per age bucket (0-7, 8-30, 31-90, 90+ days) and currency."""
    cur = conn.cursor(row_factory=args_row(AgingRow))
    await cur.execute(AGING)
    return await cur.fetchall()
