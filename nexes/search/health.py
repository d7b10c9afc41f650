"""The search check of the monitor's round: Typesense, the breaker, sync lag and the
latest reindex, kept for /api/health and the search gauges of /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from psycopg import AsyncConnection

from nexes.db import search as search_db
from nexes.db.connect import probes
from nexes.db.connect.probes import ProbeError
from nexes.db.connect.router import Router
from nexes.errors import NexesError
from nexes.search import metrics
from nexes.search.engine import service_for
from nexes.settings import Settings

BAD_ANSWER = ProbeError("BAD_ANSWER", "the server answered, but not that it is healthy")


def classify_http(exc: BaseException) -> ProbeError:
    """The code for a failed HTTP probe (httpx), without the URL httpx puts in its text."""
    if isinstance(exc, httpx.TimeoutException):
        return probes.TIMEOUT
    if isinstance(exc, httpx.ConnectError):  # the socket's own error rides along
        return probes.classify_wrapped(exc) or probes.CONNECTION_FAILED
    if isinstance(exc, httpx.HTTPError | ValueError):
        return probes.CONNECTION_FAILED
    return probes.classify_socket(exc)


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


class SearchCheck:
    """Never raises: search being down degrades search, not the API. One HTTP client,
    kept open; the outbox and reindex reads go through the API's primary pool."""

    name = "search"

    def __init__(self, settings: Settings, router: Router, timeout: float) -> None:
        self.settings = settings
        self.router = router
        self.timeout = timeout
        self._clients = [
            httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout) for url in settings.typesense_urls
        ]

    async def _node(self, client: httpx.AsyncClient) -> dict[str, Any]:
        try:
            answer = await client.get("/health")
            if answer.status_code == 200 and answer.json().get("ok") is True:
                return {"typesense": "ok"}
            return {"typesense": "down", "error": BAD_ANSWER.as_dict()}
        except (httpx.HTTPError, ValueError) as exc:
            return {"typesense": "down", "error": classify_http(exc).as_dict()}

    async def probe(self) -> dict[str, Any]:
        nodes = await asyncio.gather(*(self._node(client) for client in self._clients))
        healthy = sum(node["typesense"] == "ok" for node in nodes)
        # Search is served while any node answers; "degraded" says a cluster lost a node.
        word = "ok" if healthy == len(nodes) else "degraded" if healthy else "down"
        report: dict[str, Any] = {"reachable": healthy > 0, "typesense": word}
        if len(nodes) == 1:
            report.update({k: v for k, v in nodes[0].items() if k == "error"})
        else:
            report["nodes"] = [{"node": k, **node} for k, node in enumerate(nodes, start=1)]
        try:  # the breakers' state lives in this process
            service = service_for(self.settings)
            report["breaker"] = await asyncio.wait_for(service.breaker_state(), self.timeout)
            metrics.BREAKER_OPEN.set(1 if report["breaker"] == "opened" else 0)
            if len(nodes) > 1:
                report["breakers"] = await asyncio.wait_for(service.breaker_states(), self.timeout)
        except Exception as exc:
            report.update(breaker=None, breaker_error=(probes.classify_wrapped(exc) or probes.UNEXPECTED).as_dict())
        try:
            pending, lag = await asyncio.wait_for(self.router.read(search_db.outbox_lag, fresh=True), self.timeout)
            report.update(outbox_pending=pending, sync_lag_seconds=round(lag, 3))
            metrics.SYNC_LAG.set(lag)
            metrics.OUTBOX_PENDING.set(pending)
        except Exception as exc:
            report.update(outbox_pending=None, sync_lag_seconds=None, outbox_error=_db_error(exc))
        try:
            report["reindex"] = await asyncio.wait_for(self.router.read(_latest_reindex, fresh=True), self.timeout)
        except Exception as exc:
            report.update(reindex=None, reindex_error=_db_error(exc))
        return report

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


def _db_error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, NexesError):  # the router's: no pool could serve the read
        return {"code": exc.code.value, "reason": "no database connection could serve the read"}
    return probes.classify(exc).as_dict()
