"""The dashboard: per-status counts and amounts over UTC days, from dashboard_stat."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import strawberry

from nexes.schema.types import Status


@strawberry.type
class CurrencyAmount:
    currency: str
    amount: Decimal


@strawberry.type
class StatusFigures:
    status: Status
    count: int
    amounts: list[CurrencyAmount]


@strawberry.type(description="Orders per status over whole UTC days; from and to are inclusive.")
class Dashboard:
    from_: dt.date | None = strawberry.field(name="from")
    to: dt.date | None
    total_count: int
    statuses: list[StatusFigures]
