"""The CPU of one request, layer by layer, in process: `python -m bench.run layers`.

The app's ASGI callable is called with a request made in memory (no socket, no uvicorn),
`CONCURRENCY` requests at once, and the process's CPU time per request is reported for:

- the whole app (its middlewares, the GraphQL endpoint, the pipeline);
- the GraphQL endpoint alone (`nexes.http.graphql.json_post`: body, run, writing);
- the run alone (`nexes.http.graphql.execute`: documents, guards, execution);
- for the dashboard (read 6), its statement alone, through the router and through a pool.

What a layer costs is its figure less the next one's. Each read is one of issue 21's six
(bench/api.py), over `nexes_bench`, in configuration A or B (`--configs`). Nothing here
is a timing goal: figures for bench/README.md.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import orjson

from bench.api import SERVER_ENV, configurations, reads
from bench.run import bench_env, report
from bench.tokens import bearer
from nexes import settings as settings_module

CONCURRENCY = 10
WARM = 100


async def _cpu_per_request(call: Callable[[], Awaitable[Any]], requests: int) -> float:
    for _ in range(WARM):
        await call()
    started = time.process_time()
    for _ in range(requests // CONCURRENCY):
        await asyncio.gather(*(call() for _ in range(CONCURRENCY)))
    return (time.process_time() - started) / (requests // CONCURRENCY * CONCURRENCY) * 1e6


async def _layers(read_numbers: list[int], config_name: str, requests: int) -> None:
    from nexes.http import graphql
    from nexes.http.app import create_app

    base = {**bench_env(), **SERVER_ENV}
    config = next(c for c in configurations(base) if c.name.startswith(config_name))
    env = {**base, **config.nexes_env}
    settings = settings_module.load(env)
    authorization = bearer(env, "viewer")["Authorization"].encode()
    every = reads(settings.admin_url, str(settings.cursor_secret), None)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        viewer = await app.state.authenticator.viewer(authorization.decode())
        for number in read_numbers:
            read = every[number - 1]
            body = orjson.dumps(read.nexes)
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/graphql",
                "raw_path": b"/graphql",
                "query_string": b"",
                "root_path": "",
                "headers": [
                    (b"host", b"bench"),
                    (b"content-type", b"application/json"),
                    (b"authorization", authorization),
                    (b"content-length", str(len(body)).encode()),
                ],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 2),
            }
            answers: list[bytes] = []

            async def receive(body: bytes = body) -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any], answers: list[bytes] = answers) -> None:
                if message["type"] == "http.response.body":
                    answers.append(message["body"])

            async def whole(scope: dict[str, Any] = scope) -> None:
                await app(dict(scope), receive, send)

            async def endpoint(scope: dict[str, Any] = scope) -> None:
                await graphql.json_post({**scope, "app": app, "state": {"viewer": viewer}}, receive, send)

            gql = graphql.request_from_json(body)

            async def run(gql: graphql.GraphQLRequest = gql) -> None:
                await graphql.execute(app.state, gql, viewer)

            figures: dict[str, float] = {}
            gc.collect()
            for name, call in (("app", whole), ("json_post", endpoint), ("execute", run)):
                figures[name] = round(await _cpu_per_request(call, requests), 1)
            if b'"errors"' in answers[-1]:
                raise RuntimeError(f"{read.name}: {answers[-1][:300]!r}")
            if number == 6:
                figures |= await _statement_figures(app, read.nexes["variables"], requests)
            report(
                bench="layers",
                configuration=config.name,
                read=read.name,
                concurrency=CONCURRENCY,
                requests=requests,
                cpu_us_per_request=figures,
                answer_bytes=len(answers[-1]),
            )


async def _statement_figures(app: Any, variables: dict[str, str], requests: int) -> dict[str, float]:
    """The dashboard's statement alone: through the router, and straight from the replica's pool."""
    from nexes.db import dashboard as dashboard_db
    from nexes.observability import request_id_var

    request_id_var.set("bench-layers-0123456789abcdef")
    day_from, day_to = date.fromisoformat(variables["f"]), date.fromisoformat(variables["t"])
    router, pool = app.state.router, app.state.pools.replicas[0]

    async def routed() -> None:
        await router.read(lambda conn: dashboard_db.stats_by_status(conn, day_from, day_to))

    async def pooled() -> None:
        async with pool.connection() as conn:
            await dashboard_db.stats_by_status(conn, day_from, day_to)

    return {
        "statement_through_router": round(await _cpu_per_request(routed, requests), 1),
        "statement_through_pool": round(await _cpu_per_request(pooled, requests), 1),
    }


def bench_layers(read_numbers: list[int] | None, config_name: str, requests: int) -> None:
    asyncio.run(_layers(read_numbers or [1, 4, 5, 6], config_name, requests))
