"""`make bench`: benchmarks on a database of their own (`nexes_bench`), never run by CI.

    python -m bench.run seed [--orders N]    fresh nexes_bench, timed seed, size on disk
    python -m bench.run pages                page latency: raw keyset SQL against GraphQL
    python -m bench.run api [--seconds S] [--rounds R] [--reads 1 5] [--configs A B] [--ports P Q]
                                             six reads: Nexes vs PostGraphile v5 (bench/peers), in
                                             configurations A and B (bench/api.py), wrk
    python -m bench.run profile [--reads 1 5] [--requests N] [--configs A|B] [--py-spy EXE [--seconds S]]
                                             CPU per request of reads, by part (bench/profile.py): cProfile
                                             in process, or with --py-spy the real server sampled under wrk
    python -m bench.run guards [--reads 1 5] [--seconds S] [--rounds R]
                                             what each guard costs: one server per guard taken out (bench/guards.py)
    python -m bench.run floor [--seconds S] [--rounds R] [--reads 4 6] [--configs A B]
                                             reads 4 and 6 from a bare ASGI app on the same stack (the floor),
                                             beside Nexes and PostGraphile (bench/floor.py)
    python -m bench.run sql-tag [--seconds S] [--rounds R] [--ports P Q]
                                             read 1 with the request id as comment, application_name or both
    python -m bench.run import [--orders N] [--py-spy EXE]
                                             a CSV of N orders (default 1M) through the workers, against raw COPY
    python -m bench.run import-load [--orders N] [--requests R]
                                             page p50/p99 idle, then while imports of N orders (default 300k) run
    python -m bench.run import-statements [--orders N]
                                             order_write's apply script timed statement by statement (rolled back)
    python -m bench.run auth                 what a token check and the permission checks cost per request
    python -m bench.run reconcile            `nexes reconcile` over nexes_bench, with and without the line check
    python -m bench.run bulkhead [--seconds S]
                                             the SPA's page mix idle, then beside 20 analysts' heavy queries
    python -m bench.run tracing              CPU per SQL statement: tracing off, sampled, unsampled (bench/telemetry.py)
    python -m bench.run scrape               the time of a /metrics scrape of `nexes serve --workers 2`
    python -m bench.run api-telemetry [--seconds S] [--rounds R] [--orders N]
                                             the 50-order page, tracing off against on (seeds N orders if missing)
    python -m bench.run                      pages and api, seeding only when nexes_bench is missing

The write-path commands (bench/write_path.py) need a seeded nexes_bench.

Figures go to stdout as JSON lines and are copied by hand into bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.tokens import bearer
from nexes import settings as settings_module
from nexes.db.connect.conninfo import environ_for_database
from nexes.db.migrate import migrate
from nexes.db.seed import seed

ROOT = Path(__file__).resolve().parent.parent
# NEXES_BENCH_DB: another database for the same benchmarks (one being seeded while another is measured).
DB = os.environ.get("NEXES_BENCH_DB", "nexes_bench")


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("bench: wrk is missing; install it, e.g. on Debian/Ubuntu: sudo apt-get install wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)  # a fresh machine has no lists
        subprocess.run(cmd, env=env, check=True, capture_output=True)


def _stat(text: str) -> tuple[str, float]:
    """A /proc/<pid>/stat line's command name and utime + stime in seconds (fields 14 and 15)."""
    name, _, rest = text.partition(" (")[2].rpartition(")")
    fields = rest.split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    return _stat(Path(f"/proc/{pid}/stat").read_text())[1]


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """utime + stime of every process on the machine (/proc/<pid>/stat), with its command name."""
    out: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = _stat(stat.read_text())
        except OSError:  # gone since the listing
            continue
    return out


