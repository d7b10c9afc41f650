"""Prometheus metrics of the API process, and the ops listener that serves them.

`/metrics` is never on the public port: `nexes serve` serves it on NEXES_OPS_LISTEN
(default 127.0.0.1:9464), from the supervising process, in prometheus_client's
multiprocess mode. `nexes serve` gives every uvicorn worker one fresh
PROMETHEUS_MULTIPROC_DIR before any of them imports prometheus_client; each worker
writes its series there (memory-mapped files, one per process), and the one ops server
reads the whole directory on each scrape, so one address holds every worker's series
(counters summed, the replica gauges per pid).

Why not SO_REUSEPORT on each worker: the kernel hands each scrape to one worker, so a
scrape would see one worker's counters, a different one each time.

Who may scrape: whoever reaches NEXES_OPS_LISTEN; there is no token, so it stays on
loopback or a private interface. What a scrape costs: a read of the directory's files,
no database and no request worker. What it reveals: route counts, replica lag and
rotation per worker pid, search lag; no hosts, ports, roles or queries.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
    start_http_server,
)

# 1 ms to 30 s: a cached page takes a few ms, the statement timeout is 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

GRAPHQL_REQUESTS = Histogram(
    "nexes_graphql_request_duration_seconds",
    "GraphQL operations answered, by operation name (bounded: nexes.http.operations), type and outcome "
    "(OK, or the first error's code), with their latency.",
    ["operation", "type", "outcome"],
    buckets=LATENCY_BUCKETS,
)
GRAPHQL_ERRORS = Counter("nexes_graphql_errors", "GraphQL errors answered, by code.", ["code"])
HTTP_REQUESTS = Counter(
    "nexes_http_requests",
    "HTTP requests answered, by route (the app's routes; anything else is `other`) and status.",
    ["route", "status"],
)

DB_ROUTE = Counter(
    "nexes_db_route",
    "Database work routed, by target (replica or primary) and reason.",
    ["target", "reason"],
)
# Per process, written on each monitor round from psycopg_pool's get_stats() (multiprocess
# mode has no custom collectors): one series per pool and worker pid.
POOL_CONNECTIONS = Gauge(
    "nexes_pool_connections",
    "Connections of each pool, by state: size (open), available (idle), waiting (requests queued for one).",
    ["pool", "state"],
    multiprocess_mode="all",
)
POOL_WAIT = Gauge(
    "nexes_pool_wait_seconds",
    "Time requests spent waiting for a connection of each pool, summed since the process started.",
    ["pool"],
    multiprocess_mode="all",
)
POOL_ERRORS = Gauge(
    "nexes_pool_errors",
    "Connection errors, timeouts of requests waiting for a connection, and connections lost, of each pool "
    "since the process started.",
    ["pool", "kind"],
    multiprocess_mode="all",
)
# The monitor's read of the jobs (nexes.http.opscheck), every OPS_EVERY seconds; with
# several API workers, the newest value of any of them.
IMPORT_JOBS = Gauge("nexes_import_jobs", "Import jobs by state.", ["state"], multiprocess_mode="mostrecent")
IMPORT_LEASE_OVERDUE = Gauge(
    "nexes_import_lease_overdue_seconds",
    "How long the lease of the most overdue RUNNING import has run out (0: none): its worker "
    "stopped renewing it (stuck or dead) and the sweep has not sent it again yet.",
    multiprocess_mode="mostrecent",
)
PARTITION_HORIZON = Gauge(
    "nexes_partition_horizon_seconds",
    "Seconds from now to the end of the last service_order partition: orders dated past it are refused "
    "(CREATED_AT_OUT_OF_RANGE) until the partitions job runs.",
    multiprocess_mode="mostrecent",
)
SHARED_READS = Counter(
    "nexes_db_reads_shared",
    "Reads answered by the same read already in flight in this process (single flight), not run again.",
)
STATEMENT_TIMEOUTS = Counter(
    "nexes_db_statement_timeouts",
    "API statements cancelled by their statement timeout (answered TIMEOUT).",
)
REQUESTS_REFUSED = Counter(
    "nexes_requests_refused",
    "Requests answered 503 at once because the process ran NEXES_MAX_CONCURRENT_REQUESTS already.",
)
# Each worker has its own monitor: one series per worker process (the pid label).
REPLICA_LAG = Gauge(
    "nexes_replica_lag_seconds",
    "The lag monitor's last measure of each replica's lag.",
    ["replica"],
    multiprocess_mode="all",
)
REPLICA_IN_ROTATION = Gauge(
    "nexes_replica_in_rotation",
    "1 when the lag monitor keeps the replica in rotation, else 0.",
    ["replica"],
    multiprocess_mode="all",
)


# Where each worker process reports its pools' figures (nexes.jobs.metrics); the API's
# Redis check reads them for /api/health/detail.
WORKER_POOLS_KEY = "nexes:worker-pools:"


def record_pools(pools: Iterable[Any]) -> None:
    """Write each psycopg pool's get_stats() into the pool gauges (the monitor's round calls it)."""
    for pool in pools:
        stats = pool.get_stats()
        name = pool.name
        POOL_CONNECTIONS.labels(name, "size").set(stats.get("pool_size", 0))
        POOL_CONNECTIONS.labels(name, "available").set(stats.get("pool_available", 0))
        POOL_CONNECTIONS.labels(name, "waiting").set(stats.get("requests_waiting", 0))
        POOL_WAIT.labels(name).set(stats.get("requests_wait_ms", 0) / 1000)
        for kind in ("connections_errors", "requests_errors", "connections_lost"):
            POOL_ERRORS.labels(name, kind).set(stats.get(kind, 0))


class OpsListenError(ValueError):
    """NEXES_OPS_LISTEN is malformed or cannot be bound; the message says which."""


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) of NEXES_OPS_LISTEN."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise OpsListenError(f"NEXES_OPS_LISTEN={listen!r}: expected host:port, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class MultiProcessRegistry(CollectorRegistry):
    """Every process's series, read from the shared multiprocess directory on each collect,
    after the gauges of processes that are gone are dropped (prune_dead)."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        multiprocess.MultiProcessCollector(self, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        prune_dead(self.directory)
        yield from super().collect()


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """Every worker's series, read from the shared multiprocess directory on each collect."""
    return MultiProcessRegistry(directory)


def prune_dead(directory: Path) -> None:
    """Delete the gauge files of processes that no longer run (a worker uvicorn or Dramatiq
    restarted, or one of an earlier run): their per-pid series would stay forever, and a
    `max` gauge of theirs would win forever. Counters and histograms stay: their totals
    include what the dead process counted."""
    for path in directory.glob("gauge_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_ops(listen: str, directory: Path) -> tuple[WSGIServer, threading.Thread]:
    """The ops listener on a daemon thread of the calling (supervising) process."""
    host, port = parse_listen(listen)
    try:
        return start_http_server(port, host, registry=multiprocess_registry(directory))
    except OSError as exc:
        raise OpsListenError(f"NEXES_OPS_LISTEN={listen!r}: cannot listen there ({exc.strerror})") from exc


def scrape(directory: Path) -> bytes:
    """What the ops listener would answer now (the Prometheus text format)."""
    return generate_latest(multiprocess_registry(directory))
