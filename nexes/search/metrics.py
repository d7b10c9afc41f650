"""Search metrics, in the process's default Prometheus registry (served by /metrics).

Sync lag is read from the outbox on each scrape (one short query on the primary), so
the API exports it without a worker's help."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nexes.db import search as search_db
from nexes.db.connect.conninfo import for_role
from nexes.settings import Settings

log = logging.getLogger(__name__)
SEARCHES = Counter("nexes_search_requests", "Searches answered, by engine.", ["engine"])
BUSY = Counter("nexes_search_refused", "Searches refused because every slot was taken, by bulkhead.", ["bulkhead"])


class SyncLagCollector(Collector):
    """nexes_search_sync_lag_seconds (age of the oldest outbox row) and the pending count."""

    def __init__(self, settings: Settings) -> None:
        self.conninfo = for_role(settings.primary_url, settings, "nexes_api", application_name="nexes-metrics")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("nexes_search_sync_lag_seconds", "Age of the oldest search outbox row (0: none).")
        pending = GaugeMetricFamily("nexes_search_outbox_pending", "Search outbox rows not yet synced.")
        try:
            with psycopg.connect(self.conninfo, connect_timeout=2, prepare_threshold=None, autocommit=True) as conn:
                count, age = search_db.outbox_lag_sync(conn)
        except psycopg.Error as exc:
            log.warning("metrics: search lag unavailable (%s)", exc)
            return
        lag.add_metric([], age)
        pending.add_metric([], count)
        yield lag
        yield pending


_installed: SyncLagCollector | None = None


def install(settings: Settings) -> None:
    """Register the lag collector for these settings (once per process in production; a
    process serving several databases in turn, like the tests, follows the latest)."""
    global _installed
    collector = SyncLagCollector(settings)
    if _installed is not None and _installed.conninfo == collector.conninfo:
        return
    if _installed is not None:
        REGISTRY.unregister(_installed)
    REGISTRY.register(collector)
    _installed = collector
