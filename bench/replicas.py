"""Issue 5's benchmark: the read mix against 2 API workers with the replica in rotation
and held past the lag threshold, reports and exports, on the 10M-order `nexes_bench`.

    python -m bench.replicas [--clients 1000] [--seconds 60] [--think 2] [--port 18060]
                             [--steps migrate,mix,reports,exports,lagged] [--export-all]

Every step prints its figures as JSON lines (copied by hand into bench/README.md).
`migrate` first waits (every 30 s, up to 20 min) until no other session runs
statements in nexes_bench, then runs `nexes migrate` there.

The load generator speaks HTTP/1.1 keep-alive over raw asyncio streams on uvloop:
1000 httpx clients cost several times more CPU per request, on 2 cores the API
needs. It measures its own CPU (the event-loop thread) and how late its loop runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.mix import Closed, Conn, choose, read_body, remember_page
from bench.run import DB, bench_env, report
from bench.samplers import descendants, status_kib
from bench.tokens import bearer
from nexes import settings as settings_module

ROOT = Path(__file__).resolve().parent.parent
NEXES = str(ROOT / ".venv" / "bin" / "nexes")
# `nexes serve` serves every worker's series (multiprocess mode) on its ops listener.
OPS_LISTEN = "127.0.0.1:19464"
PRIMARY_SU = "postgresql://postgres@127.0.0.1:15430/postgres"
REPLICA_SU = "postgresql://postgres@127.0.0.1:15431/postgres"
BENCH_SU = f"postgresql://postgres@127.0.0.1:15430/{DB}"
BUSY = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state <> 'idle' AND pid <> pg_backend_pid()"

NODE = (
    "query($id: ID!) { node(id: $id) { id ... on ServiceOrder { sodNumber status createdAt totalAmount "
    "currency customer { name } lines { lineNo quantity unitPrice stockItem { sku } } } } }"
)
DASHBOARD = (
    "query($f: Date, $t: Date) { dashboard(from: $f, to: $t) { totalCount "
    "statuses { status count amounts { currency amount } } } }"
)
SEARCH = (
    "query($q: String!) { search(query: $q, first: 20) { found engine "
    "edges { score node { sodNumber status customer { name } } } } }"
)
# Search terms, as a dispatcher types them: part of a SOD number (a 5-digit infix of the
# seed's SOD-YYYY-NNNNNNN), a customer name with a letter dropped, a description word.
SEARCH_WORDS = ("boiler", "generator", "elevator", "ventilation", "warehouse", "kitchen", "commissioning", "inspection")
# The mix, per request a client makes: (kind, cumulative share).
MIX = (("first_page", 0.20), ("next_page", 0.50), ("node", 0.80), ("dashboard", 0.90), ("search", 1.0))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


# --- step 1: migrations --------------------------------------------------------------


def wait_for_quiet(poll: float = 30, limit: float = 20 * 60) -> None:
    deadline = time.monotonic() + limit
    with psycopg.connect(PRIMARY_SU, autocommit=True) as conn:
        while True:
            busy = conn.execute(BUSY, [DB]).fetchone()[0]  # type: ignore[index]
            if busy == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{DB} still busy ({busy} statements) after {limit:.0f} s")
            report(step="migrate", waiting_for_other_sessions=busy, load_average=load_average())
            time.sleep(poll)


def step_migrate() -> None:
    wait_for_quiet()
    with psycopg.connect(BENCH_SU, autocommit=True) as conn:
        before = [r[0] for r in conn.execute("SELECT name FROM schema_migration ORDER BY version")]
    started = time.monotonic()
    subprocess.run([NEXES, "migrate"], env=bench_env(), check=True)
    with psycopg.connect(BENCH_SU, autocommit=True) as conn:
        after = [r[0] for r in conn.execute("SELECT name FROM schema_migration ORDER BY version")]
        stat_rows = conn.execute("SELECT count(*) FROM customer_stat_month").fetchone()[0]  # type: ignore[index]
    report(
        step="migrate",
        applied=[m for m in after if m not in before],
        seconds=round(time.monotonic() - started, 1),
        customer_stat_month_rows=stat_rows,
    )


# --- the API ---------------------------------------------------------------------------


@contextmanager
def api_server(port: int, workers: int = 2) -> Iterator[list[int]]:
    """`nexes serve` for nexes_bench (access log off), its worker pids; stopped by its process group."""
    # The workers' series, summed by `nexes serve` on its ops listener (route_counters).
    env = {**bench_env(), "NEXES_ACCESS_LOG": "false", "NEXES_OPS_LISTEN": OPS_LISTEN}
    cmd = [NEXES, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = open(f"/tmp/bench-replicas-api-{port}-{int(time.time())}.log", "wb")  # noqa: SIM115  # lives as long as the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            workers_up = [p for p in descendants(proc.pid) if p != proc.pid and b"spawn_main" in _cmdline(p)]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/api/health/live", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and len(workers_up) >= workers:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{cmd} did not become ready; see {log.name}")
            time.sleep(0.5)
        time.sleep(3)  # each worker's lag monitor: a first verdict before reads count
        yield workers_up
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def auth() -> dict[str, str]:
    """An admin's token for every request of this benchmark (one signed-in user per client
    would be truer; the API checks a token's signature once either way)."""
    global _AUTH
    if _AUTH is None:
        _AUTH = bearer(bench_env(), "admin")
    return _AUTH


