"""Search benchmark on the local stack: reindex rate, Typesense memory, search latency
through GraphQL (Typesense and the pg_trgm fallback), sync lag under 200 mutations/s,
catch-up after a 1M-row outbox, and what the fallback's trigram indexes cost imports.

    python -m bench.search [--orders 1000000] [--reuse] [--keep] [--import-orders 20000]
    python -m bench.search --database nexes_bench --phases engine,latency   # an existing database

It makes its own database (`nexes_search_bench`), collection alias, Redis db and API
servers, and drops the database at the end unless --keep. With --database it uses that
database and the alias `<database>_service_orders` as they are (a 10M `nexes_bench`
indexed by `nexes reindex` with bench.run's environment), and drops neither.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.tokens import bearer

DB = "nexes_search_bench"
REDIS_DB = 10
PORT_TS, PORT_PG = 18461, 18462
ROOT = Path(__file__).resolve().parent.parent
SEARCH = """query($q: String!, $filter: SearchFilter) {
  search(query: $q, first: 20, filter: $filter) { engine found edges { score node { sodNumber status } } } }"""
UPDATE = """mutation($sod: String!, $d: String!) {
  updateServiceOrder(sodNumber: $sod, input: {description: $d}) { errors { code } } }"""
WORDS = ("boiler", "heat pump", "ventilation", "generator", "elevator", "water heater")


def environ() -> dict[str, str]:
    from nexes.db.connect.conninfo import environ_for_database

    env = environ_for_database(os.environ, DB)
    env.update(
        NEXES_REDIS_URL=urlsplit(env["NEXES_REDIS_URL"])._replace(path=f"/{REDIS_DB}").geturl(),
        NEXES_TYPESENSE_COLLECTION=f"{DB}_service_orders",
        NEXES_ARCHIVE_AFTER_YEARS="0",
        NEXES_LOG_LEVEL="WARNING",
        NEXES_ACCESS_LOG="false",
    )
    return env


def superuser(url: str) -> str:
    params = conninfo_to_dict(url)
    params.update(user="postgres", dbname="postgres")
    return make_conninfo(**params)


def create_database(orders: int) -> None:
    from nexes import settings as settings_module
    from nexes.db.migrate import migrate
    from nexes.db.seed import seed

    base = settings_module.load()
    with psycopg.connect(superuser(base.admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER nexes_owner").format(sql.Identifier(DB)))
    settings = settings_module.load(environ())
    migrate(settings)
    started = time.monotonic()
    seed(settings.admin_url, orders, parallel=2)
    print(f"seeded {orders:,} orders in {time.monotonic() - started:.0f}s", flush=True)


def drop_database() -> None:
    from nexes import settings as settings_module

    base = settings_module.load()
    with psycopg.connect(superuser(base.admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))


def typesense_memory(settings: Any) -> int:
    answer = httpx.get(
        settings.typesense_url.rstrip("/") + "/metrics.json",
        headers={"X-TYPESENSE-API-KEY": str(settings.typesense_api_key)},
        timeout=5,
    ).json()
    return int(answer["typesense_memory_active_bytes"])


def bench_reindex(settings: Any) -> dict[str, Any]:
    from nexes.search.client import sync_client
    from nexes.search.reindex import reindex

    client = sync_client(settings)
    for name in [
        c["name"] for c in client.collections.retrieve() if c["name"].startswith(settings.typesense_collection)
    ]:
        client.collections[name].delete()
    before = typesense_memory(settings)
    report = reindex(settings, client)  # NEXES_REINDEX_BATCH documents a request
    time.sleep(2)
    after = typesense_memory(settings)
    per_million = (after - before) / max(report.documents, 1) * 1_000_000
    print(f"reindex: {report.documents:,} docs in {report.seconds:.1f}s = {report.rate:,.0f} docs/s", flush=True)
    print(f"typesense memory: +{(after - before) / 2**20:,.0f} MiB ({per_million / 2**20:,.0f} MiB per 1M docs)")
    return {"rate": report.rate, "mib_per_million": per_million / 2**20}


@contextmanager
def api_server(env: dict[str, str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/api/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def worker(env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "nexes.jobs", "--processes", "1", "--threads", "4", "--queues", "search"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def samples(admin_url: str) -> dict[str, list[Any]]:
    with psycopg.connect(admin_url) as conn:
        sods = [r[0] for r in conn.execute("SELECT sod_number FROM service_order_key ORDER BY random() LIMIT 500")]
        names = [r[0] for r in conn.execute("SELECT name FROM customer ORDER BY random() LIMIT 500")]
        open_ = conn.execute(
            "SELECT sod_number, id, created_at FROM service_order WHERE status IN ('OPEN', 'IN_PROGRESS') "
            "ORDER BY random() LIMIT 5000"
        ).fetchall()
    return {"sods": sods, "names": names, "open": [r[0] for r in open_], "open_keys": open_}


def misspell(name: str) -> str:
    first, *rest = name.split()
    i = random.randrange(1, len(first) - 1) if len(first) > 3 else 1
    return " ".join([first[:i] + first[i + 1 :], *rest[:1]])


def queries(data: dict[str, list[Any]]) -> dict[str, Callable[[], dict[str, Any]]]:
    def sod_infix() -> dict[str, Any]:
        digits = random.choice(data["sods"]).rsplit("-", 1)[-1]
        return {"q": digits[1:6]}

    return {
        "SOD infix": sod_infix,
        "misspelled customer": lambda: {"q": misspell(random.choice(data["names"]))},
        "status-filtered word": lambda: {"q": random.choice(WORDS), "filter": {"status": ["OPEN"]}},
    }


def latencies(url: str, make: Callable[[], dict[str, Any]], engine: str, n: int = 200) -> tuple[float, float]:
    times = []
    with httpx.Client(base_url=url, timeout=30, headers=bearer(os.environ, "viewer")) as client:
        for i in range(n + 20):
            started = time.perf_counter()
            body = client.post("/graphql", json={"query": SEARCH, "variables": make()}).json()
            elapsed = time.perf_counter() - started
            if "errors" in body or body["data"]["search"]["engine"] != engine:
                if i >= 20:
                    raise RuntimeError(f"search failed: {body}")
                continue
            if i >= 20:
                times.append(elapsed * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def bench_ingest(settings: Any, documents: int = 200_000, batch: int = 5_000) -> float:
    """Typesense alone taking documents: `documents` of the database's orders built in
    memory first (5,000 a request, one request at a time, as the reindex sends them) into
    a scratch collection with the collection's schema, then dropped."""
    from nexes.db import search as search_db
    from nexes.search import collection
    from nexes.search.client import sync_client

    with psycopg.connect(settings.admin_url) as conn:
        bodies, taken = [], 0
        for rows in search_db.stream_documents(conn, batch):
            bodies.append(collection.jsonl(rows))
            taken += len(rows)
            if taken >= documents:
                break
    client = sync_client(settings, timeout=120)
    name = f"{DB}_ingest"
    client.collections.create(collection.schema(name))  # type: ignore[arg-type]
    try:
        started = time.perf_counter()
        for body in bodies:
            answer = client.collections[name].documents.import_(body, {"action": "create"})
            assert all(r.get("success") for r in collection.parse_import(answer))
        rate = taken / (time.perf_counter() - started)
    finally:
        client.collections[name].delete()
    print(f"typesense alone: {taken:,} documents in memory, {rate:,.0f} docs/s", flush=True)
    return rate


