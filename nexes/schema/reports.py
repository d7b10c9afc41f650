"""Analyst reports: served by replicas only, under the analyst role (SERVICE_UNAVAILABLE
when no replica is healthy), from summary tables, whatever the order count."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum

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
