"""Prometheus metrics of the API process, and the `/metrics` endpoint.

Each API worker process exports its own registry: scrape every worker (or run one
worker per container, as production does).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import Response

DB_ROUTE = Counter(
    "nexes_db_route",
    "Database work routed, by target (replica or primary) and reason.",
    ["target", "reason"],
)
REPLICA_LAG = Gauge("nexes_replica_lag_seconds", "The lag monitor's last measure of each replica's lag.", ["replica"])
REPLICA_IN_ROTATION = Gauge(
    "nexes_replica_in_rotation", "1 when the lag monitor keeps the replica in rotation, else 0.", ["replica"]
)


async def metrics(request: Request) -> Response:
    """GET /metrics in the Prometheus text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
