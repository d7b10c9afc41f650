"""`python -m bench.run api`: Nexes against PostGraphile v5 on six reads, in two configurations.

Like for like (issue 21): one Nexes process (uvicorn, one worker) against one PostGraphile
process (Node.js, the peer in bench/peers/postgraphile), each with a pool of 20, wrk with 50
connections, alternating rounds, medians.

- A: both through the replica's PgBouncer (transaction mode), prepared statements off
  (PgBouncer 1.18 cannot keep them): Nexes NEXES_PREPARE=off, the peer
  DATAPLAN_PG_PREPARED_STATEMENT_CACHE_SIZE=0.
- B: both straight to the replica: PostGraphile with its prepared statements, Nexes with
  NEXES_PREPARE=on (its request id then travels as application_name).

Same data on both sides: before any round, each read is sent once to each server, and their
answers must hold the same orders, customers, lines and figures. Any answer with GraphQL
errors fails the round (bench/post.lua counts them). Nexes runs with its guards on: a
viewer's token on every request (identity, permissions), cost analysis, the rate limit
(raised for the benchmark, and printed), the request id, and the tracing the environment
configures.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from bench.run import DB, ROOT, bench_env, cpu_by_process, cpu_seconds, cpu_since, ensure_wrk, process, report, wrk
from bench.tokens import bearer
from nexes import settings as settings_module
from nexes.db.keyset import CursorCodec
from nexes.resolvers.ids import global_id

PEER_DIR = ROOT / "bench" / "peers" / "postgraphile"
# The viewer's hourly points (a page costs 1-3): high enough that no round is refused, and
# still checked on every request.
RATE_LIMIT = 100_000_000
# The Nexes server's settings in every read benchmark: the peer's pool size, the raised rate
# limit, and no access log, since PostGraphile's server logs no request either (uvicorn's
# access log, a line per request through logging, was 5% of read 6's samples, 2026-12-07);
# BENCH_ACCESS_LOG=true measures with it.
SERVER_ENV = {
    "NEXES_API_POOL_SIZE": "20",
    "NEXES_RATE_LIMIT_VIEWER": str(RATE_LIMIT),
    "NEXES_ACCESS_LOG": os.environ.get("BENCH_ACCESS_LOG", "false"),
}
ORDER_FIELDS = "sodNumber status createdAt totalAmount"
PEER_ORDER = "orderBy: [CREATED_AT_DESC, ROW_ID_DESC]"
Body = dict[str, Any]


@dataclass(frozen=True)
class Read:
    """One read: its GraphQL for each server, and what of each answer must be equal."""

    name: str
    nexes: Body
    peer: Body
    nexes_data: Callable[[Any], Any]
    peer_data: Callable[[Any], Any]


@dataclass(frozen=True)
class Configuration:
    name: str
    nexes_env: dict[str, str]
    peer_url: str
    peer_env: dict[str, str] = field(default_factory=dict)


def _orders(edges: list[Any], customer: str | None = None) -> list[tuple[Any, ...]]:
    return [
        (e["node"]["sodNumber"], e["node"]["status"], e["node"]["totalAmount"])
        + ((e["node"][customer]["name"],) if customer else ())
        for e in edges
    ]


def _page_read(
    name: str, args: str, peer_args: str, *, variables: Body, peer_variables: Body, params: str = ""
) -> Read:
    """A 50-order page with each order's customer."""
    peer_params = params.replace("String", "Cursor")
    return Read(
        name,
        {
            "query": f"query{params} {{ serviceOrders(first: 50{args}) "
            f"{{ edges {{ node {{ id {ORDER_FIELDS} customer {{ name }} }} }} }} }}",
            "variables": variables,
        },
        {
            "query": f"query{peer_params} {{ allServiceOrders(first: 50, {PEER_ORDER}{peer_args}) "
            f"{{ edges {{ node {{ rowId {ORDER_FIELDS} customerByCustomerId {{ name }} }} }} }} }}",
            "variables": peer_variables,
        },
        lambda d: _orders(d["serviceOrders"]["edges"], "customer"),
        lambda d: _orders(d["allServiceOrders"]["edges"], "customerByCustomerId"),
    )


def _dashboard_nexes(data: Any) -> dict[tuple[str, str], str]:
    return {(s["status"], a["currency"]): a["amount"] for s in data["dashboard"]["statuses"] for a in s["amounts"]}


