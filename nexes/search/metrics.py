"""Search metrics, in the process's default Prometheus registry (served by /metrics on the
ops listener). Sync lag is the monitor's last read of the outbox, so the API exports it
without a worker's help and a scrape costs the database nothing."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from nexes.metrics import LATENCY_BUCKETS

SEARCHES = Counter(
    "nexes_search_requests", "Searches answered, by engine (typesense, or postgres: the fallback).", ["engine"]
)
TYPESENSE_LATENCY = Histogram(
    "nexes_typesense_request_duration_seconds", "Typesense searches, with their latency.", buckets=LATENCY_BUCKETS
)
PATIENCE = Counter(
    "nexes_search_patience",
    "Typesense tries that waited past NEXES_TYPESENSE_TIMEOUT because no node had answered within it "
    "(every node slow: starved cores), by outcome: answered, failed, or expired at NEXES_SEARCH_PATIENCE_SECONDS.",
    ["outcome"],
)
BUSY = Counter("nexes_search_refused", "Searches refused because every slot was taken, by bulkhead.", ["bulkhead"])


# Set by the monitor's search check (nexes/search/health.py) each round, so a scrape reads
# no database; with several API workers, the newest value of any of them.
SYNC_LAG = Gauge(
    "nexes_search_sync_lag_seconds",
    "Age of the oldest search outbox row (0: none).",
    multiprocess_mode="mostrecent",
)
OUTBOX_PENDING = Gauge(
    "nexes_search_outbox_pending", "Search outbox rows not yet synced.", multiprocess_mode="mostrecent"
)
BREAKER_OPEN = Gauge(
    "nexes_search_breaker_open",
    "1 while the Typesense circuit breaker is open (searches go to PostgreSQL), else 0.",
    multiprocess_mode="mostrecent",
)
