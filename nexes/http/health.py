"""Health: liveness (no dependency touched) and readiness (every dependency probed)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nexes.db import migrate
from nexes.db.connect import probes as db_health
from nexes.http.errors import json_response
from nexes.search.health import search_health


async def health_live(request: Request) -> Response:
    """Liveness: answers without touching any dependency."""
    return json_response({"status": "ok"})


async def _redis_ok(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
        return {"reachable": True}
    except (aioredis.RedisError, OSError) as exc:
        return {"reachable": False, "error": str(exc)[:200]}
    finally:
        await client.aclose()


async def _typesense_ok(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            resp = await client.get(f"{url.rstrip('/')}/health")
        return {"reachable": resp.status_code == 200 and resp.json().get("ok") is True}
    except (httpx.HTTPError, ValueError) as exc:
        return {"reachable": False, "error": str(exc)[:200] or type(exc).__name__}


def _with_rotation(app: Any, index: int, probed: dict[str, Any]) -> dict[str, Any]:
    """A replica's direct probe, with the lag monitor's verdict: state, in_rotation, lag."""
    monitor = getattr(app, "monitor", None)
    if monitor is not None and index < len(monitor.status):
        probed.update(monitor.describe(index))
    return probed


async def health(request: Request) -> Response:
    """Readiness: each server probed directly, pools, broker, search.

    503 only when no database can serve; "degraded" when something is down but reads go on.
    """
    app = request.app.state
    settings = app.settings
    (primary, replicas), redis_state, search_state = await asyncio.gather(
        db_health.probe_all(settings.admin_url, settings.replica_admin_urls),
        _redis_ok(settings.redis_url),
        _typesense_ok(settings.typesense_url),
    )
    serving = primary.reachable or any(r.reachable for r in replicas)
    # Code newer than the schema writes wrongly (e.g. customer stats counted by a trigger
    # the missing migration would have told to stand aside): degraded until `nexes migrate`.
    schema = migrate.behind(primary.schema_version) if primary.schema_version is not None else None
    healthy = primary.reachable and all(r.reachable for r in replicas) and redis_state["reachable"] and not schema
    status = "ok" if healthy else "degraded" if serving else "down"
    body = {
        "status": status,
        **({"schema": schema} if schema else {}),
        "primary": primary.as_dict(),
        "replicas": [_with_rotation(app, i, r.as_dict()) for i, r in enumerate(replicas)],
        "pools": app.pools.stats(),
        "redis": redis_state,
        "typesense": search_state,
        "search": await search_health(settings, app.router),
    }
    return JSONResponse(body, status_code=200 if serving else 503)