_AUTH: dict[str, str] | None = None


def replica_rotation(port: int, probes: int = 8) -> list[dict[str, Any]]:
    """/api/health/detail's replica entries, from fresh connections (each lands on either worker)."""
    seen = []
    for _ in range(probes):
        body = httpx.get(f"http://127.0.0.1:{port}/api/health/detail", headers=auth(), timeout=10).json()
        for replica in body["replicas"]:
            seen.append({k: replica.get(k) for k in ("state", "in_rotation", "monitor_lag_seconds", "lag_seconds")})
    return seen


def route_counters() -> dict[str, float]:
    """nexes_db_route_total summed over the API's worker processes, and each worker's
    nexes_replica_in_rotation, from one scrape of `nexes serve`'s ops listener."""
    text = httpx.get(f"http://{OPS_LISTEN}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if sample.name == "nexes_db_route_total":
                out[f"{sample.labels['target']}/{sample.labels['reason']}"] = sample.value
            elif sample.name == "nexes_replica_in_rotation":
                out[f"in_rotation/pid {sample.labels.get('pid')}"] = sample.value
    return out


def route_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    routes = {k: v - before.get(k, 0.0) for k, v in after.items() if not k.startswith("in_rotation")}
    reads = {t: sum(v for k, v in routes.items() if k.startswith(t + "/")) for t in ("replica", "primary")}
    return {
        "routes": {k: v for k, v in sorted(routes.items(), key=lambda kv: -kv[1]) if v},
        "replica_share": round(reads["replica"] / max(1.0, reads["replica"] + reads["primary"]), 3),
        "in_rotation_after": {k: v for k, v in after.items() if k.startswith("in_rotation")},
    }


# --- database sampling -------------------------------------------------------------------

CONNECTIONS = """
SELECT usename, count(*), count(*) FILTER (WHERE state = 'active')
FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1
"""
XACTS = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"


def xacts() -> dict[str, int]:
    out = {}
    for name, url in (("primary", PRIMARY_SU), ("replica", REPLICA_SU)):
        with psycopg.connect(url, autocommit=True) as conn:
            out[name] = conn.execute(XACTS, [DB]).fetchone()[0]  # type: ignore[index]
    return out


class DbSampler(threading.Thread):
    """Every 0.5 s, on the primary and the replica: nexes_bench's server connections by role."""

    def __init__(self) -> None:
        super().__init__(name="db-sampler", daemon=True)
        self.stop = threading.Event()
        self.peak: dict[str, dict[str, int]] = {"primary": defaultdict(int), "replica": defaultdict(int)}
        self.peak_active: dict[str, dict[str, int]] = {"primary": defaultdict(int), "replica": defaultdict(int)}
        self.peak_total = {"primary": 0, "replica": 0}
        self.replay_paused: set[bool] = set()
        self.replica_started: set[str] = set()
        self.sampler_errors: list[str] = []
        self.samples = 0

    def run(self) -> None:
        # Other sessions share the stack (their tests pause, stop and restart the replica):
        # a lost sampling connection is counted and made again, never fatal.
        while not self.stop.is_set():
            try:
                self._sample()
            except psycopg.Error as exc:
                self.sampler_errors.append(f"{type(exc).__name__}: {str(exc).strip()[:120]}")
                self.stop.wait(0.5)

    def _sample(self) -> None:
        with (
            psycopg.connect(PRIMARY_SU, autocommit=True, connect_timeout=2) as primary,
            psycopg.connect(REPLICA_SU, autocommit=True, connect_timeout=2) as replica,
        ):
            while not self.stop.wait(0.5):
                started = replica.execute("SELECT pg_postmaster_start_time()::text").fetchone()[0]  # type: ignore[index]
                self.replica_started.add(started)
                for name, conn in (("primary", primary), ("replica", replica)):
                    rows = conn.execute(CONNECTIONS, [DB]).fetchall()
                    for user, count, active in rows:
                        self.peak[name][user] = max(self.peak[name][user], count)
                        self.peak_active[name][user] = max(self.peak_active[name][user], active)
                    self.peak_total[name] = max(self.peak_total[name], sum(r[1] for r in rows))
                self.replay_paused.add(replica.execute("SELECT pg_is_wal_replay_paused()").fetchone()[0])  # type: ignore[index]
                self.samples += 1

    def figures(self) -> dict[str, Any]:
        return {
            "peak_server_connections": self.peak_total,
            "peak_connections_by_role": {k: dict(v) for k, v in self.peak.items()},
            "peak_active_by_role": {k: dict(v) for k, v in self.peak_active.items()},
            "replica_replay_paused_seen": sorted(self.replay_paused),
            "replica_postmaster_start_times_seen": sorted(self.replica_started),
            "sampler_errors": self.sampler_errors[:5],
            "db_samples": self.samples,
        }


# --- the load generator ----------------------------------------------------------------


class Load:
    """Closed-loop clients: request, think (uniform 0.5x..1.5x `think`), request again."""

    def __init__(self, port: int, clients: int, seconds: float, think: float, days: tuple[dt.date, dt.date]) -> None:
        self.port, self.clients, self.seconds, self.think, self.days = port, clients, seconds, think, days
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[int] = Counter()
        self.engines: Counter[str] = Counter()  # which engine answered each search
        self.errors_by_kind: Counter[str] = Counter()  # failed responses, by request kind
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.loop_lag: list[float] = []
        self.connected = 0

    def body(self, state: dict[str, Any]) -> tuple[str, bytes]:
        kind = choose(MIX, state)
        if kind != "dashboard":
            return kind, read_body(kind, state, node=NODE, search=SEARCH, term=self.search_term(state))
        first, last = self.days
        start = first + dt.timedelta(days=random.randrange((last - first).days - 30))
        span = {"f": start.isoformat(), "t": (start + dt.timedelta(days=random.choice((1, 7, 30)))).isoformat()}
        return kind, orjson.dumps({"query": DASHBOARD, "variables": span})

    @staticmethod
    def search_term(state: dict[str, Any]) -> str:
        r = random.random()
        if r < 1 / 3 and state.get("sods"):
            digits = random.choice(state["sods"]).rsplit("-", 1)[-1]
            start = random.randrange(max(1, len(digits) - 4))
            return digits[start : start + 5]
        if r < 2 / 3 and state.get("names"):
            name = random.choice(state["names"])
            drop = random.randrange(len(name))
            return name[:drop] + name[drop + 1 :]
        return random.choice(SEARCH_WORDS)

    def check(self, kind: str, status: int, payload: bytes, state: dict[str, Any]) -> None:
        self.statuses[status] += 1
        if status != 200:
            self.errors[f"http_{status}"] += 1
            self.errors_by_kind[kind] += 1
            return
        doc = orjson.loads(payload)
        if doc.get("errors"):
            self.errors["graphql:" + str(doc["errors"][0].get("extensions", {}).get("code"))] += 1
            self.errors_by_kind[kind] += 1
            return
        data = doc.get("data") or {}
        if kind in ("first_page", "next_page"):
            if not remember_page(state, data["serviceOrders"]):
                self.errors["empty_page"] += 1
        elif kind == "node" and data.get("node") is None:
            self.errors["node_null"] += 1
        elif kind == "search":
            self.engines[data["search"]["engine"]] += 1

    async def client(self, end: float) -> None:
        conn = Conn(self.port, auth()["Authorization"])
        state: dict[str, Any] = {}
        await asyncio.sleep(random.uniform(0, self.think * 1.5))  # spread the arrivals
        loop = asyncio.get_running_loop()
        connected = False
        while loop.time() < end:
            kind, body = self.body(state)
            started = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
            try:
                async with asyncio.timeout(60):
                    try:
                        status, payload = await conn.post(body)
                    except Closed:
                        self.reconnects += 1
                        status, payload = await conn.post(body)
                if not connected:
                    connected = True
                    self.connected += 1
                self.latency[kind].append((time.perf_counter() - started) * 1000)
                self.check(kind, status, payload, state)
            except Exception as exc:  # every failure is a counted error
                conn.close()
                self.errors[type(exc).__name__] += 1
            await asyncio.sleep(random.uniform(0.5, 1.5) * self.think)
        conn.close()

    async def ticker(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            before = time.perf_counter()
            await asyncio.sleep(0.1)
            self.loop_lag.append((time.perf_counter() - before - 0.1) * 1000)

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.seconds
        cpu = time.thread_time()
        started = time.monotonic()
        await asyncio.gather(self.ticker(end), *(self.client(end) for _ in range(self.clients)))
        wall = time.monotonic() - started
        everything = [v for values in self.latency.values() for v in values]
        return {
            "clients": self.clients,
            "clients_served": self.connected,
            "wall_s": round(wall, 1),
            "requests": len(everything),
            "throughput_rps": round(len(everything) / wall, 1),
            "p50_ms": pct(everything, 0.5),
            "p95_ms": pct(everything, 0.95),
            "p99_ms": pct(everything, 0.99),
            "max_ms": pct(everything, 1.0),
            "by_kind": {
                k: {"n": len(v), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "p99_ms": pct(v, 0.99)}
                for k, v in sorted(self.latency.items())
            },
            "statuses": dict(self.statuses),
            "search_engines": dict(self.engines),
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors_by_kind),
            "keepalive_reconnects": self.reconnects,
            "generator_cpu_pct_of_one_core": round((time.thread_time() - cpu) / wall * 100, 1),
            "generator_loop_lag_p99_ms": pct(self.loop_lag, 0.99),
        }


def data_days() -> tuple[dt.date, dt.date]:
    with psycopg.connect(BENCH_SU, autocommit=True) as conn:
        return conn.execute("SELECT min(day), max(day) FROM dashboard_stat").fetchone()  # type: ignore[return-value]


def run_mix(step: str, port: int, workers: list[int], args: argparse.Namespace) -> None:
    import uvloop

    days = data_days()
    idle_x0 = xacts()
    time.sleep(5)
    idle_x1 = xacts()
    idle_rate = {k: (idle_x1[k] - idle_x0[k]) / 5 for k in idle_x0}
    routes0 = route_counters()
    sampler = DbSampler()
    sampler.start()
    api0 = {p: cpu_ticks(p) for p in workers}
    m0, x0, load0, t0 = machine_ticks(), xacts(), load_average(), time.monotonic()
    figures = uvloop.run(Load(port, args.clients, args.seconds, args.think, days).run())
    wall = time.monotonic() - t0
    api1, m1 = {p: cpu_ticks(p) for p in workers}, machine_ticks()
    sampler.stop.set()
    sampler.join()
    time.sleep(2)  # backends report their counters when idle, at most once a second
    x1 = xacts()
    routes1 = route_counters()
    served = {k: x1[k] - x0[k] - idle_rate[k] * (wall + 2) for k in x0}
    hz = os.sysconf("SC_CLK_TCK")
    report(
        step=step,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        load_average_before=load0,
        load_average_after=load_average(),
        **figures,
        **sampler.figures(),
        transactions={k: round(v) for k, v in served.items()},
        transactions_idle_per_s=idle_rate,
        route_counters=route_delta(routes0, routes1),
        api_workers_cpu_pct_of_one_core=round(sum(api1[p] - api0[p] for p in workers) / hz / wall * 100, 1),
        machine_busy_pct=round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * 100, 1),
    )


