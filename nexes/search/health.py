"""The search section of /api/health: Typesense, the breaker, and sync lag."""

from __future__ import annotations

from typing import Any

import httpx

from nexes.db import search as search_db
from nexes.db.router import Router
from nexes.search import metrics
from nexes.search.engine import service_for
from nexes.settings import Settings


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
    return report
