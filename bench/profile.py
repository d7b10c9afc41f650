"""`python -m bench.run profile [--reads 1 5] [--requests N] [--configs A|B]`: where one request's CPU goes.

The app runs in this process (its lifespan, pools and guards as `nexes serve` has them),
called through httpx's ASGI transport by one sequential client, under cProfile (the
standard library's deterministic profiler). Each function's own time (tottime) is put
in one of the parts below by the file it lives in, and divided by the requests: CPU
microseconds per request. cProfile's own overhead inflates every part alike (about 2x
for call-heavy code), so compare the shares, not the sums, with wrk's figures.

`wall_ms` is the median request without the profiler; `idle_wait` is the profiled time
the event loop sat in epoll, waiting for PostgreSQL or Redis (no CPU; left out of the parts).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.api import SERVER_ENV, configurations, reads
from bench.run import bench_env, report
from bench.tokens import bearer
from nexes import settings as settings_module

# First match wins: (part, substrings of the file path).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("sql round trips (psycopg, pools, nexes.db)", ("psycopg", "nexes/db/")),
    (
        "guards (identity, permissions, cost, rate limit, deadline)",
        (
            "nexes/auth/",
            "nexes/execution/cost",
            "nexes/execution/permissions",
            "nexes/execution/deadline",
            "nexes/http/auth",
            "nexes/http/admission",
            "limits/",
            "redis/",
            "jwt/",
        ),
    ),
    (
        "parse and validation caches",
        (
            "graphql/language",
            "graphql/validation",
            "nexes/execution/pipeline",
            "nexes/execution/text_cache",
            "nexes/execution/documents",
        ),
    ),
    ("serialisation (orjson, response)", ("orjson", "nexes/http/errors", "json/")),
    (
        "execution (executor, resolvers, types)",
        ("graphql/", "strawberry/", "nexes/execution/", "nexes/resolvers/", "nexes/schema/"),
    ),
    (
        "HTTP (ASGI, middleware, request id, tracing)",
        (
            "starlette/",
            "httpx",
            "nexes/http/",
            "nexes/observability",
            "opentelemetry",
            "anyio",
            "h11",
            "uvicorn/",
            "httptools",
            "prometheus_client",
        ),
    ),
    ("asyncio and the rest", ("",)),
]


def part_of(filename: str) -> str:
    for part, needles in PARTS:
        if any(n in filename for n in needles):
            return part
    return PARTS[-1][0]


async def _profile(env: dict[str, str], bodies: dict[str, dict[str, Any]], requests: int) -> None:
    from nexes.http.app import create_app

    settings = settings_module.load(env)
    app = create_app(settings)
    auth = bearer(env, "viewer")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=auth) as client:
            for name, body in bodies.items():
                for _ in range(50):  # warm: caches, prepared statements
                    assert "errors" not in (await client.post("/graphql", json=body)).json()
                wall = []
                for _ in range(requests):
                    started = time.perf_counter()
                    await client.post("/graphql", json=body)
                    wall.append(time.perf_counter() - started)
                profiler = cProfile.Profile()
                cpu = time.process_time()
                profiler.enable()
                for _ in range(requests):
                    await client.post("/graphql", json=body)
                profiler.disable()
                cpu = time.process_time() - cpu
                stats = pstats.Stats(profiler)
                parts: dict[str, float] = {}
                wait = 0.0
                for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
                    if "epoll" in function or "select.select" in function:
                        wait += tottime  # the event loop idle, waiting for PostgreSQL or Redis
                        continue
                    parts[part_of(filename)] = parts.get(part_of(filename), 0.0) + tottime
                total = sum(parts.values())
                if os.environ.get("BENCH_PROFILE_TOP"):
                    stats.sort_stats(os.environ.get("BENCH_PROFILE_SORT", "tottime")).print_stats(
                        int(os.environ["BENCH_PROFILE_TOP"])
                    )
                report(
                    bench="profile",
                    read=name,
                    requests=requests,
                    wall_ms=round(statistics.median(wall) * 1000, 2),
                    profiled_cpu_us_per_request=round(cpu / requests * 1e6),
                    idle_wait_us_per_request=round(wait / requests * 1e6),
                    parts_us_per_request={k: round(v / requests * 1e6) for k, v in sorted(parts.items())},
                    parts_share={k: round(v / total, 3) for k, v in sorted(parts.items())},
                    tool="cProfile (tottime by file), httpx ASGI transport, one sequential client",
                )


def bench_profile(only_reads: list[int] | None, requests: int, config: str = "B") -> None:
    base = {**bench_env(), **SERVER_ENV}
    chosen = next(c for c in configurations(base) if c.name.startswith(config))
    env = {**base, **chosen.nexes_env}
    settings = settings_module.load(env)
    bodies = {
        r.name: r.nexes
        for i, r in enumerate(reads(settings.admin_url, str(settings.cursor_secret), None), 1)
        if i in (only_reads or [1, 5])
    }
    asyncio.run(_profile(env, bodies, requests))


def bench_sampled(
    only_reads: list[int] | None, seconds: int, py_spy: str, config: str = "A", port: int = 15820
) -> None:
    """`python -m bench.run profile --py-spy EXE [--reads 1 5] [--configs A|B] [--seconds S]`.

    The real server (`nexes serve --workers 1`: uvicorn with uvloop and httptools) under wrk
    with 50 connections, as in `bench.run api`, sampled by py-spy (a sampling profiler: no
    cost per call, so none of cProfile's inflation of call-heavy code). The server's CPU per
    request is its utime + stime from /proc over the run, over the requests wrk got answered;
    each part's share of py-spy's on-CPU samples (the innermost frame's file, PARTS above,
    `--nonblocking`, idle samples left out) splits it."""
    from bench.api import configurations, reads
    from bench.run import cpu_seconds, ensure_wrk, process, wrk

    ensure_wrk()
    base = {**bench_env(), **SERVER_ENV}
    chosen = next(c for c in configurations(base) if c.name.startswith(config))
    env = {**base, **chosen.nexes_env, "NEXES_OPS_LISTEN": f"127.0.0.1:{port + 2}"}
    settings = settings_module.load(env)
    auth = bearer(env, "viewer")
    url = f"http://127.0.0.1:{port}/graphql"
    cmd = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port), "--workers", "1"]
    every = reads(settings.admin_url, str(settings.cursor_secret), None)
    ready = {"query": "{ __typename }"}
    with process(cmd, env, url, ready, headers=auth) as server, tempfile.TemporaryDirectory() as tmp:
        for i, read in enumerate(every, 1):
            if i not in (only_reads or [1, 5]):
                continue
            wrk(url, read.nexes, 3, authorization=auth["Authorization"])  # warm
            out = Path(tmp) / f"read{i}.txt"
            sample = ["record", "--pid", str(server.pid), "--format", "raw", "-o", str(out), "--rate", "250"]
            spy = subprocess.Popen(
                [py_spy, *sample, "--nonblocking", "--duration", str(seconds)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            cpu = cpu_seconds(server.pid)
            result = wrk(url, read.nexes, seconds, authorization=auth["Authorization"])
            cpu = cpu_seconds(server.pid) - cpu
            spy.wait(timeout=60)
            served = result["rps"] * seconds
            shares = _shares(out.read_text())
            if os.environ.get("BENCH_PROFILE_KEEP"):  # the raw samples, for a look by function
                shutil.copy(out, Path(os.environ["BENCH_PROFILE_KEEP"]) / f"{chosen.name[0]}-read{i}.txt")
            cpu_us = cpu / max(1.0, served) * 1e6
            report(
                bench="profile-sampled",
                configuration=chosen.name,
                read=read.name,
                requests_per_s=round(result["rps"], 1),
                server_cpu_us_per_request=round(cpu_us),
                server_cpu_share_of_one_core=round(cpu / seconds, 2),
                parts_us_per_request={k: round(v * cpu_us) for k, v in shares.items()},
                parts_share={k: round(v, 3) for k, v in shares.items()},
                tool="py-spy record --nonblocking (sampling), the server under wrk -c50; CPU from /proc/<pid>/stat",
            )


def _shares(raw: str) -> dict[str, float]:
    """Each part's share of py-spy's samples, by the file of the innermost frame."""
    counts: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "(idle)" in stack:
            continue
        part = part_of(stack.rpartition(";")[2])
        counts[part] = counts.get(part, 0) + int(count)
    total = max(1, sum(counts.values()))
    return {part: counts.get(part, 0) / total for part, _ in PARTS}