# --- step 3: the replica held past the lag threshold -------------------------------------


class Writer(threading.Thread):
    """Small UPDATEs on a scratch table in nexes_bench, 10 a second, so that WAL keeps coming."""

    def __init__(self, admin_url: str) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.admin_url = admin_url
        self.stop = threading.Event()
        self.updates = 0

    def run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self.stop.wait(0.1):
                conn.execute("UPDATE bench_replica_scratch SET n = n + 1 WHERE id = 1")
                self.updates += 1


@contextmanager
def replica_held_back(port: int) -> Iterator[dict[str, Any]]:
    settings = settings_module.load(bench_env())
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_replica_scratch (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO bench_replica_scratch VALUES (1, 0) ON CONFLICT DO NOTHING")
    replica = psycopg.connect(REPLICA_SU, autocommit=True)
    writer = Writer(settings.admin_url)
    info: dict[str, Any] = {}
    try:
        waited = time.monotonic()
        while replica.execute("SELECT pg_is_wal_replay_paused()").fetchone()[0]:  # type: ignore[index]
            # Another session's test holds replay; theirs to resume, not ours.
            if time.monotonic() - waited > 300:
                raise RuntimeError("replay stayed paused on the replica: another session is using it")
            time.sleep(5)
        info["waited_for_other_pause_s"] = round(time.monotonic() - waited, 1)
        writer.start()
        replica.execute("SELECT pg_wal_replay_pause()")
        paused_at = time.monotonic()
        while True:
            seen = replica_rotation(port)
            if all(r["in_rotation"] is False for r in seen):
                break
            if time.monotonic() - paused_at > 90:
                raise RuntimeError(f"the replica stayed in rotation: {seen}")
            time.sleep(1)
        info.update(left_rotation_after_s=round(time.monotonic() - paused_at, 1), health_before_run=seen[:2])
        yield info
        info["health_after_run"] = replica_rotation(port, probes=2)[:2]
    finally:
        replica.execute("SELECT pg_wal_replay_resume()")
        writer.stop.set()
        if writer.is_alive():
            writer.join()
        info["writer_updates"] = writer.updates
        with psycopg.connect(settings.admin_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_replica_scratch")
        resumed = time.monotonic()
        while not all(r["in_rotation"] for r in replica_rotation(port, probes=4)):
            if time.monotonic() - resumed > 120:
                break
            time.sleep(1)
        info["back_in_rotation_after_s"] = round(time.monotonic() - resumed, 1)
        replica.close()
        report(step="lagged-replica", **info)


# --- step 4: reports -----------------------------------------------------------------------

AGING = "{ reports { aging { bucket currency orderCount totalAmount } } }"
BY_PERIOD = (
    "query($f: Date!, $t: Date!, $g: ReportGranularity!) { reports { ordersByPeriod(from: $f, to: $t, "
    "granularity: $g) { period status currency orderCount totalAmount } } }"
)
TOP = (
    "query($f: Date!, $t: Date!) { reports { topCustomers(from: $f, to: $t, limit: 10) "
    "{ customer { id name } currency orderCount totalAmount } } }"
)


def step_reports(port: int, samples: int = 20) -> None:
    _, last = data_days()
    cases: dict[str, dict[str, Any]] = {}
    for years in (1, 3, 5):
        first = last - dt.timedelta(days=365 * years)
        span = {"f": first.isoformat(), "t": last.isoformat()}
        for granularity in ("DAY", "WEEK", "MONTH"):
            if granularity == "DAY" and 365 * years > 1_100:
                continue  # DAY spans at most 1,100 days (nexes/resolvers/reports.py)
            cases[f"ordersByPeriod {granularity} {years}y"] = {
                "query": BY_PERIOD,
                "variables": {**span, "g": granularity},
            }
        cases[f"topCustomers {years}y"] = {"query": TOP, "variables": span}
    cases["aging"] = {"query": AGING}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth()) as client:
        for name, body in cases.items():
            times, rows = [], 0
            for i in range(samples + 1):  # the first one warms the worker's caches and is dropped
                started = time.perf_counter()
                response = client.post("/graphql", json=body)
                elapsed = (time.perf_counter() - started) * 1000
                doc = response.json()
                if response.status_code != 200 or doc.get("errors"):
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
                rows = len(next(iter(doc["data"]["reports"].values())))
                if i:
                    times.append(elapsed)
            report(
                step="reports",
                report=name,
                rows=rows,
                median_ms=round(statistics.median(times), 1),
                p95_ms=pct(times, 0.95),
                max_ms=pct(times, 1.0),
                load_average=load_average(),
            )


# --- step 5: exports -------------------------------------------------------------------------


class RssSampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids
        self.stop = threading.Event()
        self.peak = dict.fromkeys(pids, 0)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], status_kib(pid))


