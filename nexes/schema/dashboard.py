"""The dashboard: per-status counts and amounts over UTC days, from dashboard_stat."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import strawberry

from nexes.schema.types import Status


@strawberry.type(description="A sum of money in one currency (amounts are never converted).")
class CurrencyAmount:
    currency: str = strawberry.field(description="ISO 4217 code, e.g. EUR.")
    amount: Decimal = strawberry.field(description="Sum of the orders' totalAmount in this currency, 2 decimals.")


@strawberry.type(description="The orders of one status in the dashboard's days.")
class StatusFigures:
    status: Status = strawberry.field(description="Which orders these figures count.")
    count: int = strawberry.field(description="Orders created in the period that have this status now.")
    amounts: list[CurrencyAmount] = strawberry.field(description="Their totals, one per currency, by currency code.")


@strawberry.type(description="Orders per status over whole UTC days; from and to are inclusive.")
class Dashboard:
    from_: dt.date | None = strawberry.field(
        name="from", description="First UTC day counted (inclusive); null: since the first order."
    )
    to: dt.date | None = strawberry.field(description="Last UTC day counted (inclusive); null: no end.")
    total_count: int = strawberry.field(description="Orders created in the period, every status, archived included.")
    statuses: list[StatusFigures] = strawberry.field(description="Figures per status, in Status order.")
