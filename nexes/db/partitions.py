"""Quarterly partitions of `service_order` and `service_order_line`."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
from psycopg import sql

PARTITIONED = ("service_order", "service_order_line")


def quarter_start(day: date) -> date:
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def next_quarter(start: date) -> date:
    month = start.month + 3
    return date(start.year + (month > 12), (month - 1) % 12 + 1, 1)


def previous_quarter(start: date) -> date:
    month = start.month - 3
    return date(start.year - (month < 1), (month - 1) % 12 + 1, 1)


def quarters(first: date, last: date) -> list[date]:
    """Start dates of every quarter from the one holding `first` to the one holding `last`."""
    out, current = [], quarter_start(first)
    while current <= last:
        out.append(current)
        current = next_quarter(current)
    return out


def partition_name(table: str, start: date) -> str:
    return f"{table}_{start.year}q{(start.month - 1) // 3 + 1}"


def ensure(conn: psycopg.Connection, *, years_back: int, quarters_ahead: int, today: date | None = None) -> int:
    """Create missing partitions from `years_back` years ago to `quarters_ahead` quarters ahead."""
    today = today or datetime.now(UTC).date()
    first = date(today.year - years_back, today.month, 1)
    last = quarter_start(today)
    for _ in range(quarters_ahead):
        last = next_quarter(last)
    created = ensure_range(conn, first, last)
    # The top-customers rollup keeps a row per customer and year up to its horizon
    # (0022), and an order of year Y writes one row per year from Y to there. Rolled in
    # December, the new year's first order finds its rows made; rolled no earlier, the
    # current year's orders write one row each, not two, for eleven months (0027).
    # An order dated past the horizon rolls it itself (customer_stat_cum_add).
    if conn.execute("SELECT to_regproc('customer_stat_cum_roll')").fetchone() != (None,):
        conn.execute("SELECT customer_stat_cum_roll(%s)", [cum_horizon(today)])
    return created


def cum_horizon(today: date) -> int:
    """The year customer_stat_cum is kept up to: this one, or the next in December."""
    return today.year + (today.month == 12)


def ensure_range(conn: psycopg.Connection, first: date, last: date) -> int:
    """Create the partitions covering `first`..`last` that exist nowhere yet; return how many.

    A quarter that was archived keeps its table name (attached to the archive), so
    it is never recreated in the live table.
    """
    created = 0
    for start in quarters(first, last):
        for table in PARTITIONED:
            name = partition_name(table, start)
            if conn.execute("SELECT to_regclass(%s)", [name]).fetchone() != (None,):
                continue
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name),
                    sql.Identifier(table),
                    sql.Literal(f"{start.isoformat()} 00:00:00+00"),
                    sql.Literal(f"{next_quarter(start).isoformat()} 00:00:00+00"),
                )
            )
            created += 1
    return created