def _dashboard_peer(data: Any) -> dict[tuple[str, str], str]:
    return {(n["status"], n["currency"]): n["totalAmount"] for n in data["dashboardMonth"]["nodes"]}


def reads(admin_url: str, cursor_secret: str, peer_url: str | None) -> list[Read]:
    """The six reads of issue 21 over the current nexes_bench (without a peer: no peer cursor)."""
    with psycopg.connect(admin_url) as conn:
        count = conn.execute("SELECT count(*) FROM service_order").fetchone()[0]  # type: ignore[index]
        # Row 9,000,000 of 10M; 90% of the way down a smaller database.
        depth = min(9_000_000, count * 9 // 10)
        deep_at, deep_id = conn.execute(  # type: ignore[misc]
            "SELECT created_at, id FROM service_order ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            [depth - 1],
        ).fetchone()
        newest = conn.execute("SELECT max(created_at) FROM service_order").fetchone()[0]  # type: ignore[index]
    # The last whole month before the newest order.
    month_to = newest.date().replace(day=1) - timedelta(days=1)
    month_from = month_to.replace(day=1)
    nexes_cursor = CursorCodec(cursor_secret.encode()).encode("CREATED_AT_DESC", deep_at, deep_id)
    peer_cursor = (
        None
        if peer_url is None
        else httpx.post(
            peer_url,
            json={
                "query": f"{{ allServiceOrders(first: 1, offset: {depth - 1}, {PEER_ORDER}) "
                "{ pageInfo { endCursor } } }"
            },
            timeout=60,
        ).json()["data"]["allServiceOrders"]["pageInfo"]["endCursor"]
    )
    lines = "lineNo quantity unitPrice"
    return [
        _page_read("1 first page", "", "", variables={}, peer_variables={}),
        _page_read(
            f"2 page past row {depth:,}",
            ", after: $a",
            ", after: $a",
            variables={"a": nexes_cursor},
            peer_variables={"a": peer_cursor},
            params="($a: String!)",
        ),
        _page_read(
            "3 status-filtered page (OPEN)",
            ", filter: {status: [OPEN]}",
            ", condition: {status: OPEN}",
            variables={},
            peer_variables={},
        ),
        Read(
            "4 one order by id with its lines",
            {
                "query": "query($id: ID!) { node(id: $id) { ... on ServiceOrder "
                f"{{ id {ORDER_FIELDS} lines {{ {lines} }} }} }} }}",
                "variables": {"id": global_id("ServiceOrder", deep_id)},
            },
            {
                "query": "query($id: BigInt!, $at: Datetime!) "
                "{ serviceOrderByRowIdAndCreatedAt(rowId: $id, createdAt: $at) "
                f"{{ rowId {ORDER_FIELDS} serviceOrderLinesByOrderIdAndCreatedAt {{ nodes {{ {lines} }} }} }} }}",
                "variables": {"id": str(deep_id), "at": deep_at.isoformat()},
            },
            lambda d: (d["node"]["sodNumber"], [tuple(x.values()) for x in d["node"]["lines"]]),
            lambda d: (
                d["serviceOrderByRowIdAndCreatedAt"]["sodNumber"],
                [
                    tuple(x.values())
                    for x in d["serviceOrderByRowIdAndCreatedAt"]["serviceOrderLinesByOrderIdAndCreatedAt"]["nodes"]
                ],
            ),
        ),
        Read(
            "5 20 customers, each with its 10 newest orders",
            {
                "query": "{ customers(first: 20) { edges { node { id name serviceOrders(first: 10) "
                f"{{ edges {{ node {{ id {ORDER_FIELDS} }} }} }} }} }} }} }}"
            },
            {
                "query": "{ allCustomers(first: 20, orderBy: [NAME_ASC, ROW_ID_ASC]) { edges { node { rowId name "
                f"serviceOrdersByCustomerId(first: 10, {PEER_ORDER}) "
                f"{{ edges {{ node {{ rowId {ORDER_FIELDS} }} }} }} }} }} }} }}"
            },
            lambda d: [
                (e["node"]["name"], _orders(e["node"]["serviceOrders"]["edges"])) for e in d["customers"]["edges"]
            ],
            lambda d: [
                (e["node"]["name"], _orders(e["node"]["serviceOrdersByCustomerId"]["edges"]))
                for e in d["allCustomers"]["edges"]
            ],
        ),
        Read(
            f"6 dashboard for {month_from:%Y-%m}",
            {
                "query": "query($f: Date!, $t: Date!) { dashboard(from: $f, to: $t) "
                "{ totalCount statuses { status count amounts { currency amount } } } }",
                "variables": {"f": month_from.isoformat(), "t": month_to.isoformat()},
            },
            {
                "query": "query($f: Date!, $t: Date!) { dashboardMonth(dayFrom: $f, dayTo: $t) "
                "{ nodes { status currency orderCount totalAmount } } }",
                "variables": {"f": month_from.isoformat(), "t": month_to.isoformat()},
            },
            _dashboard_nexes,
            _dashboard_peer,
        ),
    ]


def configurations(env: dict[str, str]) -> list[Configuration]:
    settings = settings_module.load(env)
    bouncer = urlsplit(settings.replica_urls[0]).netloc
    # The servers themselves: the stack's admin URLs name them (users are replaced per role).
    replica = urlsplit(settings.replica_admin_urls[0]).netloc.rpartition("@")[2]
    primary = urlsplit(settings.admin_url).netloc.rpartition("@")[2]
    return [
        Configuration(
            "A: both through the replica's PgBouncer, prepared statements off",
            {"NEXES_PREPARE": "off"},
            f"postgresql://nexes_api@{bouncer}/{DB}",
            {"DATAPLAN_PG_PREPARED_STATEMENT_CACHE_SIZE": "0"},
        ),
        Configuration(
            "B: both direct to the replica, both preparing (Nexes NEXES_PREPARE=on)",
            {
                "NEXES_PREPARE": "on",
                "NEXES_PRIMARY_URL": f"postgresql://{primary}/{DB}",
                "NEXES_REPLICA_URLS": f"postgresql://{replica}/{DB}",
            },
            f"postgresql://nexes_api@{replica}/{DB}",
        ),
    ]


def _check(url: str, body: Body, headers: dict[str, str]) -> Any:
    answer = httpx.post(url, json=body, headers=headers, timeout=30).json()
    if answer.get("errors") or not answer.get("data"):
        raise RuntimeError(f"{url} answered {json.dumps(answer)[:500]} to {body['query']}")
    return answer["data"]


def bench_api(
    seconds: int,
    rounds: int = 3,
    *,
    only_reads: list[int] | None = None,
    only_configs: list[str] | None = None,
    ports: tuple[int, int] = (18000, 18001),
    checkout: Path | None = None,
) -> None:
    """Every read in every configuration; one JSON line per (configuration, read), then the table.

    `checkout`: serve Nexes from another checkout of this repository (`python -m` puts the
    working directory first on sys.path), to compare two versions of the code against the
    same peer and database, e.g. a `git worktree` of an older commit."""
    ensure_wrk()
    base = {**bench_env(), **SERVER_ENV}
    settings = settings_module.load(base)
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute((PEER_DIR / "peer.sql").read_text())
    report(
        bench="api-setup",
        viewer_rate_limit_per_hour=RATE_LIMIT,
        nexes_pool=20,
        peer_pool=20,
        wrk_connections=50,
        nexes_access_log=SERVER_ENV["NEXES_ACCESS_LOG"],
        # Identical reads at the same moment take one statement (README): the 50 clients all
        # ask the same thing. NEXES_SHARE_READS=off measures a load where no two reads match.
        nexes_share_reads="on" if settings.share_reads else "off",
    )
    auth = bearer(base, "viewer")
    nexes_port, peer_port = ports
    nexes_url = f"http://127.0.0.1:{nexes_port}/graphql"
    peer_url = f"http://127.0.0.1:{peer_port}/graphql"
    ready = {"query": "{ __typename }"}
    table = []
    for config in configurations(base):
        if only_configs and config.name[0] not in only_configs:
            continue
        # The ops listener (/metrics) beside the benchmark's ports, not on the default one.
        env = {**base, **config.nexes_env, "NEXES_OPS_LISTEN": f"127.0.0.1:{nexes_port + 2}"}
        nexes_cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(nexes_port), "--workers", "1"]
        peer_cmd = [str(PEER_DIR / "run"), config.peer_url, str(peer_port), "public"]
        peer_env = {k: v for k, v in bench_env().items() if not k.startswith("DATAPLAN_")} | config.peer_env
        with (
            process(nexes_cmd, env, nexes_url, ready, cwd=checkout, headers=auth) as nexes_server,
            process(peer_cmd, peer_env, peer_url, ready) as peer_server,
        ):
            pids = (nexes_server.pid, peer_server.pid)  # `run` execs node: the same process
            chosen = [
                r
                for i, r in enumerate(reads(settings.admin_url, str(settings.cursor_secret), peer_url), 1)
                if not only_reads or i in only_reads
            ]
            for read in chosen:
                mine, theirs = _check(nexes_url, read.nexes, auth), _check(peer_url, read.peer, {})
                if read.nexes_data(mine) != read.peer_data(theirs):
                    raise RuntimeError(f"{read.name}: the servers' answers differ:\n{mine}\n{theirs}")
                urls = (nexes_url, peer_url)
                table.append(_measure(config.name, read, urls, pids, auth, seconds=seconds, rounds=rounds))
    for row in table:
        cpu = row["median_cpu_us_per_request"]
        print(
            f"# {row['configuration'][:1]} | {row['read']} | Nexes {row['median_rps']['nexes']:.0f} "
            f"{row['rounds']['nexes']} | PostGraphile {row['median_rps']['postgraphile']:.0f} "
            f"{row['rounds']['postgraphile']} | {row['ratio']:.2f}x | CPU us/request Nexes "
            f"{cpu['nexes']} PostGraphile {cpu['postgraphile']}",
            flush=True,
        )


