"""Health: liveness (no dependency touched), the short public status and the detailed
report for admins, both read from the monitor's last round (nexes/db/connect/monitor.py).

No health call opens a connection or waits on a dependency: the monitor's one connection
per server, its Redis client and its HTTP client do all the probing, in the background.

- GET /api/health/live: public; {"status": "ok"} while the process serves.
- GET /api/health: public; {"status": "ok" | "degraded" | "down"}, 200 or 503 (down: no
  database can serve). Nothing about the topology: no servers, hosts, roles or errors.
  Redis or the Dramatiq broker (NEXES_BROKER_URL, Redis or RabbitMQ) unreachable is
  "degraded", never "down": reads and mutations go on; an upload is stored and stays
  QUEUED until the broker is back (the sweep sends it), search catches up from its outbox.
- GET /api/health/detail: admin token only (nexes.auth.permissions.ROUTES; the auth
  middleware refuses others before this handler runs). Per-server state, lag, schema
  version, pools, Redis, search; each failure a code and a short reason of our own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import orjson
import pika
import pika.exceptions
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


def _amqp_error(exc: BaseException) -> ProbeError:
    """The code for a failed AMQP call. pika keeps the socket's error in its exception's
    args and `exception` attributes (AMQPConnectionError(AMQPConnectorSocketConnectError)
    whose .exception is the ConnectionRefusedError), not in __cause__; its text names the
    host and port, so none of it is shown."""
    pending: list[object] = [exc]
    for _ in range(16):  # a few levels of args at most
        if not pending:
            break
        inner = pending.pop()
        if isinstance(inner, OSError):
            return probes.classify_socket(inner)
        if isinstance(inner, BaseException):
            pending.extend([*inner.args, getattr(inner, "exception", None)])
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError):
        return probes.AUTH_FAILED
    if isinstance(exc, pika.exceptions.StreamLostError | pika.exceptions.ConnectionClosed):
        return probes.CONNECTION_LOST
    return probes.CONNECTION_FAILED if isinstance(exc, pika.exceptions.AMQPConnectionError) else probes.UNEXPECTED


class BrokerCheck:
    """The Dramatiq broker NEXES_BROKER_URL names, whichever it is: a PING on Redis (its own
    client: the broker may be another Redis than NEXES_REDIS_URL), or on RabbitMQ a round
    trip (basic.qos) over one AMQP connection kept open between rounds. pika's
    BlockingConnection blocks, so it runs in a thread, one call at a time (a lock), bounded
    by NEXES_REDIS_TIMEOUT: a round that finds the previous call still stuck reports a
    timeout instead of waiting (hand-rolled: no asyncio AMQP client is in the dependencies,
    and aio-pika would be one more for one probe)."""

    name = "broker"

    def __init__(self, settings: Settings) -> None:
        self._timeout = settings.redis_timeout
        url = settings.dramatiq_url
        self.kind = "rabbitmq" if url.startswith(("amqp://", "amqps://")) else "redis"
        self._redis: aioredis.Redis | None = None
        self._params: pika.URLParameters | None = None
        if self.kind == "redis":
            self._redis = aioredis.Redis.from_url(
                url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout, max_connections=1
            )
        else:
            self._params = pika.URLParameters(url)
            self._params.socket_timeout = self._timeout
            self._params.stack_timeout = self._timeout
            self._params.blocked_connection_timeout = self._timeout
            self._params.connection_attempts = 1
            # The connection idles between rounds: heartbeats (answered in each round's
            # process_data_events) keep RabbitMQ from closing it, and end a silent one.
            self._params.heartbeat = 60
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._lock = threading.Lock()

    async def probe(self) -> dict[str, Any]:
        if self._redis is not None:
            try:
                await self._redis.ping()
            except (aioredis.RedisError, OSError) as exc:
                return {"kind": self.kind, "reachable": False, "error": classify_redis(exc).as_dict()}
            return {"kind": self.kind, "reachable": True}
        if not self._lock.acquire(blocking=False):
            return {"kind": self.kind, "reachable": False, "error": probes.TIMEOUT.as_dict()}
        call = asyncio.to_thread(self._amqp_round)
        try:
            await asyncio.wait_for(asyncio.shield(call), self._timeout)
        except TimeoutError:
            return {"kind": self.kind, "reachable": False, "error": probes.TIMEOUT.as_dict()}
        except Exception as exc:
            return {"kind": self.kind, "reachable": False, "error": _amqp_error(exc).as_dict()}
        return {"kind": self.kind, "reachable": True}

    def _amqp_round(self) -> None:
        """One round trip, (re)connecting first when needed; releases the lock when done,
        however late (the probe may have stopped waiting for it)."""
        try:
            if self._conn is None or not self._conn.is_open:
                self._conn = pika.BlockingConnection(self._params)
                self._channel = self._conn.channel()
            self._conn.process_data_events(0)
            self._channel.basic_qos(prefetch_count=0)
        except BaseException:
            self._drop()
            raise
        finally:
            self._lock.release()

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to report
                conn.close()

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self._conn is not None and self._lock.acquire(blocking=False):  # a stuck round keeps its connection
            try:
                await asyncio.to_thread(self._drop)
            finally:
                self._lock.release()


def _aged(report: dict[str, Any]) -> dict[str, Any]:
    """A worker's pool report with its age in seconds (as the worker last reported it)."""
    age = round(max(0.0, time.time() - report["reported_at"]), 1)
    return {"worker": report["worker"], "pools": report["pools"], "age_seconds": age}


def _status(monitor: ReplicaMonitor) -> tuple[str, dict[str, Any], list[dict[str, Any]], str | None]:
    """(status, primary, replicas, schema) from the monitor's last round."""
    primary = monitor.primary_report()
    replicas = [monitor.describe(i) for i in range(len(monitor.status))]
    redis_ok = monitor.check_report(RedisCheck.name)["reachable"]
    broker_ok = monitor.check_report(BrokerCheck.name)["reachable"]
    version = primary.get("schema_version")
    # Code newer than the schema writes wrongly (e.g. customer stats counted by a trigger
    # the missing migration would have told to stand aside): degraded until `nexes migrate`.
    schema = migrate.behind(version) if primary["reachable"] and version is not None else None
    serving = primary["reachable"] or any(r["reachable"] for r in replicas)
    healthy = primary["reachable"] and all(r["reachable"] for r in replicas) and redis_ok and broker_ok and not schema
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
        "broker": monitor.check_report(BrokerCheck.name),
        "typesense": {k: search[k] for k in ("reachable", "error", "checked_ago_seconds") if k in search},
        "search": {k: v for k, v in search.items() if k not in ("reachable", "checked_ago_seconds")},
    }
    return json_response(body, 503 if status == "down" else 200)
