"""The workers' metrics: Dramatiq's message counts and durations, the worker pools and
import progress, served on 127.0.0.1:NEXES_WORKER_METRICS_PORT (nothing when it is 0, the default).

Not dramatiq.middleware.Prometheus: it reads its address from environment variables of
its own when it is imported and binds 0.0.0.0:9191 unless told otherwise, and it points
prometheus_client at its directory only at process boot, after the actors' modules
imported it. This middleware does the same work with Nexes' settings:

- at each worker process's boot, prometheus_client writes to the multiprocess directory
  under the worker's state (NEXES_WORKER_STATE_DIR/metrics), dead processes' gauges pruned;
- the first process of the worker to bind the port serves the whole directory: one scrape
  covers every process of the worker, and the address is never on a public interface;
- a daemon thread per process writes the pool gauges every REPORT_SECONDS and reports the
  pools' figures to Redis, where the API's /api/health/detail shows them with their age.

Who may scrape: whoever reaches the loopback port. What it reveals: message counts by
actor, pool figures, import rows; no hosts, roles, queries or ids.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import orjson
from prometheus_client import Counter, Gauge, Histogram, start_http_server, values

from nexes.metrics import WORKER_POOLS_KEY, multiprocess_registry, prune_dead, record_pools

log = logging.getLogger(__name__)
REPORT_SECONDS = 5.0

MESSAGES = Counter(
    "nexes_worker_messages",
    "Messages the workers processed, by queue, actor and outcome.",
    ["queue", "actor", "outcome"],
)
DURATION = Histogram(
    "nexes_worker_message_duration_seconds",
    "Time the workers spent on each message, by queue and actor.",
    ["queue", "actor"],
    buckets=(0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 21600.0),
)
IN_PROGRESS = Gauge(
    "nexes_worker_messages_in_progress",
    "Messages being processed now, by queue and actor.",
    ["queue", "actor"],
    multiprocess_mode="livesum",
)
RECONCILE_DRIFT = Counter(
    "nexes_reconcile_drift",
    "Drift the reconciliation found, by check, and whether it corrected it (dashboard and customer "
    "figures are corrected; on-hand, negative stock and line mismatches are reported in stat_drift).",
    ["check", "corrected"],
)
IMPORT_ROWS = Counter("nexes_import_rows", "Import rows applied in committed chunks, by the workers.", ["phase"])


class WorkerMetrics(dramatiq.Middleware):
    """Counts and times every message; serves the worker's series (see the module's docstring)."""

    def __init__(self, port: int, state_dir: Path, redis_client: Any) -> None:
        self.port = port
        self.directory = state_dir / "metrics"
        self.redis = redis_client
        self._started: dict[str, float] = {}

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        prune_dead(self.directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.directory)
        # prometheus_client chose its value class when the actors' modules imported it;
        # choose again now that the directory is set, so every series made from here on
        # (all of this module's are labelled, so made on first use) is shared.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        try:
            start_http_server(self.port, "127.0.0.1", registry=multiprocess_registry(self.directory))
        except OSError:
            log.debug("worker metrics: port %d served by another process of this worker", self.port)
        threading.Thread(target=self._report, name="nexes-worker-metrics", daemon=True).start()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        IN_PROGRESS.labels(message.queue_name, message.actor_name).inc()
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        labels = (message.queue_name, message.actor_name)
        started = self._started.pop(message.message_id, None)
        if started is None:
            return
        IN_PROGRESS.labels(*labels).dec()
        DURATION.labels(*labels).observe(time.perf_counter() - started)
        MESSAGES.labels(*labels, "ok" if exception is None else "error").inc()

    after_skip_message = after_process_message

    def _report(self) -> None:
        from nexes.db.connect.worker import open_pools

        key = f"{WORKER_POOLS_KEY}{socket.gethostname()}:{os.getpid()}"
        while True:
            pools = open_pools()
            record_pools(pools)
            report = {"at": time.time(), "pools": {pool.name: pool.get_stats() for pool in pools}}
            try:
                self.redis.set(key, orjson.dumps(report), ex=round(REPORT_SECONDS * 6))
            except Exception as exc:  # Redis down: the gauges still go on
                log.debug("worker metrics: pools not reported to Redis (%s)", type(exc).__name__)
            time.sleep(REPORT_SECONDS)
