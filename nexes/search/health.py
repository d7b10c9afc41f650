"""The search section of /api/health: Typesense, the breaker, sync lag and the latest reindex."""

from __future__ import annotations

from typing import Any

import httpx
from psycopg import AsyncConnection

from nexes.db import search as search_db
from nexes.db.connect.router import Router
from nexes.search import metrics
from nexes.search.engine import service_for
from nexes.settings import Settings

# The latest reindex: its progress while it runs (documents of about `estimated_total`,
# the same estimate `nexes reindex` shows), its outcome once done.
LATEST_REINDEX = f"""
SELECT collection, started_at, finished_at, outcome, documents, ({search_db.ESTIMATE_ORDERS})
FROM search_reindex ORDER BY id DESC LIMIT 1
"""


async def _latest_reindex(conn: AsyncConnection[Any]) -> dict[str, Any] | None:
    cur = await conn.execute(LATEST_REINDEX)
    row = await cur.fetchone()
    if row is None:
        return None
    name, started, finished, outcome, documents, estimate = row
    return {
        "collection": name,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat() if finished else None,
        "outcome": outcome or "running",
        "documents": documents,
        "estimated_total": estimate,
    }


async def search_health(settings: Settings, router: Router) -> dict[str, Any]:
    """Never raises: search being down degrades search, not the API."""
    metrics.install(settings)
    report: dict[str, Any] = {"typesense": "down", "breaker": await service_for(settings).breaker_state()}
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            answer = await client.get(settings.typesense_url.rstrip("/") + "/health")
        if answer.status_code == 200 and answer.json().get("ok") is True:
            report["typesense"] = "ok"
    except (httpx.HTTPError, ValueError):
        pass
    try:
        pending, lag = await router.read(search_db.outbox_lag, fresh=True)
        report.update(outbox_pending=pending, sync_lag_seconds=round(lag, 3))
    except Exception as exc:
        report.update(outbox_pending=None, sync_lag_seconds=None, error=type(exc).__name__)
    try:
        report["reindex"] = await router.read(_latest_reindex, fresh=True)
    except Exception as exc:
        report.update(reindex=None, error=type(exc).__name__)
    return report
