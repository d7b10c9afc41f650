"""`python -m bench.run floor`: the least any server on Nexes' stack can spend on reads 4 and 6.

Issue 21 asks Nexes for 1.2x PostGraphile's throughput on every read. On the two small
reads, one order with its lines (4) and the dashboard (6: one statement, 15 rows), the
peer's whole Node.js request costs about 270 us of CPU in configuration B. This benchmark
serves the same reads from a *floor*: a bare ASGI app (`app` below) on the same stack,
with nothing that Nexes adds:

- uvicorn with uvloop and httptools, one process, no middleware, no access log;
- psycopg-pool's AsyncConnectionPool (20 connections) and psycopg's cursor, prepared on
  the 5th run in B and never in A, as Nexes; read 6 runs Nexes' own statement
  (`nexes.db.dashboard.stats_by_status`), read 4 one statement for the order and its lines
  at the `created_at` it is handed, as the peer is handed it;
- the body parsed and the answer written with orjson, in the shape Nexes answers.

No GraphQL, no token, no permissions, cost, rate limit, deadline, request id or metrics:
none of what the issue requires to stay on. So the floor's throughput bounds what Nexes
could reach with all of its own code gone, and its ratio to the peer bounds Nexes' ratio.

The floor, Nexes and the peer are measured in one run, rounds rotating who goes first, as
`bench.run api` does (50 connections, medians, the server's CPU per request from /proc);
before the rounds the three answers are checked to hold the same data. It is a benchmark
only: the floor serves one fixed read and is never part of Nexes.
"""

from __future__ import annotations

import os
import statistics
import sys
from datetime import date, datetime
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bench.api import PEER_DIR, SERVER_ENV, _check, configurations, reads
from bench.run import bench_env, cpu_seconds, ensure_wrk, process, report, wrk
from bench.tokens import bearer
from nexes import settings as settings_module
from nexes.db.dashboard import stats_by_status
from nexes.resolvers.ids import decode_any_global_id
from nexes.schema.types import Status

# The floor app's settings, from its environment (bench_floor sets them).
URL, PREPARE = "FLOOR_DATABASE_URL", "FLOOR_PREPARE"
READ, FROM, TO, CREATED_AT = "FLOOR_READ", "FLOOR_FROM", "FLOOR_TO", "FLOOR_CREATED_AT"
_pool: AsyncConnectionPool | None = None
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: one read's statement and answer (FLOOR_READ), and nothing else."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body, more = [], True
    while more:
        message = await receive()
        body.append(message.get("body", b""))
        more = message.get("more_body", False)
    params = orjson.loads(b"".join(body))  # the GraphQL parameters, parsed as any server must
    assert _pool is not None
    async with _pool.connection() as conn:
        if os.environ[READ] == "4":
            data = await _order(conn, params["variables"]["id"])
        else:
            data = await _dashboard(conn)
    out = orjson.dumps({"data": data})
    length = (b"content-length", b"%d" % len(out))
    await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS, length]})
    await send({"type": "http.response.body", "body": out})


async def _lifespan(receive: Any, send: Any) -> None:
    global _pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            threshold = 5 if os.environ.get(PREPARE) == "on" else None
            _pool = AsyncConnectionPool(
                os.environ[URL],
                min_size=20,
                max_size=20,
                open=False,
                kwargs={"autocommit": True, "prepare_threshold": threshold},
            )
            await _pool.open(wait=True)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _pool is not None:
                await _pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _dashboard(conn: AsyncConnection[Any]) -> dict[str, Any]:
    """Read 6: Nexes' own statement (nexes.db.dashboard), its answer's shape."""
    rows = await stats_by_status(conn, date.fromisoformat(os.environ[FROM]), date.fromisoformat(os.environ[TO]))
    figures: dict[str, dict[str, Any]] = {s.value: {"status": s.value, "count": 0, "amounts": []} for s in Status}
    for row in rows:
        fig = figures[row.status]
        fig["count"] += row.order_count
        fig["amounts"].append({"currency": row.currency, "amount": str(row.total_amount)})
    statuses = list(figures.values())
    return {"dashboard": {"totalCount": sum(f["count"] for f in statuses), "statuses": statuses}}


# Read 4 as the peer reads it: handed the order's created_at (FLOOR_CREATED_AT), one
# statement for the order and its lines.
ORDER = """
SELECT o.sod_number, o.status::text, o.created_at, o.total_amount::text,
       coalesce((SELECT json_agg(json_build_object('lineNo', l.line_no, 'quantity', l.quantity,
                                                   'unitPrice', l.unit_price::text) ORDER BY l.line_no)
                 FROM service_order_line l WHERE l.order_id = o.id AND l.created_at = o.created_at), '[]')::text
FROM service_order o WHERE o.id = %s AND o.created_at = %s
"""


async def _order(conn: AsyncConnection[Any], node_id: str) -> dict[str, Any]:
    found = decode_any_global_id(node_id)
    assert found is not None
    cur = await conn.execute(ORDER, [found[1], datetime.fromisoformat(os.environ[CREATED_AT])])
    row = await cur.fetchone()
    if row is None:
        return {"node": None}
    sod, status, created_at, total, lines = row
    node = {"id": node_id, "sodNumber": sod, "status": status, "createdAt": created_at.isoformat()}
    return {"node": {**node, "totalAmount": total, "lines": orjson.loads(lines)}}


