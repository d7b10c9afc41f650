"""`python -m bench.run guards [--reads 1 5] [--seconds S] [--rounds R]`: what each guard costs.

Issue 21 asks for the headline figures with every guard on, and a second run with them off
to show what each costs. Production has no switch to turn a guard off, and gets none here:
this module builds the app the way `create_app` does and then takes parts out, for the
benchmark only (`BENCH_GUARDS_OFF`, read by `app_from_env`, which only uvicorn started by
this module imports).

The variants, each one Nexes process on a port of its own (uvicorn with uvloop and
httptools, one worker, as `nexes serve --workers 1`; every variant through this same
launcher, the headline one included, so they differ only in the guard taken out):

- `all`: every guard on (the headline configuration);
- `identity`: no JWT verification or revocation check: a fixed viewer is set instead;
- `permissions`: no role checks on operations and fields;
- `cost`: no pricing of the operation (and so no rate limit, which charges the price);
- `rate-limit`: priced, but nothing charged in Redis;
- `request-context`: no request id (so no `set_config` of it beside each statement), no
  Server-Timing, no body limits;
- `tracing`: no tracing middleware (no OTLP endpoint is set in either case: the SDK's no-op
  tracer; the psycopg instrumentation stays, it is configured per pool);
- `none`: all of the above off.

Rounds alternate over the variants (the order rotating), wrk with 50 connections. Each
variant's cost is its server's CPU per request: the process's utime + stime from /proc over
the round, over the requests answered (on a machine shared with other work, throughput says
more about the neighbours than about the server; CPU time spent does not). A guard's cost
is the difference from `all`, in microseconds of CPU per request; medians of the rounds.
"""

from __future__ import annotations

import os
import statistics
import sys
from contextlib import ExitStack
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.api import RATE_LIMIT, SERVER_ENV, configurations, reads
from bench.run import bench_env, cpu_seconds, ensure_wrk, process, report, wrk
from bench.tokens import bearer
from nexes import settings as settings_module
from nexes.auth.identity import Viewer

VARIANTS = ("all", "identity", "permissions", "cost", "rate-limit", "request-context", "tracing", "none")
GUARDS = VARIANTS[1:-1]


class FixedViewer:
    """In place of AuthMiddleware: every request is the benchmark's viewer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.viewer = Viewer(subject="bench-guards-off", roles=frozenset({"viewer"}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["viewer"] = self.viewer
        await self.app(scope, receive, send)


def app_from_env() -> Starlette:
    """The API as create_app makes it, less the guards named in BENCH_GUARDS_OFF."""
    from dataclasses import replace

    from nexes.execution.pipeline import DEFAULT_HOOKS
    from nexes.http.app import RequestContextMiddleware, TracingMiddleware, create_app
    from nexes.http.auth import AuthMiddleware

    off = set(filter(None, os.environ.get("BENCH_GUARDS_OFF", "").split(",")))
    unknown = off - set(GUARDS)
    if unknown:
        sys.exit(f"bench.guards: unknown guards {sorted(unknown)}; known: {', '.join(GUARDS)}")
    hooks = DEFAULT_HOOKS
    if "permissions" in off:
        hooks = replace(hooks, operation_guards=(), field_guards=())
    if "cost" in off:
        hooks = replace(hooks, budget=None)
    app = create_app(settings_module.load(), hooks)
    if "rate-limit" in off:
        app.state.limiter = None  # priced (nexes.execution.cost.charge), nothing charged
    removed: set[Any] = set()
    if "request-context" in off:
        removed.add(RequestContextMiddleware)
    if "tracing" in off:
        removed.add(TracingMiddleware)
    if "identity" in off:
        removed.add(AuthMiddleware)
    # Starlette builds its middleware stack on the first request, from this list.
    app.user_middleware = [m for m in app.user_middleware if m.cls not in removed]
    if "identity" in off:
        app.add_middleware(FixedViewer)
    return app


def bench_guards(only_reads: list[int] | None, seconds: int, rounds: int, port: int = 15800) -> None:
    ensure_wrk()
    base = {**bench_env(), **SERVER_ENV}
    config = next(c for c in configurations(base) if c.name.startswith("A"))
    settings = settings_module.load(base)
    auth = bearer(base, "viewer")
    every = reads(settings.admin_url, str(settings.cursor_secret), None)
    chosen = [r for i, r in enumerate(every, 1) if i in (only_reads or [1, 5])]
    report(bench="guards-setup", configuration=config.name, viewer_rate_limit_per_hour=RATE_LIMIT, variants=VARIANTS)
    urls = {v: f"http://127.0.0.1:{port + 10 * i}/graphql" for i, v in enumerate(VARIANTS)}
    with ExitStack() as stack:
        pids: dict[str, int] = {}
        for i, variant in enumerate(VARIANTS):
            off = ",".join(GUARDS) if variant == "none" else "" if variant == "all" else variant
            env = {**base, **config.nexes_env, "BENCH_GUARDS_OFF": off}
            cmd = [sys.executable, "-m", "uvicorn", "bench.guards:app_from_env", "--factory"]
            cmd += ["--port", str(port + 10 * i), "--workers", "1", "--loop", "uvloop", "--http", "httptools"]
            cmd += ["--no-access-log", "--log-level", "warning"]
            server = stack.enter_context(process(cmd, env, urls[variant], {"query": "{ __typename }"}, headers=auth))
            pids[variant] = server.pid
        for read in chosen:
            _measure(read, urls, pids, auth["Authorization"], seconds=seconds, rounds=rounds)


def _measure(
    read: Any, urls: dict[str, str], pids: dict[str, int], authorization: str, *, seconds: int, rounds: int
) -> None:
    for url in urls.values():
        wrk(url, read.nexes, 2, authorization=authorization)  # warm
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in urls}
    for i in range(rounds):
        order = list(urls)[i % len(urls) :] + list(urls)[: i % len(urls)]
        for variant in order:
            cpu = cpu_seconds(pids[variant])
            result = wrk(urls[variant], read.nexes, seconds, authorization=authorization)
            cpu = cpu_seconds(pids[variant]) - cpu
            runs[variant].append({**result, "cpu_us": cpu / max(1.0, result["rps"] * seconds) * 1e6})
    failed = {v: sum(r["gql_errors"] + r["non2xx"] + r["errors"] for r in rs) for v, rs in runs.items()}
    if any(failed.values()):
        raise RuntimeError(f"{read.name}: failed answers {failed}")
    rps = {v: statistics.median(r["rps"] for r in rs) for v, rs in runs.items()}
    us = {v: statistics.median(r["cpu_us"] for r in rs) for v, rs in runs.items()}
    report(
        bench="guards",
        read=read.name,
        rounds_rps={v: [r["rps"] for r in rs] for v, rs in runs.items()},
        rounds_cpu_us={v: [round(r["cpu_us"]) for r in rs] for v, rs in runs.items()},
        median_rps={v: round(r, 1) for v, r in rps.items()},
        cpu_us_per_request={v: round(u) for v, u in us.items()},
        guard_cost_us={v: round(us["all"] - us[v]) for v in VARIANTS[1:]},
    )
    for variant in VARIANTS:
        label = "every guard on" if variant == "all" else "every guard off" if variant == "none" else f"{variant} off"
        saved = us["all"] - us[variant]
        line = f"# {read.name} | {label} | {rps[variant]:.0f} req/s | {us[variant]:.0f} us CPU/request"
        print(f"{line} | saves {saved:+.0f} us", flush=True)
