"""Issue 17's analyst bulkhead: the SPA's page mix idle, then beside 20 analysts running
heavy costed queries in a loop, against `nexes serve --workers 2` on a seeded nexes_bench.

    python -m bench.run bulkhead [--seconds S]

The mix (bench.replicas' `Load`: 50-order pages with cursors, lookups by id, dashboard,
search) runs with a viewer's token; each analyst client with an analyst token of its own
subject, so its reads go through the analyst pools under nexes_analyst on the replica.
The rate limits are raised through the server's environment (printed in the report) so
that the benchmark measures the pools, not the limiter.

Evidence that the mix never waited on its own pools, before and after each phase:
the API pools' psycopg_pool stats from /api/health/detail (an admin token; probed over
fresh connections, which land on either worker), their `requests_waiting` sampled every
second, `nexes_db_route_total` from the ops listener (`primary/replica_pool_busy` counts a
replica read whose own pool had no connection in time), and the replica's
pg_stat_activity per role, sampled every second. Everything stops by itself; the server
is stopped by its process group.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench import replicas
from bench.mix import FIRST
from bench.replicas import Load, pct
from bench.run import bench_env, process, report
from bench.tokens import bearer
from nexes import settings as settings_module
from nexes.auth.tokens import MAX_TTL, mint

ROOT = Path(__file__).resolve().parent.parent
NEXES = str(ROOT / ".venv" / "bin" / "nexes")
PORT, OPS_PORT = 15690, 15691  # beside the stack's 15600+ ports
# Raised for the benchmark: points an hour per subject (nexes.settings.RATE_LIMITS).
RAISED = {"NEXES_RATE_LIMIT_ANALYST": "10000000", "NEXES_RATE_LIMIT_VIEWER": "10000000"}

BY_PERIOD = (
    "query($f: Date!, $t: Date!, $g: ReportGranularity!) { reports { ordersByPeriod(from: $f, to: $t, "
    "granularity: $g) { period status currency orderCount totalAmount } } }"
)
TOP = (
    "query($f: Date!, $t: Date!) { reports { topCustomers(from: $f, to: $t, limit: 50) "
    "{ customer { id name } currency orderCount totalAmount } } }"
)
BIG_PAGE = (
    "query($a: String, $s: [Status!]) { serviceOrders(first: 100, after: $a, filter: {status: $s}) "
    "{ totalCount edges { node { id sodNumber status createdAt totalAmount currency customer { name } "
    "lines { lineNo quantity unitPrice stockItem { sku } } } } pageInfo { endCursor } } }"
)
STATUS_SETS = (["OPEN", "IN_PROGRESS"], ["COMPLETED"], ["CANCELLED", "OPEN"], None)


def token(env: dict[str, str], role: str, subject: str) -> str:
    settings = settings_module.load(env)
    return f"Bearer {mint(settings, (role,), subject=subject, ttl=min(MAX_TTL, 3600.0))}"


def data_days(env: dict[str, str]) -> tuple[dt.date, dt.date]:
    with psycopg.connect(settings_module.load(env).admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT min(day), max(day) FROM dashboard_stat").fetchone()
    assert row and row[0], "nexes_bench is not seeded: python -m bench.run seed --orders 1000000"
    return row[0], row[1]


# --- evidence -------------------------------------------------------------------------------


def route_counters() -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{OPS_PORT}/metrics", timeout=10).text
    return {
        f"{s.labels['target']}/{s.labels['reason']}": s.value
        for m in text_string_to_metric_families(text)
        for s in m.samples
        if s.name == "nexes_db_route_total"
    }


def route_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}


POOL_KEYS = (
    "pool_max",
    "pool_size",
    "connections_num",
    "requests_num",
    "requests_queued",
    "requests_waiting",
    "requests_errors",
    "requests_wait_ms",
)


def pool_probe(admin: dict[str, str], probes: int = 8) -> dict[str, dict[str, int]]:
    """Per pool, the largest of each psycopg_pool counter over `probes` fresh connections
    (each lands on either worker; the counters are each worker's since it started)."""
    out: dict[str, dict[str, int]] = {}
    for _ in range(probes):
        body = httpx.get(f"http://127.0.0.1:{PORT}/api/health/detail", headers=admin, timeout=10).json()
        for name, stats in body["pools"].items():
            mine = out.setdefault(name, {})
            for key in POOL_KEYS:
                mine[key] = max(mine.get(key, 0), int(stats.get(key, 0)))
    return out


ACTIVITY = (
    "SELECT usename, count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename IS NOT NULL GROUP BY 1"
)


class Sampler(threading.Thread):
    """Every second: the API pools' requests_waiting (/api/health/detail) and the replica's
    backends per role; stops when told, at the latest after `limit` seconds."""

    def __init__(self, env: dict[str, str], admin: dict[str, str], limit: float) -> None:
        super().__init__(name="bulkhead-sampler", daemon=True)
        self.replica_admin = env["NEXES_REPLICA_ADMIN_URLS"].split(",")[0]
        self.admin, self.limit = admin, limit
        self.stop = threading.Event()
        self.waiting: dict[str, list[int]] = {}
        self.backends: dict[str, list[int]] = {}
        self.active: dict[str, list[int]] = {}
        self.replicas: Counter[str] = Counter()
        self.lag: list[float] = []
        self.failures = 0

    def run(self) -> None:
        end = time.monotonic() + self.limit
        with psycopg.connect(self.replica_admin, autocommit=True) as conn:
            while not self.stop.is_set() and time.monotonic() < end:
                try:
                    body = httpx.get(f"http://127.0.0.1:{PORT}/api/health/detail", headers=self.admin, timeout=5)
                    detail = body.json()
                    for name, stats in detail["pools"].items():
                        self.waiting.setdefault(name, []).append(int(stats.get("requests_waiting", 0)))
                    for replica in detail["replicas"]:  # the answering worker's view of each replica
                        error = (replica.get("error") or {}).get("code")
                        self.replicas[f"{replica['state']} in_rotation={replica['in_rotation']} {error}"] += 1
                        self.lag.append(float(replica.get("lag_seconds") or 0.0))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.failures += 1
                for user, count, active in conn.execute(ACTIVITY).fetchall():
                    self.backends.setdefault(user, []).append(count)
                    self.active.setdefault(user, []).append(active)
                self.stop.wait(1.0)

    def figures(self) -> dict[str, Any]:
        return {
            "samples": max((len(v) for v in self.waiting.values()), default=0),
            "sampler_failures": self.failures,
            "pool_requests_waiting_max": {k: max(v) for k, v in sorted(self.waiting.items())},
            "replica_states_seen": dict(self.replicas),
            "replica_lag_max_s": max(self.lag, default=None),
            "replica_backends_max_by_role": {k: max(v) for k, v in sorted(self.backends.items())},
            "replica_active_max_by_role": {k: max(v) for k, v in sorted(self.active.items())},
            "replica_active_median_by_role": {k: sorted(v)[len(v) // 2] for k, v in sorted(self.active.items())},
        }


# --- the analysts -------------------------------------------------------------------------------


class Analysts:
    """`count` threads, each an analyst of its own subject, looping heavy queries until `end`."""

    def __init__(self, env: dict[str, str], count: int, days: tuple[dt.date, dt.date]) -> None:
        self.tokens = [token(env, "analyst", f"bench-analyst-{i}") for i in range(count)]
        self.days = days
        self.done: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: list[float] = []
        self.costs: list[int] = []
        self.lock = threading.Lock()

    def body(self, rng: random.Random, cursor: str | None) -> tuple[str, dict[str, Any]]:
        first, last = self.days
        years = rng.choice((1, 2, 3))
        span = {"f": max(first, last - dt.timedelta(days=365 * years)).isoformat(), "t": last.isoformat()}
        kind = rng.choice(("ordersByPeriod", "topCustomers", "serviceOrders"))
        if kind == "ordersByPeriod":
            return kind, {"query": BY_PERIOD, "variables": {**span, "g": rng.choice(("WEEK", "MONTH"))}}
        if kind == "topCustomers":
            return kind, {"query": TOP, "variables": span}
        return kind, {"query": BIG_PAGE, "variables": {"a": cursor, "s": rng.choice(STATUS_SETS)}}

    def client(self, i: int, end: float) -> None:
        rng = random.Random(i)
        cursor: str | None = None
        headers = {"Authorization": self.tokens[i]}
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", headers=headers, timeout=45) as http:
            while time.monotonic() < end:
                kind, body = self.body(rng, cursor)
                started = time.perf_counter()
                try:
                    response = http.post("/graphql", json=body)
                    doc = response.json()
                except httpx.TimeoutException:
                    with self.lock:
                        self.errors["client_timeout"] += 1
                    continue
                except (httpx.HTTPError, ValueError) as exc:
                    with self.lock:
                        self.errors[type(exc).__name__] += 1
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                with self.lock:
                    if response.status_code != 200 or doc.get("errors"):
                        code = (doc.get("errors") or [{}])[0].get("extensions", {}).get("code")
                        self.errors[f"{response.status_code}:{code}"] += 1
                        continue
                    self.done[kind] += 1
                    self.latency.append(elapsed)
                    cost = (doc.get("extensions") or {}).get("cost")
                    if isinstance(cost, dict) and isinstance(cost.get("requested"), int):
                        self.costs.append(cost["requested"])
                if kind == "serviceOrders":
                    cursor = doc["data"]["serviceOrders"]["pageInfo"]["endCursor"] if rng.random() < 0.8 else None

    def run(self, seconds: float) -> threading.Thread:
        end = time.monotonic() + seconds

        def all_clients() -> None:
            threads = [
                threading.Thread(target=self.client, args=(i, end), daemon=True) for i in range(len(self.tokens))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=seconds + 120)

        runner = threading.Thread(target=all_clients, name="bulkhead-analysts", daemon=True)
        runner.start()
        return runner

    def figures(self, wall: float) -> dict[str, Any]:
        timeouts = sum(v for k, v in self.errors.items() if "TIMEOUT" in k or k == "client_timeout")
        return {
            "clients": len(self.tokens),
            "queries_done": sum(self.done.values()),
            "queries_per_s": round(sum(self.done.values()) / wall, 2),
            "done_by_kind": dict(self.done),
            "p50_ms": pct(self.latency, 0.5),
            "p99_ms": pct(self.latency, 0.99),
            "max_ms": pct(self.latency, 1.0),
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "timeouts": timeouts,
            "cost_reported_max": max(self.costs, default=None),
        }


# --- the benchmark -------------------------------------------------------------------------------


def mix(seconds: float, clients: int, think: float, days: tuple[dt.date, dt.date]) -> dict[str, Any]:
    import uvloop

    figures: dict[str, Any] = uvloop.run(Load(PORT, clients, seconds, think, days).run())
    return {k: figures[k] for k in ("requests", "throughput_rps", "p50_ms", "p99_ms", "max_ms", "by_kind")} | {
        k: figures[k] for k in ("error_count", "errors", "errors_by_kind", "generator_loop_lag_p99_ms")
    }


def phase(name: str, env: dict[str, str], admin: dict[str, str], args: tuple[float, int, float], analysts: int) -> None:
    seconds, clients, think = args
    days = data_days(env)
    pools0, routes0 = pool_probe(admin), route_counters()
    sampler = Sampler(env, admin, seconds + 60)
    sampler.start()
    crowd = Analysts(env, analysts, days) if analysts else None
    runner = crowd.run(seconds) if crowd else None
    started = time.monotonic()
    figures = mix(seconds, clients, think, days)
    wall = time.monotonic() - started
    if runner is not None:
        runner.join(timeout=120)  # each analyst finishes its query in flight (45 s at most)
    sampler.stop.set()
    sampler.join(timeout=30)
    pools1, routes1 = pool_probe(admin), route_counters()
    report(
        bench="bulkhead",
        phase=name,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        mix=figures,
        analysts=crowd.figures(wall) if crowd else None,
        route_counters=route_delta(routes0, routes1),
        pools_before=pools0,
        pools_after=pools1,
        **sampler.figures(),
    )


def bench_bulkhead(seconds: int, clients: int = 40, think: float = 0.3, analysts: int = 20) -> None:
    env = {
        **bench_env(),
        "NEXES_ACCESS_LOG": "false",
        "NEXES_OPS_LISTEN": f"127.0.0.1:{OPS_PORT}",
        **RAISED,
    }
    settings = settings_module.load(env)
    report(
        bench="bulkhead",
        phase="setup",
        raised_limits=RAISED,
        api_pool_size=settings.api_pool_size,
        analyst_pool_size=settings.analyst_pool_size,
        pool_timeout_s=settings.pool_timeout,
        request_deadlines_s=dict(settings.request_deadlines),
        max_cost=dict(settings.max_cost),
        mix_clients=clients,
        mix_think_s=think,
        analyst_clients=analysts,
        seconds_per_phase=seconds,
    )
    admin = bearer(env, "admin")
    # The mix's Conn sends bench.replicas' token: a viewer's, as the SPA sends.
    replicas._AUTH = bearer(env, "viewer")
    cmd = [NEXES, "serve", "--host", "127.0.0.1", "--port", str(PORT), "--workers", "2"]
    with process(cmd, env, f"http://127.0.0.1:{PORT}/graphql", {"query": FIRST}, headers=admin):
        time.sleep(3)  # each worker's lag monitor: a first verdict before reads count
        mix(5, clients, think, data_days(env))  # warm-up, not reported: the pools open connections on demand
        phase("idle", env, admin, (seconds, clients, think), analysts=0)
        phase("loaded", env, admin, (seconds, clients, think), analysts=analysts)
