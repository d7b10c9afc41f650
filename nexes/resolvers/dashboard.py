"""dashboard(from, to): a handful of rows from dashboard_stat, whatever the order count."""

from __future__ import annotations

from datetime import date

from nexes.db import dashboard as dashboard_db
from nexes.errors import bad_input
from nexes.resolvers.context import Info
from nexes.schema.dashboard import CurrencyAmount, Dashboard, StatusFigures
from nexes.schema.types import STATUS_BY_NAME, Status

DASHBOARD = "dashboard"  # its reads' key (Router.read's `shared`): the rows are only read


async def dashboard(info: Info, day_from: date | None, day_to: date | None) -> Dashboard:
    if day_from and day_to and day_from > day_to:
        raise bad_input("from must not be after to", field="from")
    rows = await info.context.router.read(
        lambda conn: dashboard_db.stats_by_status(conn, day_from, day_to), shared=(DASHBOARD, day_from, day_to)
    )
    figures = {s: StatusFigures(status=s, count=0, amounts=[]) for s in Status}
    for row in rows:
        fig = figures[STATUS_BY_NAME[row.status]]
        fig.count += row.order_count
        fig.amounts.append(CurrencyAmount(currency=row.currency, amount=row.total_amount))
    statuses = list(figures.values())
    return Dashboard(from_=day_from, to=day_to, total_count=sum(f.count for f in statuses), statuses=statuses)
