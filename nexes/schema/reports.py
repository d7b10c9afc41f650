"""Analyst reports: served by replicas only, under the analyst role (SERVICE_UNAVAILABLE
when no replica is healthy), from summary tables, whatever the order count."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any

import strawberry

from nexes.schema.types import Customer, Status


@strawberry.enum
class ReportGranularity(Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@strawberry.type(description="Orders and amounts of one period (its first day), status and currency.")
class PeriodFigures:
    period: dt.date
    status: Status
    currency: str
    order_count: int
    total_amount: Decimal


@strawberry.type(description="A customer's orders (not CANCELLED) and amount in one currency.")
class CustomerAmount:
    customer: Customer
    currency: str
    order_count: int
    total_amount: Decimal


@strawberry.type(description="Open orders (not COMPLETED or CANCELLED) created this many days ago.")
class AgingBucket:
    bucket: str = strawberry.field(description="0-7, 8-30, 31-90 or 90+ (whole UTC days)")
    currency: str
    order_count: int
    total_amount: Decimal


@strawberry.type(description="Reports for analysts, from replicas only.")
class Reports:
    @strawberry.field(
        description="Per day, week (from Monday) or month, status and currency over UTC days from..to "
        "(inclusive); MONTH counts the whole months that hold them. DAY spans at most 1,100 days."
    )
    async def orders_by_period(
        self,
        info: strawberry.Info,
        from_: Annotated[dt.date, strawberry.argument(name="from")],
        to: dt.date,
        granularity: ReportGranularity = ReportGranularity.DAY,
    ) -> list[PeriodFigures]:
        from nexes.resolvers import reports

        return await reports.orders_by_period(info, from_, to, granularity.value)

    @strawberry.field(
        description="The customers with the largest amounts, per currency, over the whole months that hold "
        "from..to (at most 100)."
    )
    async def top_customers(
        self,
        info: strawberry.Info,
        from_: Annotated[dt.date, strawberry.argument(name="from")],
        to: dt.date,
        limit: int = 10,
        currency: str | None = None,
    ) -> list[CustomerAmount]:
        from nexes.resolvers import reports

        return await reports.top_customers(info, from_, to, limit, currency)

    @strawberry.field(description="Open orders by age: 0-7, 8-30, 31-90 and 90+ days, per currency.")
    async def aging(self, info: strawberry.Info) -> list[AgingBucket]:
        from nexes.resolvers import reports

        return await reports.aging(info)


@strawberry.type
class ReportsQuery:
    @strawberry.field(description="Analyst reports (replicas only; SERVICE_UNAVAILABLE when none is healthy).")
    def reports(self) -> Reports:
        return Reports()


__all__: list[Any] = ["Reports", "ReportsQuery"]