def _measure(
    config: str,
    read: Read,
    urls: tuple[str, str],
    pids: tuple[int, int],
    auth: dict[str, str],
    *,
    seconds: int,
    rounds: int,
) -> dict[str, Any]:
    """Alternating wrk rounds of both servers; each round also gives the server's CPU per
    request (utime + stime from /proc over the round, over the requests answered), which a
    machine shared with other work moves far less than it moves throughput."""
    nexes_url, peer_url = urls
    authorization = auth["Authorization"]
    runs: dict[str, list[dict[str, float]]] = {"nexes": [], "postgraphile": []}
    # Warm both (caches, prepared statements on every pooled connection), not counted.
    wrk(nexes_url, read.nexes, 2, authorization=authorization)
    wrk(peer_url, read.peer, 2)
    for i in range(rounds):
        # Alternate, and alternate who goes first, so drift of the shared machine hits both alike.
        order = [
            ("nexes", nexes_url, read.nexes, authorization, pids[0]),
            ("postgraphile", peer_url, read.peer, "", pids[1]),
        ]
        for name, url, body, authz, pid in order if i % 2 == 0 else order[::-1]:
            cpu, machine = cpu_seconds(pid), cpu_by_process()
            result = wrk(url, body, seconds, authorization=authz)
            cpu, used = cpu_seconds(pid) - cpu, cpu_since(machine)
            served = max(1.0, result["rps"] * seconds)
            others = {k: v / served * 1e6 for k, v in used.items()}
            runs[name].append(
                {
                    **result,
                    "cpu_us": cpu / served * 1e6,
                    # The rest of the machine per request: the database, the pooler (not the load
                    # generator: wrk has exited when it is read).
                    "others_us": {k: round(v) for k, v in sorted(others.items(), key=lambda kv: -kv[1]) if v >= 20},
                }
            )
    failed = {name: sum(r["gql_errors"] + r["non2xx"] + r["errors"] for r in results) for name, results in runs.items()}
    if any(failed.values()):
        raise RuntimeError(f"{config}, {read.name}: failed answers {failed}; runs: {runs}")
    medians = {name: statistics.median(r["rps"] for r in results) for name, results in runs.items()}
    row = {
        "bench": "api",
        "configuration": config,
        "read": read.name,
        "rounds": {name: [r["rps"] for r in results] for name, results in runs.items()},
        "median_rps": medians,
        "median_p50_ms": {name: statistics.median(r["p50_ms"] for r in results) for name, results in runs.items()},
        "ratio": round(medians["nexes"] / medians["postgraphile"], 2),
        "rounds_cpu_us_per_request": {name: [round(r["cpu_us"]) for r in results] for name, results in runs.items()},
        "median_cpu_us_per_request": {
            name: round(statistics.median(r["cpu_us"] for r in results)) for name, results in runs.items()
        },
        "rounds_machine_cpu_us_per_request": {
            name: [r["others_us"] for r in results] for name, results in runs.items()
        },
        "nexes_query": read.nexes["query"],
        "postgraphile_query": read.peer["query"],
    }
    report(**row)
    return row


