"""Analyst reports, read from the summary tables the write path keeps (dashboard_stat,
dashboard_stat_month, customer_stat_cum): a few thousand rows, or one or two per customer,
whatever the order count. Run under the analyst role on a replica (nexes.db.connect.router.Router.analyst)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal, cast

from psycopg import AsyncConnection, sql
from psycopg.rows import args_row, tuple_row

Granularity = Literal["day", "week", "month"]


# (period, status, currency, orders, amount): plain tuples, since a DAY report over years
# is tens of thousands of rows and each row becomes one GraphQL object anyway.
PeriodRow = tuple[date, str, str, int, Decimal]


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


# Sorted by the caller: the rows are read in any order, and sorting thousands of them by
# (day, status, currency) in PostgreSQL (collation-aware) took longer than reading them.
BY_DAY = """
SELECT day, status::text, currency, order_count, total_amount FROM dashboard_stat
WHERE day BETWEEN %(from)s AND %(to)s AND order_count <> 0
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

# customer_stat_cum (migration 0022) holds, per year, currency and customer, the totals of
# every earlier year and the cumulative totals within the year up to each month, so the
# whole months [first, last] are the row at `last` minus the row just before `first`: two
# index scans on the year, whatever the range. A missing row at `first` means no orders
# before it. Column names come from validated month numbers, never from input text.
TOP_CUSTOMERS = """
SELECT c.id, c.code, c.name, t.currency, t.order_count, (t.cents / 100.0)::numeric(18, 2)
FROM (SELECT customer_id, currency, order_count, cents
      FROM (SELECT e.customer_id, e.currency,
                   ({end_n}) - coalesce(({start_n}), 0) AS order_count,
                   ({end_a}) - coalesce(({start_a}), 0) AS cents
            FROM customer_stat_cum AS e
            {join}
            WHERE e.year = %(end_year)s AND (%(currency)s::text IS NULL OR e.currency = %(currency)s::text)
              AND (%(ids)s::bigint[] IS NULL OR e.customer_id = ANY(%(ids)s::bigint[]))) AS r
      WHERE order_count <> 0
      ORDER BY cents DESC, customer_id
      LIMIT %(limit)s) AS t
JOIN customer AS c ON c.id = t.customer_id
ORDER BY t.cents DESC, c.id
"""
START_JOIN = (
    "LEFT JOIN customer_stat_cum AS s "
    "ON s.year = %(start_year)s AND s.customer_id = e.customer_id AND s.currency = e.currency"
)


def _cumulative(alias: str, month: int, kind: str, with_before: bool) -> sql.Composable:
    """Orders (`n`) or amounts (`a`) up to the end of `month` (0: none of this year)."""
    parts: list[sql.Composable] = []
    if with_before:
        parts.append(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(f"before_{kind}")))
    if month:
        parts.append(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(f"{kind}{month:02d}")))
    return sql.SQL(" + ").join(parts) if parts else sql.SQL("0")


def top_customers_query(first: date, last: date, horizon: int) -> tuple[sql.Composed, dict[str, int]] | None:
    """The statement for the whole months from `first` to `last` (None: nothing can match)."""
    if first.year > horizon:
        return None
    end_year, end_month = (last.year, last.month) if last.year <= horizon else (horizon, 12)
    start_year, start_month = first.year, first.month - 1  # the cumulative row before `first`
    same_row = start_year == end_year  # both ends in one row: no join, `before` cancels out
    start_alias = "e" if same_row else "s"
    statement = sql.SQL(TOP_CUSTOMERS).format(
        end_n=_cumulative("e", end_month, "n", not same_row),
        end_a=_cumulative("e", end_month, "a", not same_row),
        start_n=_cumulative(start_alias, start_month, "n", not same_row),
        start_a=_cumulative(start_alias, start_month, "a", not same_row),
        join=sql.SQL("" if same_row else START_JOIN),
    )
    return statement, {"end_year": end_year, "start_year": start_year}


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
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(PERIOD_SQL[granularity], {"from": day_from, "to": day_to})
    rows = cast(list[PeriodRow], await cur.fetchall())
    if granularity == "day":
        rows.sort()  # (day, status, currency) is the key: ASCII names sort as ORDER BY 1, 2, 3 did
    return rows


