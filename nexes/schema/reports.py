"""Analyst reports: served by replicas only, under the analyst role (SERVICE_UNAVAILABLE
when no replica is healthy), from summary tables, whatever the order count."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum

import strawberry

from nexes.schema.types import Customer, Status, value_descriptions


@value_descriptions(
    DAY="One UTC day per period (spans of at most 1,100 days).",
    WEEK="ISO weeks, Monday to Sunday; period is the Monday.",
    MONTH="Calendar months; period is the 1st.",
)
@strawberry.enum(description="How ordersByPeriod groups days; periods start on UTC day boundaries.")
class ReportGranularity(Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@strawberry.type(description="Orders and amounts of one period (its first day), status and currency.")
class PeriodFigures:
    period: dt.date = strawberry.field(
        description="First UTC day of the period (a Monday for WEEK, the 1st for MONTH)."
    )
    status: Status = strawberry.field(description="Status of the orders counted here (as they are now).")
    currency: str = strawberry.field(description="ISO 4217 code of totalAmount.")
    order_count: int = strawberry.field(description="Orders created in the period with this status and currency.")
    total_amount: Decimal = strawberry.field(description="Sum of their totalAmount, 2 decimals.")


@strawberry.type(description="A customer's orders (not CANCELLED) and amount in one currency.")
class CustomerAmount:
    customer: Customer = strawberry.field(description="Who ordered: the customer these totals are of.")
    currency: str = strawberry.field(description="ISO 4217 code of totalAmount.")
    order_count: int = strawberry.field(description="The customer's orders in the months, CANCELLED excluded.")
    total_amount: Decimal = strawberry.field(
        description="Sum of those orders' totalAmount, 2 decimals; the ranking key."
    )


@strawberry.type(description="Open orders (not COMPLETED or CANCELLED) created this many days ago.")
class AgingBucket:
    bucket: str = strawberry.field(description="Age range in whole UTC days: 0-7, 8-30, 31-90 or 90+.")
    currency: str = strawberry.field(description="ISO 4217 code of totalAmount.")
    order_count: int = strawberry.field(description="Open orders (DRAFT, OPEN, IN_PROGRESS) of this age.")
    total_amount: Decimal = strawberry.field(description="Sum of their totalAmount, 2 decimals: the money waiting.")