def bench_sql_tag(seconds: int, rounds: int = 3, *, port: int = 18000) -> None:
    """The request id as a comment, as application_name, or both: read 1 through Nexes alone,
    in A (PgBouncer, prepare off) and in B (direct, NEXES_PREPARE=on), the three tags served
    at once by three processes and measured in alternating rounds."""
    bench_statement_tags()
    ensure_wrk()
    base = {**bench_env(), **SERVER_ENV}
    settings = settings_module.load(base)
    auth = bearer(base, "viewer")
    body = reads(settings.admin_url, str(settings.cursor_secret), None)[0].nexes
    tags = ("comment", "application_name", "both")
    for config in configurations(base):
        urls = {tag: f"http://127.0.0.1:{port + i}/graphql" for i, tag in enumerate(tags)}
        with ExitStack() as stack:
            for i, tag in enumerate(tags):
                cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port + i), "--workers", "1"]
                ops = f"127.0.0.1:{port + 3 + i}"
                env = {**base, **config.nexes_env, "NEXES_SQL_TAG": tag, "NEXES_OPS_LISTEN": ops}
                stack.enter_context(process(cmd, env, urls[tag], body, headers=auth))
            for tag in tags:
                wrk(urls[tag], body, 2, authorization=auth["Authorization"])
            runs: dict[str, list[float]] = {tag: [] for tag in tags}
            for i in range(rounds):
                for tag in tags[i % 3 :] + tags[: i % 3]:
                    result = wrk(urls[tag], body, seconds, authorization=auth["Authorization"])
                    if result["gql_errors"] or result["non2xx"] or result["errors"]:
                        raise RuntimeError(f"{config.name}, NEXES_SQL_TAG={tag}: failed answers {result}")
                    runs[tag].append(result["rps"])
        report(
            bench="sql-tag",
            configuration=config.name,
            read="1 first page",
            rounds=runs,
            median_rps={tag: statistics.median(r) for tag, r in runs.items()},
        )