def bench_floor(
    seconds: int,
    rounds: int = 3,
    *,
    only_reads: list[int] | None = None,
    only_configs: list[str] | None = None,
    port: int = 18000,
) -> None:
    """Reads 4 and 6 from the floor, Nexes and the peer, in A and B; one JSON line each."""
    chosen = only_reads or [4, 6]
    if set(chosen) - {4, 6}:
        sys.exit(f"bench floor: the floor serves reads 4 and 6 only, not {sorted(set(chosen) - {4, 6})}")
    ensure_wrk()
    base = {**bench_env(), **SERVER_ENV}
    settings = settings_module.load(base)
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute((PEER_DIR / "peer.sql").read_text())
    auth = bearer(base, "viewer")
    urls = {name: f"http://127.0.0.1:{port + i}/graphql" for i, name in enumerate(("nexes", "postgraphile", "floor"))}
    ready = {"query": "{ __typename }"}
    uvicorn = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    floor_cmd = [sys.executable, "-m", "uvicorn", "bench.floor:app", "--port", str(port + 2), *uvicorn]
    for config in configurations(base):
        if only_configs and config.name[0] not in only_configs:
            continue
        nexes_cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port), "--workers", "1"]
        nexes_env = {**base, **config.nexes_env, "NEXES_OPS_LISTEN": f"127.0.0.1:{port + 5}"}
        peer_cmd = [str(PEER_DIR / "run"), config.peer_url, str(port + 1), "public"]
        peer_env = {k: v for k, v in bench_env().items() if not k.startswith("DATAPLAN_")} | config.peer_env
        with (
            process(nexes_cmd, nexes_env, urls["nexes"], ready, headers=auth) as nexes_server,
            process(peer_cmd, peer_env, urls["postgraphile"], ready) as peer_server,
        ):
            every = reads(settings.admin_url, str(settings.cursor_secret), urls["postgraphile"])
            for number in chosen:
                read = every[number - 1]
                floor_env = {
                    **bench_env(),
                    URL: config.peer_url,  # the peer's: the same role, and the pooler in A
                    PREPARE: config.nexes_env["NEXES_PREPARE"],
                    READ: str(number),
                    FROM: read.nexes.get("variables", {}).get("f", ""),
                    TO: read.nexes.get("variables", {}).get("t", ""),
                    CREATED_AT: read.peer.get("variables", {}).get("at", ""),
                }
                with process(floor_cmd, floor_env, urls["floor"], read.nexes) as floor_server:
                    mine = read.nexes_data(_check(urls["nexes"], read.nexes, auth))
                    floor = read.nexes_data(_check(urls["floor"], read.nexes, {}))
                    theirs = read.peer_data(_check(urls["postgraphile"], read.peer, {}))
                    if not mine == floor == theirs:
                        raise RuntimeError(
                            f"{read.name}: the answers differ:\nNexes {mine}\nfloor {floor}\npeer {theirs}"
                        )
                    pids = {"nexes": nexes_server.pid, "postgraphile": peer_server.pid, "floor": floor_server.pid}
                    bodies = {"nexes": read.nexes, "postgraphile": read.peer, "floor": read.nexes}
                    _rotate(
                        config.name,
                        read.name,
                        urls,
                        bodies,
                        pids,
                        authorization=auth["Authorization"],
                        seconds=seconds,
                        rounds=rounds,
                    )


def _rotate(
    config: str,
    read: str,
    urls: dict[str, str],
    bodies: dict[str, dict[str, Any]],
    pids: dict[str, int],
    *,
    authorization: str,
    seconds: int,
    rounds: int,
) -> None:
    names = list(urls)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for name in names:  # warm: caches, and statements prepared on every pooled connection
        wrk(urls[name], bodies[name], 2, authorization=authorization if name == "nexes" else "")
    for i in range(rounds):
        for name in names[i % 3 :] + names[: i % 3]:
            cpu = cpu_seconds(pids[name])
            result = wrk(urls[name], bodies[name], seconds, authorization=authorization if name == "nexes" else "")
            cpu = cpu_seconds(pids[name]) - cpu
            if result["gql_errors"] or result["non2xx"] or result["errors"]:
                raise RuntimeError(f"{config}, {name}: failed answers {result}")
            runs[name].append((result["rps"], cpu / max(1.0, result["rps"] * seconds) * 1e6))
    rps = {name: statistics.median(r for r, _ in results) for name, results in runs.items()}
    report(
        bench="floor",
        configuration=config,
        read=read,
        rounds_rps={name: [round(r, 1) for r, _ in results] for name, results in runs.items()},
        median_rps={name: round(v, 1) for name, v in rps.items()},
        rounds_cpu_us_per_request={name: [round(c) for _, c in results] for name, results in runs.items()},
        median_cpu_us_per_request={
            name: round(statistics.median(c for _, c in results)) for name, results in runs.items()
        },
        floor_over_peer=round(rps["floor"] / rps["postgraphile"], 2),
        nexes_over_peer=round(rps["nexes"] / rps["postgraphile"], 2),
        nexes_over_floor=round(rps["nexes"] / rps["floor"], 2),
    )
