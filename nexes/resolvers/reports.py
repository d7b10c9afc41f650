"""Reports: validate, run on a replica under the analyst role, shape."""

from __future__ import annotations

from datetime import date

from nexes.db import reports as db
from nexes.db.catalog import CustomerRow
from nexes.errors import bad_input
from nexes.resolvers.context import Info
from nexes.resolvers.orders import to_customer
from nexes.schema.reports import AgingBucket, CustomerAmount, PeriodFigures
from nexes.schema.types import STATUS_BY_NAME

MAX_TOP = 100
MAX_DAYS = 3_700  # about ten years of days
# DAY rows are one per day, status and currency: three years is up to about 16k rows (about
# 10 µs each through GraphQL, measured at 10M orders); longer spans take WEEK or MONTH,
# and the CSV export serves bulk reads.
MAX_DAY_SPAN = 1_100


def _check_range(day_from: date, day_to: date) -> None:
    if day_from > day_to:
        raise bad_input("from must not be after to", field="from")
    if (day_to - day_from).days > MAX_DAYS:
        raise bad_input(f"the range may span at most {MAX_DAYS} days", field="to")


async def orders_by_period(
    info: Info, day_from: date, day_to: date, granularity: db.Granularity
) -> list[PeriodFigures]:
    _check_range(day_from, day_to)
    if granularity == "day" and (day_to - day_from).days > MAX_DAY_SPAN:
        raise bad_input(
            f"DAY covers at most {MAX_DAY_SPAN} days; ask for WEEK or MONTH over a longer range", field="granularity"
        )
    rows = await info.context.router.analyst(lambda c: db.orders_by_period(c, granularity, day_from, day_to))
    status = STATUS_BY_NAME
    return [
        PeriodFigures(period=period, status=status[name], currency=currency, order_count=n, total_amount=amount)
        for period, name, currency, n, amount in rows
    ]


async def top_customers(
    info: Info, day_from: date, day_to: date, limit: int, currency: str | None
) -> list[CustomerAmount]:
    _check_range(day_from, day_to)
    if not 1 <= limit <= MAX_TOP:
        raise bad_input(f"limit must be 1 to {MAX_TOP}", field="limit")
    rows = await info.context.router.analyst(lambda c: db.top_customers(c, day_from, day_to, limit, currency))
    return [
        CustomerAmount(
            customer=to_customer(CustomerRow(r.customer_id, r.code, r.name)),
            currency=r.currency,
            order_count=r.order_count,
            total_amount=r.total_amount,
        )
        for r in rows
    ]


async def aging(info: Info) -> list[AgingBucket]:
    rows = await info.context.router.analyst(db.aging)
    return [
        AgingBucket(bucket=r.bucket, currency=r.currency, order_count=r.order_count, total_amount=r.total_amount)
        for r in rows
    ]