STATEMENT = (
    "SELECT id, sod_number, status, created_at, total_amount FROM service_order "
    "ORDER BY created_at DESC, id DESC LIMIT 51"
)


async def _statement_tags(url: str, prepare: bool, samples: int = 400) -> dict[str, float]:
    """Median ms of one statement sent bare, behind a comment, or behind the application_name
    set_config in one pipeline (nexes.db.connect.session_tag), on one connection."""
    from nexes.db.connect.session_tag import SET_NAME

    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, prepare_threshold=0 if prepare else None, application_name="bench"
    )

    async def bare(i: int) -> None:
        await (await conn.execute(STATEMENT)).fetchall()

    async def comment(i: int) -> None:
        # The comment helper's form, with a fresh request id each time (bench-only text).
        await (await conn.execute(f"/*request_id='{i:032x}'*/ {STATEMENT}")).fetchall()  # type: ignore[call-overload]

    async def application_name(i: int) -> None:
        async with conn.pipeline():
            await psycopg.AsyncCursor(conn).execute(SET_NAME, [f"{i:032x} bench"])
            cur = await conn.execute(STATEMENT)
        await cur.fetchall()

    medians = {}
    async with conn:
        for name, send in (("bare", bare), ("comment", comment), ("application_name", application_name)):
            times = []
            for i in range(samples):
                started = time.perf_counter()
                await send(i)
                times.append(time.perf_counter() - started)
            medians[name] = round(statistics.median(times) * 1000, 3)
    return medians


def bench_statement_tags() -> None:
    """One statement's latency with each tag: direct with and without preparing, and through PgBouncer."""
    settings = settings_module.load(bench_env())
    replica = urlsplit(settings.replica_admin_urls[0]).netloc.rpartition("@")[2]
    bouncer = urlsplit(settings.replica_urls[0]).netloc
    for where, netloc, prepare in (
        ("direct", replica, True),
        ("direct", replica, False),
        ("PgBouncer", bouncer, False),
    ):
        url = f"postgresql://nexes_api@{netloc}/{DB}"
        report(
            bench="statement-tag", where=where, prepared=prepare, median_ms=asyncio.run(_statement_tags(url, prepare))
        )
