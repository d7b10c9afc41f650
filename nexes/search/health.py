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


async def _latest_reindex(conn: AsyncConnection[Any]) -> dict[str, Any] | None:
    """The latest reindex: its progress while it runs (documents of about `estimated_total`,
    the same estimate `nexes reindex` shows), its outcome once done."""
    run = await search_db.latest_reindex(conn)
    if run is None:
        return None
    return {
        "collection": run.collection,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "outcome": run.outcome or "running",
        "documents": run.documents,
        "estimated_total": run.estimated_total,
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