def bench_engine(settings: Any, data: dict[str, list[Any]], n: int = 60) -> dict[str, Any]:
    """Typesense alone: the API's own search parameters (SearchService._typesense), one
    query at a time, no PostgreSQL and no GraphQL."""
    from nexes.search import engine

    async def run() -> dict[str, Any]:
        service = engine.SearchService(settings)
        results: dict[str, Any] = {}
        for label, make in queries(data).items():
            times, found, cut = [], [], 0
            for i in range(n + 3):
                variables = make()
                statuses = tuple(variables.get("filter", {}).get("status", ()))
                query = engine.SearchQuery(variables["q"], statuses, None, None, 0, 20)
                started = time.perf_counter()
                answer = await service._typesense(query, engine._paging(query))
                if i >= 3:
                    times.append((time.perf_counter() - started) * 1000)
                    found.append(answer.found)
                    cut += not answer.exact
            times.sort()
            p50, p95 = statistics.median(times), times[int(len(times) * 0.95) - 1]
            results[label] = (p50, p95)
            print(
                f"engine {label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, found median {statistics.median(found):,.0f}, "
                f"cut off {cut} of {n}",
                flush=True,
            )
        return results

    return asyncio.run(run())


def bench_latency(env: dict[str, str], data: dict[str, list[Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with api_server(env, PORT_TS) as url:
        for label, make in queries(data).items():
            results[f"typesense {label}"] = latencies(url, make, "TYPESENSE")
    down = {**env, "NEXES_TYPESENSE_URL": "http://127.0.0.1:9"}  # nothing listens: the breaker opens
    with api_server(down, PORT_PG) as url:
        for label, make in queries(data).items():
            results[f"pg_trgm {label}"] = latencies(url, make, "POSTGRES")
    for label, (p50, p95) in results.items():
        print(f"search {label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
    return results


async def mutate_at(url: str, sods: list[str], rate: float, seconds: float) -> int:
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(os.environ, "operator")) as client:
        tasks = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            target = start + sent / rate
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            sod = sods[sent % len(sods)]
            payload = {"query": UPDATE, "variables": {"sod": sod, "d": f"bench change {sent}"}}
            tasks.append(asyncio.create_task(client.post("/graphql", json=payload)))
            sent += 1
        answers = await asyncio.gather(*tasks)
    failed = sum(1 for a in answers if a.status_code != 200 or "errors" in a.json())
    if failed:
        print(f"  {failed} mutations failed")
    return sent


def outbox_lag(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    row = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(enqueued_at)), 0)::float8 "
        "FROM search_outbox"
    ).fetchone()
    assert row
    return int(row[0]), float(row[1])


def write_at(admin_url: str, keys: list[Any], rate: float, seconds: float) -> int:
    """Single-order updates at `rate`/s, each followed by the sync request a mutation sends."""
    from nexes.jobs.search import sync_search

    sent = 0
    with psycopg.connect(admin_url, autocommit=True) as conn:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
            conn.execute(
                "UPDATE service_order SET description = %s, updated_at = clock_timestamp() "
                "WHERE id = %s AND created_at = %s",
                [f"bench change {sent}", *keys[sent % len(keys)][1:]],
            )
            sync_search.send()
            sent += 1
    return sent


def bench_sync_lag(
    env: dict[str, str], settings: Any, data: dict[str, list[Any]], seconds: float, via_api: bool
) -> dict[str, Any]:
    """Age of the oldest outbox row, sampled every 100 ms while changes arrive at 200/s."""
    lags: list[float] = []
    with worker(env), api_server(env, PORT_TS) as url, psycopg.connect(settings.admin_url, autocommit=True) as conn:
        stop = time.monotonic() + seconds
        loop = asyncio.new_event_loop()
        if via_api:
            task = loop.run_in_executor(None, lambda: asyncio.run(mutate_at(url, data["open"], 200, seconds)))
        else:
            task = loop.run_in_executor(None, write_at, settings.admin_url, data["open_keys"], 200, seconds)
        while time.monotonic() < stop:
            lags.append(outbox_lag(conn)[1])
            time.sleep(0.1)
        sent = loop.run_until_complete(task)
        loop.close()
    lags.sort()
    p50, p95 = statistics.median(lags), lags[int(len(lags) * 0.95) - 1]
    how = "mutations through the API" if via_api else "single-order updates + sync request"
    print(
        f"sync lag, {how} at 200/s asked, {sent / seconds:.0f}/s sent: "
        f"p50 {p50:.2f}s, p95 {p95:.2f}s, max {lags[-1]:.2f}s",
        flush=True,
    )
    return {"p50": p50, "p95": p95, "max": lags[-1]}


def bench_catch_up(env: dict[str, str], settings: Any) -> float:
    """The outbox rows a 1M-order import leaves (one per order), then the time to drain them."""
    from nexes.jobs.search import sync_search

    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute("INSERT INTO search_outbox (order_id, op) SELECT id, 'upsert' FROM service_order")
        rows = outbox_lag(conn)[0]
        with worker(env):
            started = time.monotonic()
            while outbox_lag(conn)[0]:
                for _ in range(4):  # one per worker thread, as the trigger after each chunk does
                    sync_search.send()
                time.sleep(1.0)
            elapsed = time.monotonic() - started
    print(f"catch-up: {rows:,} outbox rows drained in {elapsed:.0f}s ({rows / elapsed:,.0f}/s)", flush=True)
    return elapsed


def bench_import_cost(settings: Any, orders: int) -> dict[str, float]:
    """Import the same kind of file with and without the fallback's trigram indexes."""
    from nexes.jobs import imports_runner as import_runner
    from tests.test_imports import store

    results = {}
    indexes = {
        "service_order_description_trgm_idx": "CREATE INDEX service_order_description_trgm_idx "
        "ON service_order USING gin (description gin_trgm_ops)",
        "customer_code_trgm_idx": "CREATE INDEX customer_code_trgm_idx ON customer USING gin (code gin_trgm_ops)",
    }
    with psycopg.connect(settings.admin_url, autocommit=True) as conn, tempfile.TemporaryDirectory() as tmp:
        for label, prefix in (("with", "BTW"), ("without", "BTO")):
            if label == "without":
                for name in indexes:
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            path = Path(tmp) / f"{prefix}.csv"
            subprocess.run(
                [sys.executable, "-m", "bench.gen_import", str(path), str(orders), "--prefix", prefix],
                check=True,
                cwd=ROOT,
                capture_output=True,
            )
            job = store(settings, path.read_bytes())
            started = time.monotonic()
            assert import_runner.run(job, settings) == "SUCCEEDED"
            results[label] = orders / (time.monotonic() - started)
            conn.execute("DELETE FROM search_outbox")
        for definition in indexes.values():
            conn.execute(definition)
    print(
        f"import of {orders:,} orders: {results['with']:,.0f} orders/s with the trigram indexes, "
        f"{results['without']:,.0f} without ({(1 - results['with'] / results['without']) * 100:.0f}% slower)"
    )
    return results


def measure(phases: set[str], env: dict[str, str], settings: Any, data: dict[str, list[Any]], lag: float) -> None:
    """The phases that read the indexed database: ingest, engine, latency, lag, apilag."""
    if "ingest" in phases:
        bench_ingest(settings)
    if "engine" in phases:
        bench_engine(settings, data)
    if "latency" in phases:
        bench_latency(env, data)
    if "lag" in phases:
        bench_sync_lag(env, settings, data, lag, via_api=False)
    if "apilag" in phases:
        bench_sync_lag(env, settings, data, lag, via_api=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="keep the seeded database of a --keep run")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--lag-seconds", type=float, default=30)
    parser.add_argument("--import-orders", type=int, default=20_000)
    parser.add_argument("--phases", default="reindex,latency,lag,apilag,catchup,import", help="comma-separated subset")
    parser.add_argument("--database", help="an existing, indexed database: implies --reuse and --keep")
    args = parser.parse_args()
    if args.database:
        global DB  # the module's database name, read by every phase
        DB, args.reuse, args.keep = args.database, True, True
    env = environ()
    os.environ.update(env)  # nexes.jobs (the broker) reads the environment on import
    from nexes import settings as settings_module

    settings = settings_module.load(env)
    redis.Redis.from_url(env["NEXES_REDIS_URL"]).flushdb()
    try:
        if not args.reuse:
            create_database(args.orders)
        phases = set(args.phases.split(","))
        if "reindex" in phases:
            bench_reindex(settings)
        data = samples(settings.admin_url)
        measure(phases, env, settings, data, args.lag_seconds)
        if "catchup" in phases:
            bench_catch_up(env, settings)
            redis.Redis.from_url(env["NEXES_REDIS_URL"]).flushdb()
        if "import" in phases:
            bench_import_cost(settings, args.import_orders)
    finally:
        redis.Redis.from_url(env["NEXES_REDIS_URL"]).flushdb()
        if not args.keep:
            from nexes.search.client import sync_client

            client = sync_client(settings)
            for c in client.collections.retrieve():
                if c["name"].startswith(settings.typesense_collection):
                    client.collections[c["name"]].delete()
            drop_database()


if __name__ == "__main__":
    main()
