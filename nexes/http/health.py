"""Health: liveness (no dependency touched), the short public status and the detailed
report for admins, both read from the monitor's last round (nexes/db/connect/monitor.py).

No health call opens a connection or waits on a dependency: the monitor's one connection
per server, its Redis client and its HTTP client do all the probing, in the background.

- GET /api/health/live: public; {"status": "ok"} while the process serves.
- GET /api/health: public; {"status": "ok" | "degraded" | "down"}, 200 or 503 (down: no
  database can serve). Nothing about the topology: no servers, hosts, roles or errors.
- GET /api/health/detail: admin token only (nexes.auth.permissions.ROUTES; the auth
  middleware refuses others before this handler runs). Per-server state, lag, schema
  version, pools, Redis, search; each failure a code and a short reason of our own words.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import Response

from nexes.db import migrate
from nexes.db.connect import probes
from nexes.db.connect.monitor import ReplicaMonitor
from nexes.db.connect.probes import ProbeError
from nexes.http.errors import json_response
from nexes.metrics import WORKER_POOLS_KEY
from nexes.settings import Settings

LIVE_PATH = "/api/health/live"
PATH = "/api/health"
DETAIL_PATH = "/api/health/detail"


async def health_live(request: Request) -> Response:
    """Liveness: answers without touching any dependency."""
    return json_response({"status": "ok"})


def classify_redis(exc: BaseException) -> ProbeError:
    """The code for a failed Redis call; redis-py's text names the host and port."""
    if isinstance(exc, aioredis.TimeoutError | TimeoutError):
        return probes.TIMEOUT
    if isinstance(exc, aioredis.AuthenticationError):
        return probes.AUTH_FAILED
    if isinstance(exc, aioredis.ConnectionError):  # the socket's own error rides along
        return probes.classify_wrapped(exc) or probes.CONNECTION_FAILED
    if isinstance(exc, aioredis.RedisError):
        return probes.QUERY_FAILED
    return probes.classify_socket(exc)


class RedisCheck:
    """PING over one client kept open between rounds, every wait bounded by NEXES_REDIS_TIMEOUT."""

    name = "redis"

    def __init__(self, settings: Settings) -> None:
        timeout = settings.redis_timeout
        self._client = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout, max_connections=1
        )

    async def probe(self) -> dict[str, Any]:
        try:
            await self._client.ping()
            workers = await self._worker_pools()
        except (aioredis.RedisError, OSError) as exc:
            return {"reachable": False, "error": classify_redis(exc).as_dict()}
        return {"reachable": True, "worker_pools": workers}

    async def _worker_pools(self) -> list[dict[str, Any]]:
        """The pools each worker process last reported (nexes.jobs.metrics), at most MAX_WORKERS;
        a report expires in Redis half a minute after its process stopped reporting."""
        keys = []
        async for key in self._client.scan_iter(match=WORKER_POOLS_KEY + "*", count=100):
            keys.append(key)
            if len(keys) == MAX_WORKERS:
                break
        reports = await self._client.mget(keys) if keys else []
        out = []
        for key, raw in zip(keys, reports, strict=True):
            if raw is not None:
                report = orjson.loads(raw)
                worker = key.decode().removeprefix(WORKER_POOLS_KEY)
                out.append({"worker": worker, "reported_at": report["at"], "pools": report["pools"]})
        return sorted(out, key=lambda r: r["worker"])

    async def aclose(self) -> None:
        await self._client.aclose()


MAX_WORKERS = 200  # worker processes whose pools /api/health/detail shows


def _aged(report: dict[str, Any]) -> dict[str, Any]:
    """A worker's pool report with its age in seconds (as the worker last reported it)."""
    age = round(max(0.0, time.time() - report["reported_at"]), 1)
    return {"worker": report["worker"], "pools": report["pools"], "age_seconds": age}


def _status(monitor: ReplicaMonitor) -> tuple[str, dict[str, Any], list[dict[str, Any]], str | None]:
    """(status, primary, replicas, schema) from the monitor's last round."""
    primary = monitor.primary_report()
    replicas = [monitor.describe(i) for i in range(len(monitor.status))]
    redis_ok = monitor.check_report(RedisCheck.name)["reachable"]
    version = primary.get("schema_version")
    # Code newer than the schema writes wrongly (e.g. customer stats counted by a trigger
    # the missing migration would have told to stand aside): degraded until `nexes migrate`.
    schema = migrate.behind(version) if primary["reachable"] and version is not None else None
    serving = primary["reachable"] or any(r["reachable"] for r in replicas)
    healthy = primary["reachable"] and all(r["reachable"] for r in replicas) and redis_ok and not schema
    return ("ok" if healthy else "degraded" if serving else "down"), primary, replicas, schema


async def health(request: Request) -> Response:
    """Readiness, public: the status word alone. 503 only when no database can serve;
    "degraded" when something is down but reads go on."""
    status, *_ = _status(request.app.state.monitor)
    return json_response({"status": status}, 503 if status == "down" else 200)


async def health_detail(request: Request) -> Response:
    """Readiness for admins: every server's, Redis's and search's last probe, and the pools."""
    app = request.app.state
    monitor: ReplicaMonitor = app.monitor
    status, primary, replicas, schema = _status(monitor)
    search = monitor.check_report("search")
    redis = monitor.check_report(RedisCheck.name)
    body = {
        "status": status,
        **({"schema": schema} if schema else {}),
        "primary": primary,
        "replicas": replicas,
        "pools": app.pools.stats(),
        "worker_pools": [_aged(report) for report in redis.pop("worker_pools", [])],
        "redis": redis,
        "typesense": {k: search[k] for k in ("reachable", "error", "checked_ago_seconds") if k in search},
        "search": {k: v for k, v in search.items() if k not in ("reachable", "checked_ago_seconds")},
    }
    return json_response(body, 503 if status == "down" else 200)