def million_range() -> tuple[str, str, int]:
    """The most recent whole UTC days that hold about 1M orders (from dashboard_stat)."""
    with psycopg.connect(BENCH_SU, autocommit=True) as conn:
        rows = conn.execute("SELECT day, sum(order_count) FROM dashboard_stat GROUP BY 1 ORDER BY 1 DESC").fetchall()
    total, first, last = 0, rows[0][0], rows[0][0]
    for first, count in rows:  # noqa: B007  # the day reached is the range's start
        total += count
        if total >= 1_000_000:
            break
    end = last + dt.timedelta(days=1)
    return f"{first.isoformat()}T00:00:00Z", f"{end.isoformat()}T00:00:00Z", int(total)


def export(port: int, workers: list[int], what: str, query: str, orders: int | None) -> None:
    base = {p: status_kib(p) for p in workers}
    sampler = RssSampler(workers)
    sampler.start()
    url = f"http://127.0.0.1:{port}/api/exports/service-orders.csv{query}"
    load0 = load_average()
    out = subprocess.run(
        [
            *("curl", "-sS", "-o", "/dev/null", "-H", f"Authorization: {auth()['Authorization']}"),
            *("-w", "%{http_code} %{size_download} %{time_total}", url),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sampler.stop.set()
    sampler.join()
    status, size, seconds = int(out[0]), int(out[1]), float(out[2])
    report(
        step="export",
        what=what,
        url=url,
        status=status,
        orders=orders,
        bytes=size,
        seconds=round(seconds, 1),
        mb_per_s=round(size / 1e6 / seconds, 1),
        rss_before_mib={p: round(v / 1024, 1) for p, v in base.items()},
        peak_rss_mib={p: round(v / 1024, 1) for p, v in sampler.peak.items()},
        vm_hwm_mib={p: round(status_kib(p, "VmHWM") / 1024, 1) for p in workers},
        load_average_before=load0,
        load_average_after=load_average(),
    )


def step_exports(port: int, workers: list[int], everything: bool) -> None:
    created_from, created_to, orders = million_range()
    export(port, workers, "1M", f"?createdFrom={created_from}&createdTo={created_to}", orders)
    if everything:
        export(port, workers, "everything", "", None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--think", type=float, default=2.0)
    parser.add_argument("--port", type=int, default=18060)
    parser.add_argument("--steps", default="migrate,mix,reports,exports,lagged")
    parser.add_argument("--export-all", action="store_true", help="also export every order (10M+)")
    args = parser.parse_args()
    steps = args.steps.split(",")
    if "migrate" in steps:
        step_migrate()
    if not set(steps) - {"migrate"}:
        return
    with api_server(args.port) as workers:
        report(step="api", workers=workers, port=args.port, access_log=False, nproc=os.cpu_count())
        if "mix" in steps:
            run_mix("mix", args.port, workers, args)
        if "reports" in steps:
            step_reports(args.port)
        if "exports" in steps:
            step_exports(args.port, workers, args.export_all)
        if "lagged" in steps:
            with replica_held_back(args.port):
                run_mix("mix-replica-lagged", args.port, workers, args)


if __name__ == "__main__":
    sys.exit(main())