# Per year of the range and currency, the customers with the largest whole-year amounts:
# an index scan on (year, currency, a12 DESC) for each, `depth` rows deep. The currencies
# come from dashboard_stat_month (a row per month, status and currency).
YEAR_LEADERS = """
SELECT g.year, c.currency, l.customer_id, l.a12
FROM generate_series(%(first)s::int, %(last)s::int) AS g(year)
CROSS JOIN (SELECT DISTINCT currency FROM dashboard_stat_month
            WHERE %(currency)s::text IS NULL OR currency = %(currency)s::text) AS c
CROSS JOIN LATERAL (
    SELECT customer_id, a12 FROM customer_stat_cum
    WHERE year = g.year AND currency = c.currency
    ORDER BY a12 DESC LIMIT %(depth)s) AS l
"""
FIRST_DEPTH = 64
FULL_SCAN_DEPTH = 20_000  # past this, one pass over every customer is cheaper


async def top_customers(
    conn: AsyncConnection[Any],
    day_from: date,
    day_to: date,
    limit: int,
    currency: str | None,
    *,
    first_depth: int = FIRST_DEPTH,
) -> list[CustomerAmountRow]:
    """The `limit` customers with the largest amounts (per currency) over the whole months of the range.

    Exact, by Fagin's threshold algorithm over the years of the range: a customer's amount
    in the range is at most the sum of its whole-year amounts (amounts are never negative),
    so once the `limit`-th best exact amount among the customers that lead some year (in
    their currency) beats the sum of each year's amount at the depth read so far, no
    customer below that depth can enter. Amounts follow a power law in practice (and in the seed), so a few dozen
    leaders per year decide it; otherwise the depth grows eightfold per round, up to one
    pass over every customer (two rows each)."""
    row = await (await conn.execute("SELECT year FROM customer_stat_cum_horizon")).fetchone()
    query = top_customers_query(day_from, day_to, row[0] if row else day_to.year)
    if query is None:
        return []
    statement, years = query
    params: dict[str, Any] = {**years, "limit": limit, "currency": currency, "ids": None}
    cur = conn.cursor(row_factory=args_row(CustomerAmountRow))
    depth = max(first_depth, limit)
    while depth < FULL_SCAN_DEPTH:
        leaders = await (
            await conn.execute(
                YEAR_LEADERS,
                {"first": day_from.year, "last": years["end_year"], "currency": currency, "depth": depth},
            )
        ).fetchall()
        lists: dict[tuple[int, str], list[int]] = {}
        for year, list_currency, _, cents in leaders:
            lists.setdefault((year, list_currency), []).append(cents)
        # An unseen customer's bound, in its currency: each year's list cut at `depth`
        # adds the smallest amount read from it.
        bounds: dict[str, int] = {}
        for (_, list_currency), amounts in lists.items():
            bounds[list_currency] = bounds.get(list_currency, 0) + (amounts[-1] if len(amounts) == depth else 0)
        bound = max(bounds.values(), default=0)
        exhausted = all(len(amounts) < depth for amounts in lists.values())
        await cur.execute(statement, {**params, "ids": sorted({customer for _, _, customer, _ in leaders})})
        found = await cur.fetchall()
        if exhausted or (len(found) == limit and found[-1].total_amount * 100 > bound):
            return found
        depth *= 8
    await cur.execute(statement, params)
    return await cur.fetchall()


async def aging(conn: AsyncConnection[Any]) -> list[AgingRow]:
    """Open orders per age bucket (0-7, 8-30, 31-90, 90+ days) and currency."""
    cur = conn.cursor(row_factory=args_row(AgingRow))
    await cur.execute(AGING)
    return await cur.fetchall()