def cpu_since(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used since `before` (cpu_by_process), by command name: where a round's CPU
    went besides the server (postgres, pgbouncer, redis-server). Per process, so that one
    that ended in between (a pooled connection closed when idle) takes nothing away; what
    such a process used in the round is lost, and so is the load generator's (it exits)."""
    out: dict[str, float] = {}
    for pid, (name, cpu) in cpu_by_process().items():
        was = before.get(pid)
        used = cpu - (was[1] if was is not None and was[0] == name else 0.0)
        out[name] = out.get(name, 0.0) + used
    return out


def report(**figures: object) -> None:
    print(json.dumps(figures), flush=True)


def bench_env() -> dict[str, str]:
    # Its own search alias too: the dev database's `service_orders` is another index.
    return {**environ_for_database(os.environ, DB), "NEXES_TYPESENSE_COLLECTION": f"{DB}_service_orders"}


def superuser(url: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params.update(user="postgres", dbname="postgres")
    return psycopg.conninfo.make_conninfo("", **params)


def bench_seed(orders: int) -> None:
    env = bench_env()
    settings = settings_module.load(env)
    with psycopg.connect(superuser(settings.admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER nexes_owner").format(sql.Identifier(DB)))
    migrate(settings)
    started = time.monotonic()
    seed(settings.admin_url, orders)
    elapsed = time.monotonic() - started
    with psycopg.connect(settings.admin_url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    report(
        bench="seed",
        orders=orders,
        seconds=round(elapsed, 1),
        orders_per_s=round(orders / elapsed),
        db_bytes=row[0] if row else None,
    )


class NotReady(RuntimeError):
    pass


@contextmanager
def process(
    cmd: list[str],
    env: dict[str, str],
    ready_url: str,
    ready_body: dict[str, str],
    *,
    cwd: Path | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server, started in its own session, waited for, and stopped by its process group;
    `headers` go with the readiness requests (a bearer token for Nexes)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True, cwd=cwd)
        try:
            yield from _serving(proc, ready_url, ready_body, headers or {})
        except NotReady as exc:
            log.seek(0)
            tail = log.read()[-3000:].decode(errors="replace")
            raise NotReady(f"{exc}; its output ends with:\n{tail}") from None


def _serving(
    proc: subprocess.Popen[bytes], ready_url: str, ready_body: dict[str, str], headers: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    try:
        deadline = time.monotonic() + 600  # the peer installs Node.js on its first run
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NotReady(f"{proc.args!r} exited ({proc.returncode}) before it was ready")
            try:
                if httpx.post(ready_url, json=ready_body, headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise NotReady(f"{proc.args!r} did not become ready")
        yield proc
    finally:
        with suppress(ProcessLookupError):  # it may have exited, its group with it
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def wrk(
    url: str, body: dict[str, object], seconds: int, connections: int = 50, authorization: str = ""
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(body, f)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        env={**os.environ, "BODY_FILE": f.name, "AUTHORIZATION": authorization},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"RESULT (.*)", out)
    assert match, out
    return {k: float(v) for k, v in (pair.split("=") for pair in match[1].split())}


class KeepAlive:
    """A minimal HTTP/1.1 client on one keep-alive connection: a POST's bytes written, the
    answer read by its Content-Length. The GraphQL page's latency is then the server's and
    the loopback's; httpx's in-process client alone cost about as much as the server's own
    work for a page (both figures are reported)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{self.head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])  # type: ignore[index]
        answer = await self.reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}: {answer[:300]!r}")
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _latencies(samples: int, port: int = 18040) -> None:
    """Median and p99 of pages: raw keyset SQL against the same page through GraphQL, over
    HTTP to a served Nexes (`nexes serve`, one process, no access log) and in process."""
    from nexes.http.app import create_app

    settings = settings_module.load(bench_env())
    app = create_app(settings)
    auth = bearer(bench_env())
    server_env = {**bench_env(), "NEXES_ACCESS_LOG": "false", "NEXES_OPS_LISTEN": f"127.0.0.1:{port + 2}"}
    server_cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port), "--workers", "1"]
    served = process(
        server_cmd, server_env, f"http://127.0.0.1:{port}/graphql", {"query": "{ __typename }"}, headers=auth
    )
    page = (
        "edges { cursor node { id sodNumber status createdAt totalAmount customer { name } } } "
        "pageInfo { endCursor startCursor }"
    )
    with served:
        async with app.router.lifespan_context(app):
            await _page_latencies(app, settings, page, samples, http=KeepAlive(port, auth), auth=auth)


async def _page_latencies(
    app: Any, settings: settings_module.Settings, page: str, samples: int, *, http: KeepAlive, auth: dict[str, str]
) -> None:
    from nexes.db import orders as orders_db
    from nexes.db.keyset import Keyset
    from nexes.db.orders import OrderFilter

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=auth) as client:
        conn = await psycopg.AsyncConnection.connect(
            psycopg.conninfo.make_conninfo(settings.replica_urls[0], user="nexes_api"),
            autocommit=True,
            prepare_threshold=None,
        )
        async with conn:
            deepest = "SELECT created_at, id FROM service_order ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1"
            # Row 9,000,000 of 10M; 90% of the way down a smaller database (as bench/api.py).
            count = (await (await conn.execute("SELECT count(*) FROM service_order")).fetchone() or (0,))[0]
            depth = min(9_000_000, count * 9 // 10)
            row = await (await conn.execute(deepest, [depth])).fetchone()
            deep = Keyset(row[0], row[1]) if row else None
            customer = (
                await (
                    await conn.execute("SELECT customer_id FROM service_order ORDER BY created_at DESC LIMIT 1")
                ).fetchone()
                or (0,)
            )[0]
            deep_cursor = app.state.cursors.encode("CREATED_AT_DESC", deep.value, deep.id) if deep else None
            from nexes.resolvers.ids import global_id

            cases = {
                "first page": (
                    OrderFilter(),
                    None,
                    False,
                    "{ serviceOrders(first: 50) { PAGE } }".replace("PAGE", page),
                    {},
                ),
                f"page past row {depth:,}": (
                    OrderFilter(),
                    deep,
                    False,
                    "query($a: String) { serviceOrders(first: 50, after: $a) { PAGE } }".replace("PAGE", page),
                    {"a": deep_cursor},
                ),
                "status-filtered page": (
                    OrderFilter(statuses=("OPEN", "IN_PROGRESS")),
                    None,
                    False,
                    "{ serviceOrders(first: 50, filter: {status: [OPEN, IN_PROGRESS]}) { PAGE } }".replace(
                        "PAGE", page
                    ),
                    {},
                ),
                "last/before page": (
                    OrderFilter(),
                    deep,
                    True,
                    "query($b: String) { serviceOrders(last: 50, before: $b) { PAGE } }".replace("PAGE", page),
                    {"b": deep_cursor},
                ),
                "customer page": (
                    OrderFilter(customer_id=customer),
                    None,
                    False,
                    "query($c: ID) { serviceOrders(first: 50, filter: {customerId: $c}) { PAGE } }".replace(
                        "PAGE", page
                    ),
                    {"c": global_id("Customer", customer)},
                ),
            }
            for name, (flt, after, backward, query, variables) in cases.items():
                sql_ms, gql_ms, in_process_ms = [], [], []
                body = json.dumps({"query": query, "variables": variables}).encode()
                for _ in range(samples):
                    started = time.perf_counter()
                    await orders_db.orders_page(
                        conn, flt, "CREATED_AT_DESC", backward=backward, after=after, limit=51, with_customer=True
                    )
                    sql_ms.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    answer = await http.post("/graphql", body)
                    gql_ms.append((time.perf_counter() - started) * 1000)
                    assert b'"errors"' not in answer and answer.count(b'"node"') == 50, answer[:500]
                    started = time.perf_counter()
                    response = await client.post("/graphql", json={"query": query, "variables": variables})
                    in_process_ms.append((time.perf_counter() - started) * 1000)
                    assert "errors" not in response.json(), response.text
                report(
                    bench="page-latency",
                    page=name,
                    sql_median_ms=round(statistics.median(sql_ms), 2),
                    sql_p99_ms=round(_p99(sql_ms), 2),
                    graphql_median_ms=round(statistics.median(gql_ms), 2),
                    graphql_p99_ms=round(_p99(gql_ms), 2),
                    graphql_over_sql=round(statistics.median(gql_ms) / statistics.median(sql_ms), 1),
                    graphql_in_process_httpx_median_ms=round(statistics.median(in_process_ms), 2),
                )
        http.close()


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


# The benchmarks of the modules that import this one's helpers (dispatched in main).
BENCH_MODULES = (
    "auth",
    "bulkhead",
    "tracing",
    "scrape",
    "api-telemetry",
    "profile",
    "sql-tag",
    "guards",
    "layers",
    "floor",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "what",
        nargs="?",
        choices=[
            "seed",
            "api",
            "pages",
            "import",
            "import-load",
            "import-statements",
            "import-recovery",
            "reconcile",
            *BENCH_MODULES,
            "all",
        ],
        default="all",
    )
    parser.add_argument("--orders", type=int, default=None, help="seed: 10M; import: 1M; import-load: 300k")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--requests", type=int, default=2_000, help="import-load: page requests idle and loaded; profile: per read"
    )
    parser.add_argument(
        "--py-spy", default=None, help="import, profile: a py-spy executable to sample the worker (the server) with"
    )
    parser.add_argument("--ports", type=int, nargs=2, default=(18000, 18001), metavar=("NEXES", "PEER"))
    parser.add_argument("--kills", type=int, default=3, help="import-recovery: SIGKILLs of the worker")
    parser.add_argument("--rounds", type=int, default=3, help="api: alternating wrk rounds of each server")
    parser.add_argument("--nexes-checkout", type=Path, default=None, help="api: serve Nexes from this checkout")
    parser.add_argument("--reads", type=int, nargs="*", default=None, help="api: only these reads (1-6)")
    parser.add_argument("--configs", nargs="*", default=None, choices=["A", "B"], help="api: only these")
    args = parser.parse_args()
    if args.what in ("import", "import-load", "import-statements", "import-recovery", "reconcile"):
        from bench import write_path  # it imports this module's helpers

        if args.what == "import":
            write_path.bench_import(args.orders or 1_000_000, args.py_spy)
        elif args.what == "import-load":
            write_path.bench_import_load(args.orders or 300_000, args.requests)
        elif args.what == "import-recovery":
            write_path.bench_recovery(args.orders or 200_000, args.kills)
        elif args.what == "import-statements":
            write_path.apply_statements(args.orders or 5_000, chunks=3)
        else:
            write_path.bench_reconcile()
    elif args.what == "seed":
        bench_seed(args.orders or 10_000_000)
    elif args.what == "api":
        from bench import api  # it imports this module's helpers

        api.bench_api(
            args.seconds,
            args.rounds,
            only_reads=args.reads,
            only_configs=args.configs,
            ports=tuple(args.ports),
            checkout=args.nexes_checkout,
        )
    elif args.what == "pages":
        asyncio.run(_latencies(200))
    elif args.what in BENCH_MODULES:
        from bench import (  # they import this module's helpers
            api,
            auth,
            bulkhead,
            floor,
            guards,
            layers,
            profile,
            telemetry,
        )

        chosen = {
            "layers": lambda: layers.bench_layers(args.reads, (args.configs or ["A"])[0], args.requests),
            "auth": auth.main,
            "bulkhead": lambda: bulkhead.bench_bulkhead(args.seconds),
            "tracing": telemetry.bench_tracing,
            "scrape": telemetry.bench_scrape,
            "api-telemetry": lambda: telemetry.bench_api_telemetry(args.seconds, args.rounds, args.orders or 200_000),
            "profile": lambda: (
                profile.bench_sampled(args.reads, args.seconds, args.py_spy, (args.configs or ["A"])[0])
                if args.py_spy
                else profile.bench_profile(args.reads, args.requests, (args.configs or ["B"])[0])
            ),
            "sql-tag": lambda: api.bench_sql_tag(args.seconds, args.rounds, port=args.ports[0]),
            "guards": lambda: guards.bench_guards(args.reads, args.seconds, args.rounds),
            "floor": lambda: floor.bench_floor(
                args.seconds, args.rounds, only_reads=args.reads, only_configs=args.configs, port=args.ports[0]
            ),
        }
        chosen[args.what]()
    else:
        settings = settings_module.load()
        with psycopg.connect(superuser(settings.admin_url)) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        if not exists:
            bench_seed(args.orders or 10_000_000)
        asyncio.run(_latencies(200))
        from bench import api

        api.bench_api(args.seconds, ports=tuple(args.ports))


if __name__ == "__main__":
    main()
